"""The Ray runner: training and points run as Ray tasks on the cluster's workers; the
driver appends each row as its task finishes, so the results file has one writer whatever
the number of workers.

Each train entry a point needs is one training task; its points (and, with an evaluator
entry of this sweep, every gen PPL / MAUVE point) wait for it through its object ref.
``ray.init()`` joins the cluster named by ``RAY_ADDRESS`` or starts a local one.  Every
node needs the project installed and the same paths: the config, ``runs_dir``, corpora and
checkpoints are read and written by the workers (a shared filesystem on a cluster)."""

from __future__ import annotations

from pathlib import Path

import torch

from harness.config import TrainConfig, resolve_device
from harness.sweep.claims import PointClaims
from harness.sweep.context import Context
from harness.sweep.grid import Point
from harness.sweep.point import compute_point, save_point
from harness.sweep.schema import EvaluatorRef, SweepConfig, entry_train_config, load_sweep_config


def ray_train(name: str, train_config: dict) -> tuple[str, str]:
    """Train (or resume) one entry on a worker: (entry name, checkpoint path)."""
    from harness.train import train

    return name, str(Path(train(TrainConfig.model_validate(train_config), resume=True, progress=False,
                                wait=True)).resolve())  # wait: another shard may be training it


def ray_point(config_path: str, given: dict, commit: str | None, run_id: str, point: Point,
              *trained: tuple[str, str]):
    """One point on a worker; ``trained`` are the results of the training tasks it waits for.
    ``run_id`` is the driver's, so the rows of one sweep call pair up (throughput ratios)."""
    cfg = load_sweep_config(config_path)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx = Context(cfg, resolve_device(cfg.device), {**given, **dict(trained)}, commit=commit, run_id=run_id)
    return compute_point(ctx, point)


def run_ray(config_path, cfg: SweepConfig, todo: list[Point], needed: set[str], results_dir: Path, bar,
            claims: PointClaims, commit: str | None = None, run_id: str = "") -> None:
    """The driver claims every point before submitting it (see harness.sweep.claims) and
    releases each once its row is written."""
    import ray

    from harness.checkpoints.own_format import resolve_checkpoint_path

    if not ray.is_initialized():
        ray.init()
    gpus = 1 if resolve_device(cfg.device).type == "cuda" else 0
    train_task = ray.remote(num_gpus=gpus)(ray_train)
    point_task = ray.remote(num_gpus=gpus)(ray_point)
    config_path = str(Path(config_path).resolve())
    given, training = {}, {}
    for entry in cfg.models:
        if entry.name not in needed or entry.init == "random":
            continue
        if entry.checkpoint is not None:
            given[entry.name] = str(resolve_checkpoint_path(entry.checkpoint).resolve())
            continue
        tcfg = entry_train_config(cfg, entry)
        tcfg.out_dir = str(Path(tcfg.run_dir()).resolve())  # the same folder whatever a worker's cwd
        training[entry.name] = train_task.remote(entry.name, tcfg.model_dump())
    evaluator = cfg.evaluator.model_entry if isinstance(cfg.evaluator, EvaluatorRef) else None
    pending = []
    for point in todo:
        if not claims.claim(point.key):
            bar.update(1)
            continue
        waits = [training[name] for name in dict.fromkeys([point.entry, evaluator]) if name in training]
        pending.append(point_task.remote(config_path, given, commit, run_id, point, *waits))
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        row, records = ray.get(done[0])
        save_point(results_dir, cfg, row, records)
        claims.release(row["key"])
        bar.update(1)
