"""What sampling costs in memory, estimated before anything is allocated.

A size from the command line (``--n``, ``--steps``, ``--length``) must never end in a
RuntimeError from the allocator or in the kernel's OOM killer: the request is split into
batches that fit, or refused naming the flag and what fits (:func:`sampling_cost`,
:func:`rows_that_fit`).

Large-batch sampling (the papers' throughput regime): at batch 64 and L = 8192 MDLM's
float32 logits alone are ~100 GB, so a sampler cannot run every row of its batch through
one forward.  ``LanguageModel.max_memory`` (bytes, a string like "40GB", or None = 90 % of
what the device has free at the first sample) is the budget one forward may use; :func:`row_chunk` turns it
into how many rows run per forward.  Chunking only changes how the rows are grouped: the
tokens drawn are the same (the draws go through :class:`harness.sampling.Drawer`, whose
noise groups do not follow the chunks).  A KV cache is allocated for the whole batch, so
:func:`cache_rows` says how many rows' cache fits; a sweep runs a batch whose cache does not
fit as consecutive sub-batches (:func:`sub_batch`).  The per-row costs are estimates (upper
bounds for the eager path), not measurements.
"""

from __future__ import annotations

import os
import re

import torch

# Use at most this share of the free memory for one batch (activations, allocator slack).
HEADROOM = 0.5
# Bytes a sweep point keeps per sampled token until it is written: the int64 id, the decoded
# text and its record (an estimate).
HELD_TOKEN_BYTES = 16


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


def sampling_cost(model, length: int, steps: int | None, blocks: int | None = None) -> tuple[int, int]:
    """(bytes per sampled row, bytes per call) of ``model.sample`` at ``length`` and ``steps``.

    Per row: the logits of one forward (float32, plus the float64 copy a draw makes), the
    KV cache (float32 keys and values per layer), and the reveal plan (:func:`plan_cost`).
    Rough by design: it only has to tell a request that fits from one that cannot.
    """
    cfg = model.backbone_config
    per_row = logits_row_bytes(cfg, length, 4) + cache_row_bytes(cfg, 2 * length, 4)
    plan_row, plan_fixed = plan_cost(steps, blocks, reveal_windows(model, length))
    return per_row + plan_row, plan_fixed


def reveal_windows(model, length: int) -> int:
    """Windows a reveal plan counts per step: one per block for BD3-LM, one for the others."""
    return -(-length // model.block_size) if hasattr(model, "block_size") else 1


# One chunk of a ``blocks`` schedule is a tensor view (~600 bytes measured); the plan holds them all.
CHUNK_BYTES = 640


def plan_cost(steps: int | None, blocks: int | None = None, windows: int = 1) -> tuple[int, int]:
    """(bytes per row, bytes per call) of a schedule's reveal plan: a count per step and window
    (BD3-LM has one window per block), the step grid (one float per step) and Eso-LM's
    ``blocks`` chunks.  The plan is built whole before the first forward and never split,
    so a plan that does not fit is refused up front (``esolm sample``, the sweep's checks)."""
    per_row = 24 * windows * steps if steps else 0
    fixed = 48 * steps if steps else 0
    if blocks:
        fixed += CHUNK_BYTES * blocks
    return per_row, fixed


def unsplit_batch_cost(model, length: int, steps: int | None, blocks: int | None = None,
                       dtype_bytes: int = 4) -> tuple[int, int]:
    """(bytes per row, bytes per call) of a batch sampled in one call, never split into
    batches: every row's KV cache, reveal plan and tokens are held at once, while the forwards
    run in row chunks (:func:`row_chunk`), so one row's forward is paid once.  ``model`` needs
    ``backbone_config`` and ``name`` (and ``block_size`` for BD3-LM): no weights."""
    cfg = model.backbone_config
    plan_row, plan_fixed = plan_cost(steps, blocks, reveal_windows(model, length))
    per_row = cache_row_bytes(cfg, model.cache_capacity(length), dtype_bytes) + plan_row + 8 * length
    return per_row, forward_row_bytes(cfg, length, length, dtype_bytes) + plan_fixed


def rows_that_fit(per_row: int, fixed: int, device: torch.device, free: int | None = None) -> int:
    """How many rows one batch may hold (0: not even one)."""
    budget = int((free_bytes(device) if free is None else free) * HEADROOM) - fixed
    return max(0, budget // max(1, per_row))


def sample_rows(model, n: int, length: int, schedule, device) -> int:
    """Rows per ``esolm sample`` batch: all n when they fit, else what fits; a request that
    cannot fit even one row is refused naming the flag that makes it too big."""
    per_row, fixed = sampling_cost(model, length, schedule.steps, schedule.blocks)
    rows = rows_that_fit(per_row, fixed, device)
    if rows >= 1:
        return min(n, rows)
    free = free_bytes(device)
    no_steps = sum(sampling_cost(model, length, None))
    if schedule.blocks and no_steps < free / 2:
        raise ValueError(f"--blocks {schedule.blocks}: one sample needs ~{gib(per_row + fixed)} for its chunk plan but "
                         f"{gib(free)} is free on {device}; lower --blocks (up to --length {length}: one position "
                         "per chunk)")
    if schedule.steps and no_steps < free / 2:
        raise ValueError(f"--steps {schedule.steps}: one sample needs ~{gib(per_row + fixed)} for its step plan but "
                         f"{gib(free)} is free on {device}; lower --steps (up to --length {length} reveals every "
                         "position one at a time)")
    raise ValueError(f"--length {length}: one sample needs ~{gib(no_steps)} but {gib(free)} is free on {device}; "
                     "lower --length")


_UNITS = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KIB": 2 ** 10, "MIB": 2 ** 20,
          "GIB": 2 ** 30, "TIB": 2 ** 40}


def parse_bytes(value) -> int | None:
    """None/"auto" -> None; 123, "40GB", "1.5 GiB" -> bytes."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"max_memory must be positive, got {value}")
        return int(value)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(value))
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"max_memory {value!r}: give bytes, 'auto' or a size like '40GB' / '512MiB'")
    out = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if out <= 0:
        raise ValueError(f"max_memory must be positive, got {value!r}")
    return out


def budget(model) -> int:
    """The model's ``max_memory`` in bytes, or 90 % of the device memory free at its first
    sample, kept for later calls: a budget that shrank as CUDA graphs and the allocator's
    cache took memory would change the chunk shapes, and every new shape is another graph."""
    fixed = parse_bytes(getattr(model, "max_memory", None))
    if fixed is not None:
        return fixed
    if getattr(model, "_free_budget", None) is None:
        model._free_budget = int(0.9 * free_bytes(model.device))
    return model._free_budget


def forward_row_bytes(cfg, queries: int, keys: int, dtype_bytes: int) -> int:
    """Peak bytes one row of a forward of ``queries`` positions over ``keys`` keys needs:
    the logits (in the compute dtype, then float32, plus a float32 copy for sampling), the
    widest activations (the MLP's hidden layer and its inputs) and attention scores when
    the attention materialises them (per head, float32)."""
    logits = logits_row_bytes(cfg, queries, dtype_bytes)
    acts = queries * cfg.d_model * (2 * cfg.mlp_ratio + 8) * dtype_bytes
    scores = cfg.n_heads * queries * keys * 4 * 2
    return logits + acts + scores


def logits_row_bytes(cfg, queries: int, dtype_bytes: int) -> int:
    """One row's logits in the compute dtype plus the float64 copy a draw makes."""
    return queries * cfg.vocab_size * (dtype_bytes + 8)


def cache_row_bytes(cfg, capacity: int, dtype_bytes: int) -> int:
    """K and V of every layer for ``capacity`` slots of one row."""
    return 2 * cfg.n_layers * capacity * cfg.d_model * dtype_bytes


def _dtype_bytes(model) -> int:
    weight = next(model.net.parameters(), None)
    return weight.element_size() if weight is not None else 4


def row_chunk(model, n: int, queries: int, keys: int, reserved: int = 0) -> int:
    """Rows per forward (1..n) so that a chunk fits the budget left after ``reserved`` bytes."""
    cfg = model.backbone_config
    per_row = forward_row_bytes(cfg, queries, keys, _dtype_bytes(model))
    free = budget(model) - reserved
    return max(1, min(n, free // per_row if per_row else n))


def cache_rows(model, n: int, capacity: int, queries: int) -> int:
    """Rows (1..n) whose KV cache of ``capacity`` slots fits the budget, leaving room for one
    row's forward of ``queries`` positions."""
    cfg = model.backbone_config
    b = _dtype_bytes(model)
    per_row = cache_row_bytes(cfg, capacity, b)
    room = budget(model) - forward_row_bytes(cfg, queries, capacity, b)
    return max(1, min(n, room // per_row if per_row else n))


def sub_batch(model, n: int, length: int) -> int:
    """Rows sampled together so the KV cache fits the budget (n when it does, or no cache)."""
    capacity = model.cache_capacity(length)
    return cache_rows(model, n, capacity, queries=min(length, 64)) if capacity else n
