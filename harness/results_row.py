"""One row of ``points.jsonl``: the fields every sweep point records, defined in one place.

The sweep builds each row with :func:`make_row`, which refuses a missing or unknown field,
so what a row holds is this list and nothing else; readers (report, compare, export,
rescore) read rows through :mod:`harness.results_store`.  Older rows may lack fields added
since (their readers supply the documented defaults).
"""

from __future__ import annotations

ROW_FIELDS: dict[str, str] = {
    "sweep": "the sweep's name",
    "key": "the point's key: entry/schedule/L/seed (and batch for throughput grids)",
    "config_hash": "what the point's result depends on (harness/sweep/identity.py); a new hash re-runs the point",
    "model_entry": "the config's model entry",
    "family": "the model's registered name, or 'custom' for a plug-in",
    "model": "the checkpoint's model name",
    "model_options": "the model's options (block size, alpha_0, BD3-LM's ignore_bos and mask_rate, ...)",
    "init": "'trained' (by the sweep), 'random' (untrained weights) or 'checkpoint'",
    "checkpoint": "the checkpoint file sampled",
    "parameters": "the model's parameter count",
    "matmul_parameters": "weights a forward multiplies by (docs/floors.md §2)",
    "weight_bytes": "bytes of those weights",
    "kv_bytes_per_key": "bytes of K and V per cached key",
    "attention_flops_per_pair": "attention FLOPs per query-key pair",
    "train_step": "the checkpoint's training step",
    "schedule": "the schedule's label, e.g. 'T=16,a0=0.25'",
    "schedule_group": "the schedule's group label (how the config wrote it)",
    "schedule_fields": "the schedule's fields as resolved for this length",
    "alpha_0": "Eso-LM: the alpha_0 sampled at (None for other models)",
    "alpha_0_train": "Eso-LM: the alpha_0 trained at",
    "diffusion_split": "Eso-LM: 'binomial' or 'fixed' (absent in older rows: 'fixed')",
    "data_protocol": "documents, owt or lm1b (absent in older rows: 'documents')",
    "data_framing": "bos_eos or raw rows (absent in older rows: 'bos_eos')",
    "length": "sequence length L",
    "seed": "the point's seed",
    "num_samples": "samples drawn",
    "batch_size": "samples per timed batch",
    "sub_batch": "rows sampled at once (a batch over the memory budget runs in sub-batches)",
    "batch_grid": "whether the point is one of the config's batch_sizes (throughput)",
    "max_memory": "the config's memory budget",
    "metrics": "every measured value (harness/sweep/point.py)",
    "device": "torch device",
    "device_name": "GPU name, or the CPU and its threads",
    "dtype": "fp32 or bf16",
    "step_mode": "how the sampler ran its steps (harness/nn/steps.py)",
    "run_id": "one id per sweep invocation",
    "git_commit": "the harness commit that ran",
    "torch": "torch version",
    "python": "Python version",
    "timestamp": "UTC time the row was made",
}
# A plug-in model without the shared trunk has no forward-cost figures.
OPTIONAL_FIELDS = frozenset({"matmul_parameters", "weight_bytes", "kv_bytes_per_key", "attention_flops_per_pair"})


def make_row(**fields) -> dict:
    """The row in :data:`ROW_FIELDS` order; a field missing or not in the list is a bug in the
    writer, refused here rather than found by a reader later."""
    unknown = sorted(set(fields) - set(ROW_FIELDS))
    missing = sorted(set(ROW_FIELDS) - set(fields) - OPTIONAL_FIELDS)
    if unknown or missing:
        raise ValueError(f"results row: unknown fields {unknown}, missing fields {missing} (harness/results_row.py)")
    return {name: fields[name] for name in ROW_FIELDS if name in fields}
