"""The local runner: the points one after another in this process."""

from __future__ import annotations

from pathlib import Path

from harness.sweep.claims import PointClaims
from harness.sweep.context import Context
from harness.sweep.grid import Point
from harness.sweep.point import compute_point, save_point


def run_local(ctx: Context, todo: list[Point], results_dir: Path, bar, claims: PointClaims) -> None:
    """Each point is claimed just before it runs, so a sweep beside this one takes the rest."""
    for point in todo:
        bar.set_postfix_str(point.key)
        if claims.claim(point.key):
            try:
                row, records = compute_point(ctx, point)
                save_point(results_dir, ctx.cfg, row, records)
            finally:
                claims.release(point.key)
        bar.update(1)
