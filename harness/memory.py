"""What a request costs in memory, estimated before anything is allocated.

A size from the command line (``--n``, ``--steps``, ``--length``) must never end in a
RuntimeError from the allocator or in the kernel's OOM killer: the request is split into
batches that fit, or refused naming the flag and what fits.
"""

from __future__ import annotations

import os

import torch

# Use at most this share of the free memory for one batch (activations, allocator slack).
HEADROOM = 0.5


def free_bytes(device: torch.device) -> int:
    """Free memory on ``device``: the GPU's free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def sampling_cost(model, length: int, steps: int | None) -> tuple[int, int]:
    """(bytes per sampled row, bytes per call) of ``model.sample`` at ``length`` and ``steps``.

    Per row: the logits of one forward (float32, plus the float64 copy a draw makes), the
    KV cache (float32 keys and values per layer), and the reveal plan (a count per step and
    window; BD3-LM has one window per block).  Per call: the step grid (one float per step).
    Rough by design: it only has to tell a request that fits from one that cannot.
    """
    cfg = model.backbone_config
    per_row = length * cfg.vocab_size * (4 + 8) + 2 * cfg.n_layers * 2 * length * cfg.d_model * 4
    fixed = 0
    if steps:
        windows = -(-length // model.block_size) if hasattr(model, "block_size") else 1
        per_row += 24 * windows * steps
        fixed = 48 * steps
    return per_row, fixed


def rows_that_fit(per_row: int, fixed: int, device: torch.device, free: int | None = None) -> int:
    """How many rows one batch may hold (0: not even one)."""
    budget = int((free_bytes(device) if free is None else free) * HEADROOM) - fixed
    return max(0, budget // max(1, per_row))
