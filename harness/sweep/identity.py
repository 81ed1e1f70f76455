"""Config hashes and seeds.

A point's config hash covers everything that decides its numbers (the model entry's
recipe or checkpoint file, schedule, length, seed, sample count, batch size, evaluator,
metrics and their options, device and precision), never the git commit: change any of
them and the point is computed again; the newest row of a key wins on read.

The rule, one for every hash here: hash a dict that names ``IDENTITY_VERSION``, in which each
config section gives only its fields away from their defaults (nested sections alike) and
unset values are left out, so a field added at its default changes no hash.  Where what a
default means has changed, the value it resolves to is hashed instead: the diffusion split
an Eso-LM sampler runs, and a model's ``legacy_options`` at the values its recipe builds.
A change of the rule bumps the version; scripts/rehash_results.py rewrites committed hashes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from harness.models import model_class, resolve_model_class
from harness.schedules import SampleNoise, SamplingSchedule
from harness.sweep.grid import Point
from harness.sweep.schema import EvaluatorRef, ModelEntry, SweepConfig

if TYPE_CHECKING:
    import torch

IDENTITY_VERSION = 2


def stable_hash(obj, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def point_seed(seed: int, key: str) -> int:
    return int(hashlib.sha256(f"{seed}|{key}".encode()).hexdigest()[:15], 16)


def point_noise(point: Point, schedule: SamplingSchedule, device) -> SampleNoise:
    """A point's sampling noise from its own seed: the samples, their timing and the cache probe
    all start from it (one stream, or one per sample with ``row_noise``)."""
    return SampleNoise(point_seed(point.seed, point.key), schedule.row_noise, device)


def entry_identity(cfg: SweepConfig, entry: ModelEntry) -> dict:
    """What decides an entry's weights: its recipe (trained/random) or its checkpoint file."""
    if entry.train is not None:
        if entry.init == "random":  # random weights: the model and its seed, no training
            recipe = entry.train.model_dump(exclude_defaults=True, exclude={"name", "out_dir", "train"})
            recipe |= entry.train.train.model_dump(exclude_defaults=True, include={"seed"})
        else:
            recipe = entry.train.model_dump(exclude_defaults=True, exclude={"name", "out_dir"})
        args = entry.train.model_args  # and the options whose default changed, at the values they build
        args = {**args, **resolve_model_class(entry.train.model).recipe_options(args)}
        if args:
            recipe["model_args"] = args
        return {"init": entry.init, "recipe": recipe}
    path = Path(entry.checkpoint)
    if path.is_dir():
        from harness.checkpoints.own_format import CHECKPOINT_NAME

        path = path / CHECKPOINT_NAME
    stat = path.stat() if path.exists() else None
    ident = {"init": "checkpoint", "checkpoint": str(path), "model": entry.model, "import_args": entry.import_args,
             "size": stat.st_size if stat else None, "mtime_ns": stat.st_mtime_ns if stat else None}
    return {k: v for k, v in ident.items() if v is not None}


def evaluator_identity(cfg: SweepConfig):
    if isinstance(cfg.evaluator, EvaluatorRef):
        entry = next(m for m in cfg.models if m.name == cfg.evaluator.model_entry)
        return {"model_entry": entry.name, **entry_identity(cfg, entry)}
    return cfg.evaluator


def reads_split(family: str) -> bool:
    """Whether the model reads the schedule's diffusion split (Eso-LM's samplers)."""
    cls = model_class(family)
    return cls is not None and "split" in (cls.schedule_fields or ())


def schedule_identity(fields: dict, family: str) -> dict:
    """A schedule's non-default fields, with the split an Eso-LM sampler runs."""
    schedule = SamplingSchedule(**fields)
    out = schedule.model_dump(exclude_defaults=True)
    if reads_split(family):
        out["split"] = schedule.diffusion_split()
    return out


def point_identity(cfg: SweepConfig, entry: ModelEntry, point: Point, device: torch.device) -> dict:
    """The dict a point's config hash is taken over."""
    metrics = sorted(cfg.metrics)
    spec = {
        "identity_version": IDENTITY_VERSION, "entry": entry_identity(cfg, entry), "length": point.length,
        "seed": point.seed, "schedule": schedule_identity(point.schedule, entry.family), "metrics": metrics,
        "device": device.type,
        **cfg.model_dump(include={"num_samples", "batch_size", "max_memory", "step_mode", "precision"},
                         exclude_defaults=True),
    }
    if point.batch_size is not None:
        spec["point_batch_size"] = point.batch_size
    if {"gen_ppl", "mauve"} & set(metrics):
        spec["evaluator"] = evaluator_identity(cfg)
    for name in ("test_ppl", "speed", "mauve"):
        if name in metrics:
            spec[name] = getattr(cfg, name).model_dump(exclude_defaults=True)
    return spec


def point_hash(cfg: SweepConfig, entry: ModelEntry, point: Point, device: torch.device) -> str:
    return stable_hash(point_identity(cfg, entry, point, device))


def ppl_cache_key(cfg: SweepConfig, entry: ModelEntry, length: int, alpha_0: float | None, device) -> str:
    """The identity of a test perplexity (points of the same entry and length share it)."""
    spec = {"identity_version": IDENTITY_VERSION, "entry": entry_identity(cfg, entry), "length": length,
            "test_ppl": cfg.test_ppl.model_dump(exclude_defaults=True), "device": device.type,
            **cfg.model_dump(include={"precision"}, exclude_defaults=True)}
    if alpha_0 is not None:
        spec["alpha_0"] = alpha_0
    return stable_hash(spec)
