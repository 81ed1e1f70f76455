"""Floors: the least work a forward must do, beside the ceilings (harness.metrics.ceilings)
of the machine that does it.  A sweep row records these per-forward costs with its exact
work counters; the report divides them by the ceilings to get each point's floor
(docs/floors.md).  Scripts and benchmarks import the same function."""

from __future__ import annotations


def forward_cost(model) -> dict:
    """What one forward must at least do, for the report's floors (docs/floors.md §2): read every
    weight but the embedding table (only looked up), 2 FLOPs per such weight per token, the
    K and V of every layer for each cache slot it attends to (``key_reads``), and 4 · d_model
    FLOPs per layer for each query-key pair its mask allows (``attention_pairs``)."""
    net = getattr(model, "net", None)
    if net is None:
        return {}
    weights = [p for name, p in net.named_parameters() if not name.startswith("embed.")]
    cfg = getattr(net, "cfg", None)
    # K and V of every layer, in the dtype new_cache allocates (the head's)
    kv = 2 * cfg.n_layers * cfg.d_model * net.head.weight.element_size() if cfg is not None else None
    return {"matmul_parameters": sum(p.numel() for p in weights),
            "weight_bytes": sum(p.numel() * p.element_size() for p in weights),
            "kv_bytes_per_key": kv,
            "attention_flops_per_pair": 4 * cfg.d_model * cfg.n_layers if cfg is not None else None}
