"""The local runner: the points one after another in this process."""

from __future__ import annotations

from pathlib import Path

from harness.sweep.context import Context
from harness.sweep.grid import Point
from harness.sweep.point import compute_point, save_point


def run_local(ctx: Context, todo: list[Point], results_dir: Path, bar) -> None:
    for point in todo:
        bar.set_postfix_str(point.key)
        row, records = compute_point(ctx, point)
        save_point(results_dir, ctx.cfg, row, records)
        bar.update(1)
