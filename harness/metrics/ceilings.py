"""Ceilings of the machine a sweep runs on, for the report's floors (docs/floors.md).

``esolm ceilings CONFIG`` measures, on the config's device, dtype and thread count:
- ``matmul_flops``: FLOP/s of the trunk's own matmuls (the QKV, attention-output and MLP
  projections and the output head of the config's backbone) over tokens/4, tokens and
  4·tokens rows — the shapes a large-batch sampler spends its compute in —, the best of the three;
- ``copy_bytes_per_s``: bytes read + written per second copying a tensor much larger than
  the caches (256 MiB on a CPU, 2 GiB on a GPU);
and ``esolm ceilings`` (harness.sweep.ceilings) writes them to ``<results>/<name>/ceilings.json``, which ``esolm report`` then applies to
every row of that folder (harness/report/speed.py): each row gets a floor, compute-bound
(2 FLOPs per matmul weight per token computed) or memory-bound (weights and KV slots read).
The fastest of ``repeats`` timed runs after one warm-up: a ceiling is the best the machine
did, and on a shared machine a median sinks with the load, which would flatter every x floor.
"""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone

import torch

from harness.metrics.speed import call_seconds, device_name, threads_text


def measure_ceilings(d_model: int, vocab: int, mlp_ratio: int = 4, tokens: int = 2048, repeats: int = 20,
                     device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                     copy_bytes: int | None = None) -> dict:
    """Matmul FLOP/s at the trunk's shapes over ``tokens`` rows, and the copy rate."""
    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(0)
    shapes = [(d_model, 3 * d_model), (d_model, d_model), (d_model, mlp_ratio * d_model),
              (mlp_ratio * d_model, d_model), (d_model, vocab)]
    weights = [torch.randn(*shape, device=device, dtype=dtype, generator=g) for shape in shapes]
    rates = {}
    for rows in (tokens // 4, tokens, tokens * 4):  # the best of three batch sizes: a ceiling, not a typical rate
        x = torch.randn(max(rows, 1), d_model, device=device, dtype=dtype, generator=g)
        h = torch.randn(max(rows, 1), mlp_ratio * d_model, device=device, dtype=dtype, generator=g)
        inputs = [x, x, x, h, x]
        flops = sum(2 * x.shape[0] * w.shape[0] * w.shape[1] for w in weights)

        def matmuls():
            for inp, w in zip(inputs, weights):
                inp @ w

        rates[x.shape[0]] = flops / min(call_seconds(matmuls, device, repeats))
    n_bytes = copy_bytes or (2 ** 31 if device.type == "cuda" else 2 ** 28)
    src = torch.empty(n_bytes // 4, device=device, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    copy_s = min(call_seconds(lambda: dst.copy_(src), device, repeats))
    out = {
        "matmul_flops": max(rates.values()),
        "copy_bytes_per_s": 2 * src.numel() * 4 / copy_s,
        "matmul_flops_by_rows": {str(k): v for k, v in rates.items()},
        "matmul_weights": [list(w.shape) for w in weights],
        "copy_bytes": src.numel() * 4,
        "dtype": str(dtype).replace("torch.", ""),
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "repeats": repeats,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out["source"] = (f"measured by esolm ceilings on {out['device_name']} ({threads_text(out['threads'])}), "
                     f"{out['dtype']} matmuls of the trunk's weights (d={d_model}, V={vocab}), best of {sorted(rates)} rows")
    return out


def busy_warning(ceilings: dict) -> str | None:
    """A warning when other work shared the CPU while the ceilings were measured: its 1-minute
    load average (which counts the measurement's own threads) above 1.5x the threads used."""
    load, threads = ceilings.get("load_average_1min"), ceilings.get("threads") or 1
    if ceilings.get("device", "cpu") != "cpu" or load is None or load <= 1.5 * threads:
        return None
    return (f"warning: load average {load:.1f} on {threads} threads while measuring: other work may have "
            "lowered these ceilings (and so every floor); re-measure on a quiet machine")
