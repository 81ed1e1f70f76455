"""Config hashes and seeds.

A point's config hash covers everything that decides its numbers (the model entry's
recipe or checkpoint file, schedule, length, seed, sample count, batch size, evaluator,
metrics and their options, device and precision), never the git commit: change any of
them and the point is computed again; the newest row of a key wins on read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from harness.models import model_class, resolve_model_class
from harness.schedules import SamplingSchedule
from harness.sweep.grid import Point
from harness.sweep.schema import EvaluatorRef, ModelEntry, SweepConfig

if TYPE_CHECKING:
    import torch


def stable_hash(obj, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def point_seed(seed: int, key: str) -> int:
    return int(hashlib.sha256(f"{seed}|{key}".encode()).hexdigest()[:15], 16)


def entry_identity(cfg: SweepConfig, entry: ModelEntry) -> dict:
    """What decides an entry's weights: its recipe (trained/random) or its checkpoint file."""
    if entry.train is not None:
        recipe = entry.train.model_dump(exclude={"name", "out_dir"})
        if not recipe["train"]["compile"]:  # left out so results made before the field keep their hashes
            del recipe["train"]["compile"]
        cls = resolve_model_class(entry.train.model)
        options = cls.recipe_options(entry.train.model_args)
        if entry.init == "trained" and options != cls.legacy_options:
            # a changed training default is a new checkpoint: points made from the old one re-run
            recipe["model_args"] = {**recipe["model_args"], **options}
        if entry.init == "random":
            recipe = {k: v for k, v in recipe.items() if k != "train"} | {"seed": entry.train.train.seed}
        return {"init": entry.init, "recipe": recipe}
    path = Path(entry.checkpoint)
    if path.is_dir():
        from harness.checkpoints.own_format import CHECKPOINT_NAME

        path = path / CHECKPOINT_NAME
    stat = path.stat() if path.exists() else None
    return {"init": "checkpoint", "checkpoint": str(path), "model": entry.model,
            "size": stat.st_size if stat else None, "mtime_ns": stat.st_mtime_ns if stat else None}


def evaluator_identity(cfg: SweepConfig):
    if isinstance(cfg.evaluator, EvaluatorRef):
        entry = next(m for m in cfg.models if m.name == cfg.evaluator.model_entry)
        return {"model_entry": entry.name, **entry_identity(cfg, entry)}
    return cfg.evaluator


def reads_split(family: str) -> bool:
    """Whether the model reads the schedule's diffusion split (Eso-LM's samplers)."""
    cls = model_class(family)
    return cls is not None and "split" in (cls.schedule_fields or ())


def point_hash(cfg: SweepConfig, entry: ModelEntry, point: Point, device: torch.device) -> str:
    metrics = sorted(cfg.metrics)
    spec = {
        "entry": entry_identity(cfg, entry), "length": point.length, "seed": point.seed,
        "schedule": SamplingSchedule(**point.schedule).hash_fields(reads_split(entry.family)),
        "num_samples": cfg.num_samples, "batch_size": cfg.batch_size, "metrics": metrics,
        "device": device.type, "precision": cfg.precision,
    }
    if point.batch_size is not None:  # only when set, so results made before the field keep their hashes
        spec["point_batch_size"] = point.batch_size
    if cfg.max_memory is not None:
        spec["max_memory"] = cfg.max_memory
    if cfg.step_mode != "auto":  # "auto" is left out so results made before the field keep their hashes
        spec["step_mode"] = cfg.step_mode
    if {"gen_ppl", "mauve"} & set(metrics):
        spec["evaluator"] = evaluator_identity(cfg)
    if "test_ppl" in metrics:
        spec["test_ppl"] = cfg.test_ppl.model_dump()
    if "speed" in metrics:
        spec["speed"] = cfg.speed.model_dump()
    if "mauve" in metrics:
        spec["mauve"] = cfg.mauve.model_dump()
    return stable_hash(spec)


def ppl_cache_key(cfg: SweepConfig, entry: ModelEntry, length: int, alpha_0: float | None, device) -> str:
    return stable_hash({"entry": entry_identity(cfg, entry), "length": length, "alpha_0": alpha_0,
                        "spec": cfg.test_ppl.model_dump(), "device": device.type, "precision": cfg.precision})
