"""The Ray runner: one task per point; the driver appends rows as tasks finish, so the
results file has one writer whatever the number of workers."""

from __future__ import annotations

from pathlib import Path

import torch

from harness.config import resolve_device
from harness.sweep.context import Context
from harness.sweep.grid import Point
from harness.sweep.point import compute_point, save_point
from harness.sweep.schema import SweepConfig, load_sweep_config


def ray_point(config_path: str, checkpoints: dict, point: Point):
    cfg = load_sweep_config(config_path)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx = Context(cfg, resolve_device(cfg.device), checkpoints)
    return compute_point(ctx, point)


def run_ray(config_path, cfg: SweepConfig, todo: list[Point], checkpoints: dict, results_dir: Path, bar) -> None:
    import ray

    if not ray.is_initialized():
        ray.init()
    gpus = 1 if resolve_device(cfg.device).type == "cuda" else 0
    task = ray.remote(num_gpus=gpus)(ray_point)
    config_path = str(Path(config_path).resolve())
    abs_ckpts = {k: str(Path(v).resolve()) for k, v in checkpoints.items()}
    pending = [task.remote(config_path, abs_ckpts, p) for p in todo]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        row, records = ray.get(done[0])
        save_point(results_dir, cfg, row, records)
        bar.update(1)
