"""Which step mode a sweep point runs its sampler in (harness/nn/steps.py): on a GPU the
fastest exact one, timed once per entry, length and batch before the point's own timing."""

from __future__ import annotations

import os

import torch

from harness.nn.steps import exact_modes
from harness.schedules import SamplingSchedule
from harness.sweep.context import Context
from harness.sweep.grid import Point
from harness.sweep.identity import point_noise


def trial_modes(step_mode: str, device: torch.device, same_work: bool = True) -> tuple[str, ...]:
    """The step modes a sweep times (at the first point of each entry, length and batch) before
    it runs the fastest (none: run the one set).
    ``fastest``: every mode this device runs; ``auto``: those giving the eager tokens exactly
    (harness.nn.steps.exact_modes), unless $ESOLM_STEP_MODE names one, and only where they
    also count the same work (``same_work``: not MDLM/BD3-LM at a batch above 1, whose
    fixed-shape steps count every row), so NFE and tokens computed never hang on a timing."""
    if step_mode == "fastest":
        return ("graph", "dynamic", "compiled") if device.type == "cuda" else ("dynamic", "static", "compiled")
    if step_mode == "auto" and same_work and not os.environ.get("ESOLM_STEP_MODE") and len(exact_modes(device)) > 1:
        return exact_modes(device)
    return ()


def fastest_mode(ctx: Context, sampler, point: Point, schedule: SamplingSchedule, batch: int, rows: int,
                 modes: tuple[str, ...]) -> dict:
    """One batch in each of ``modes`` (after one untimed batch that captures or compiles what
    the mode needs), then the fastest is left set on the sampler.  Returns {mode: seconds per
    batch, or the error that ruled it out}."""
    import time

    from harness.metrics.speed import synchronize

    trials: dict = {}
    for mode in modes:
        sampler.step_mode = mode
        try:
            for _ in range(2):  # the first run captures or compiles; the second is timed
                noise = point_noise(point, schedule, ctx.device)
                synchronize(ctx.device)
                t0 = time.perf_counter()
                with torch.no_grad(), ctx.sampling_autocast():
                    for lo in range(0, batch, rows):
                        n = min(rows, batch - lo)
                        sampler.sample(n, point.length, schedule, noise.batch(lo, n))
                synchronize(ctx.device)
            trials[mode] = time.perf_counter() - t0
        except Exception as err:  # a mode this machine cannot run (e.g. no compiler): not a candidate
            trials[mode] = f"failed: {str(err).splitlines()[0][:200]}"
    timed = {m: t for m, t in trials.items() if isinstance(t, float)}
    if not timed:
        raise RuntimeError(f"step modes {list(modes)}: every one failed at {point.key}: {trials}")
    sampler.step_mode = min(timed, key=timed.get)
    return trials
