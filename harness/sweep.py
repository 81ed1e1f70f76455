"""Sweeps: a YAML grid of model entries x sampling schedules x lengths x seeds.

``esolm sweep CONFIG`` trains (or loads) every model entry, then runs each *point* —
one (model entry, schedule, length, seed) — and appends ONE JSON line per finished point
to ``results/<sweep>/points.jsonl`` (written in one ``write`` call, flushed and fsync'ed).
Re-running the same command skips points whose key AND config hash are already in the
file, so a crashed or interrupted sweep resumes where it stopped; a half-written last
line left by a crash is ignored on read and cut off before the next append.

A point's config hash covers everything that decides its numbers (the model entry's
recipe or checkpoint file, schedule, length, seed, sample count, batch size, evaluator,
metrics and their options, device and precision), never the git commit: change any of
them and the point is computed again; the newest line of a key wins on read.

Config schema (one-line errors name the key and the fix)::

    name: smoke                      # results/<name>/, runs/<name>/<entry>/, reports/<name>/
    lengths: [64]
    num_samples: 16
    batch_size: 8
    seeds: [0]
    metrics: [test_ppl, gen_ppl, entropy, speed]       # + mauve
    evaluator: {model_entry: ar}     # or "smollm2", "hf:/path", "ar:/path/to/checkpoint.pt"
    train_defaults: {data: {seq_len: 64}, train: {steps: 300}}   # deep-merged into every train block
    models:
      - name: ar
        train: {model: ar}           # a TrainConfig minus its name: trained into runs/<name>/ar/
      - name: mdlm
        train: {model: mdlm}
        schedules: [{steps: [8, 32, 128]}]             # lists expand as a product
      - name: mine
        checkpoint: path/to/checkpoint.pt              # an existing checkpoint (optionally model: mdlm)
      - name: speed-mdlm
        init: random                 # random weights (seed train.seed), no training: speed sweeps
        train: {model: mdlm, backbone: {preset: small, max_len: 8192}, data: {tokenizer: gpt2}}
        schedules: [{steps: [L/8, L/4, L]}]            # "L", "L/k", "L*k": resolved per length

Schedules are :class:`harness.schedules.SamplingSchedule` fields; a model entry without
``schedules`` runs the model's default schedule once (AR needs none).
"""

from __future__ import annotations

import copy
import gc
import hashlib
import itertools
import json
import os
import platform
import re
import shlex
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from harness.config import (ConfigError, DataSpec, Strict, TrainConfig, format_validation_error, parse, read_yaml,
                            resolve_device)
from harness.nn.steps import FALLBACKS, resolve_mode
from harness.schedules import SamplingSchedule

METRICS = ("test_ppl", "gen_ppl", "entropy", "mauve", "speed")
FAMILIES = ("ar", "mdlm", "bd3lm", "esolm-a", "esolm-b")
# Schedule fields each built-in family reads (checked before any training starts).
SCHEDULE_FIELDS = {"ar": (), "mdlm": ("steps",), "bd3lm": ("steps", "first_hitting"),
                   **dict.fromkeys(("esolm-a", "esolm-b"), ("steps", "alpha_0", "blocks", "split", "stride", "shuffle"))}
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
POINTS_FILE = "points.jsonl"
SAMPLES_DIR = "samples"


# ======================================================================================
# config
# ======================================================================================
class TrainBlock(TrainConfig):
    """A :class:`TrainConfig` without its name: the sweep names the run after the entry."""

    name: str | None = None

    @model_validator(mode="after")
    def _no_name(self):
        if self.name is not None:
            raise ValueError("a train block takes its name from the model entry; remove 'name'")
        return self


class EvaluatorRef(Strict):
    model_entry: str = Field(description="name of an AR model entry of this sweep")


class PerplexitySpec(Strict):
    batch_size: int = Field(16, ge=1)
    max_sequences: int | None = Field(256, ge=1, description="first N held-out sequences (null: all)")
    split: Literal["valid", "test"] = "test"
    draws: int = Field(1, ge=1, description="Monte-Carlo t draws per sequence (diffusion models)")
    seed: int = 0


class SpeedSpec(Strict):
    warmup: int = Field(1, ge=0)
    repeats: int = Field(3, ge=1)


class MauveSpec(Strict):
    reference_samples: int | None = Field(None, ge=2, description="held-out texts to compare with (default: num_samples)")
    num_buckets: int | None = Field(None, ge=2, description="k-means clusters (default: max(2, n // 10))")


class ModelEntry(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    checkpoint: str | None = None
    train: TrainBlock | None = None
    init: Literal["trained", "random"] = "trained"
    model: str | None = Field(None, description="checkpoint entries: the model the checkpoint must hold")
    schedules: list[dict[str, Any]] = Field(default_factory=lambda: [{}])
    lengths: list[int] | None = Field(None, min_length=1, description="overrides the sweep's lengths")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.checkpoint is None) == (self.train is None):
            raise ValueError("give exactly one of 'checkpoint: PATH' or 'train: {...}'")
        if self.init == "random" and self.train is None:
            raise ValueError("init: random builds the model of a 'train:' block; add one (its steps are ignored)")
        if self.model is not None and self.train is not None:
            raise ValueError("'model' is for checkpoint entries; set train.model instead")
        if not self.schedules:
            raise ValueError("schedules must not be empty; omit it to run the model's default schedule")
        return self

    @property
    def model_name(self) -> str | None:
        return self.train.model if self.train is not None else self.model

    @property
    def family(self) -> str:
        name = self.model_name
        return name if name in FAMILIES else "custom"


class SweepConfig(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    models: list[ModelEntry] = Field(min_length=1)
    lengths: list[int] = Field(min_length=1)
    num_samples: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    metrics: list[str] = Field(min_length=1, description=f"subset of {list(METRICS)}")
    evaluator: str | EvaluatorRef | None = None
    test_ppl: PerplexitySpec = Field(default_factory=PerplexitySpec)
    speed: SpeedSpec = Field(default_factory=SpeedSpec)
    mauve: MauveSpec = Field(default_factory=MauveSpec)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto = bf16 autocast on CUDA, fp32 on CPU")
    threads: int | None = Field(None, ge=1, description="torch CPU threads")
    step_mode: Literal["auto", "dynamic", "static", "graph", "compiled"] = Field(
        "auto", description="how the cached samplers run their steps (harness/nn/steps.py): auto = CUDA graphs "
                            "on a GPU and plain eager steps on a CPU, or $ESOLM_STEP_MODE")
    backend: Literal["local", "ray"] = "local"
    runs_dir: str = Field("runs", description="trained entries go to <runs_dir>/<name>/<entry>/")
    save_samples: int | None = Field(None, ge=0, description="texts kept per point in samples/ (null: all)")
    train_defaults: dict[str, Any] = Field(default_factory=dict, description="deep-merged into every train block")

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value):
        unknown = [m for m in value if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRICS)}")
        if len(set(value)) != len(value):
            raise ValueError("a metric is listed twice; list each once")
        return value

    @field_validator("lengths")
    @classmethod
    def _positive_lengths(cls, value):
        if any(v < 2 for v in value):
            raise ValueError("every length must be at least 2")
        return value


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


_LEN_EXPR = re.compile(r"^\s*L\s*(?:([*/])\s*(\d+)\s*)?$")


def is_length_expression(value) -> bool:
    """A string starting with L ("L/8"); other strings are plain values (split: fixed)."""
    return isinstance(value, str) and value.strip().startswith("L")


def resolve_value(value, length: int):
    """'L', 'L/8', 'L*2' -> an int for this length; anything else unchanged."""
    if not is_length_expression(value):
        return value
    m = _LEN_EXPR.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a length expression; use a number or 'L', 'L/8', 'L*2'")
    op, k = m.group(1), int(m.group(2) or 1)
    if op == "/":
        if k == 0 or length % k:
            raise ValueError(f"{value!r} at length {length} is not a whole number; pick a divisor of {length}")
        return length // k
    return length * k if op == "*" else length


def expand_schedules(raw: list[dict]) -> list[dict]:
    """Each dict whose values are lists expands to the product of those lists (in order)."""
    out = []
    for item in raw:
        keys = list(item)
        values = [v if isinstance(v, list) else [v] for v in item.values()]
        for combo in itertools.product(*values):
            out.append(dict(zip(keys, combo)))
    return out


def check_schedule(model: str | None, schedule: SamplingSchedule) -> None:
    """The fields a built-in model reads and needs (custom models check their own at run time)."""
    allowed = SCHEDULE_FIELDS.get(model or "")
    if allowed is None:
        return
    schedule.require_only(model, *allowed)
    if model == "mdlm" and schedule.steps is None:
        raise ValueError("mdlm needs 'steps' in every schedule, e.g. schedules: [{steps: [8, 32]}]")
    if model == "bd3lm" and (schedule.steps is None) == (not schedule.first_hitting):
        raise ValueError("bd3lm needs exactly one of 'steps' (per block) or 'first_hitting: true' in every schedule")
    if model in ("esolm-a", "esolm-b"):
        schedule.check_diffusion_phase(model, schedule.alpha_0)


def check_consistency(cfg: SweepConfig, source: str) -> None:
    from harness.models import REGISTRY

    names = [m.name for m in cfg.models]
    for i, entry in enumerate(cfg.models):  # before the evaluator check, which reads the model names
        model, where = (entry.train.model, "train.model") if entry.train is not None else (entry.model, "model")
        if model is not None and model not in REGISTRY and ":" not in model:
            raise ConfigError(f"{source}: field 'models.{i}.{where}': unknown model {model!r}; use one of "
                              f"{sorted(REGISTRY)} or a dotted path 'package.module:Class'")
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"{source}: field 'models.{i}.name': {name!r} is used twice; give every entry its own name")
    needs_eval = sorted({"gen_ppl", "mauve"} & set(cfg.metrics))
    if needs_eval and cfg.evaluator is None:
        raise ConfigError(f"{source}: field 'evaluator': metrics {needs_eval} need an evaluator; set evaluator: "
                          "{model_entry: <ar entry>}, 'smollm2', 'hf:/path' or 'ar:/path/to/checkpoint.pt'")
    if isinstance(cfg.evaluator, EvaluatorRef):
        ref = next((m for m in cfg.models if m.name == cfg.evaluator.model_entry), None)
        if ref is None:
            raise ConfigError(f"{source}: field 'evaluator.model_entry': {cfg.evaluator.model_entry!r} is not a model "
                              f"entry; use one of {names}")
        if ref.model_name not in (None, "ar") or ref.init == "random":
            raise ConfigError(f"{source}: field 'evaluator.model_entry': {ref.name!r} must be a trained AR entry "
                              "(train: {model: ar}) or an AR checkpoint")


def check_checkpoint_entries(cfg: SweepConfig, names: set[str], source: str) -> None:
    """Checkpoint entries exist and hold the sweep's lengths: checked before anything is
    written or trained (train entries are checked when the config is parsed)."""
    from harness.checkpoint import check_model, read_state

    for i, entry in enumerate(cfg.models):
        if entry.checkpoint is None or entry.name not in names:
            continue
        where = f"{source}: field 'models.{i}.checkpoint'"
        try:
            state = read_state(entry.checkpoint, mmap=True)
            check_model(state, entry.checkpoint, entry.model)
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(f"{where}: {str(err).splitlines()[0]}") from None
        max_len = state["backbone"]["max_len"]
        too_long = [length for length in entry.lengths or cfg.lengths if length > max_len]
        if too_long:
            raise ConfigError(f"{where}: length(s) {too_long} exceed the checkpoint's max_len {max_len}; "
                              f"lower the sweep's lengths (or this entry's lengths:) to <= {max_len}")


def load_sweep_config(path: str | Path, overrides: list[str] | tuple = ()) -> SweepConfig:
    source = str(path)
    data = apply_overrides(read_yaml(path), overrides)
    return parse_sweep_config(data, source)


def apply_overrides(data: dict, overrides: list[str] | tuple) -> dict:
    """``--set KEY=VALUE``: a copy of the raw config with VALUE (read as YAML) at the dotted
    KEY (``step_mode=compiled``, ``speed.repeats=5``, ``models.0.schedules=[{steps: 8}]``),
    so a variant of a shipped config needs no copy of the file.  Validation happens after."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set step_mode=compiled")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: VALUE is not valid YAML: {str(err).splitlines()[0]}") from None
        parts = key.strip().split(".")
        node = data
        for depth, part in enumerate(parts):
            if isinstance(node, list) and not (part.isdigit() and int(part) < len(node)):
                raise ConfigError(f"--set {item!r}: field {'.'.join(parts[:depth])!r} is a list of {len(node)}; "
                                  f"use an index 0..{len(node) - 1}")
            if not isinstance(node, (list, dict)):
                raise ConfigError(f"--set {item!r}: field {'.'.join(parts[:depth])!r} is not a mapping")
            index = int(part) if isinstance(node, list) else part
            if depth == len(parts) - 1:
                node[index] = value
            else:
                node = node[index] if isinstance(node, list) else node.setdefault(part, {})
    return data


def effective_config_text(path: str | Path, overrides: list[str] | tuple, data: dict) -> str:
    """The config a results folder keeps: the file itself, or with --set the merged config
    ``data`` (and the command that made it), so report, rescore and Ray workers read what ran."""
    if not overrides:
        return Path(path).read_text()
    sets = " ".join(f"--set {shlex.quote(o)}" for o in overrides)
    return f"# {path} {sets}\n" + yaml.safe_dump(data, sort_keys=False)


def merged_from_defaults(loc: tuple, raw: dict, defaults: dict) -> str | None:
    """'train_defaults.a.b (merged into models.i.train)' when a bad key under models.i.train
    came from train_defaults, not from the entry itself."""
    if len(loc) < 4 or loc[0] != "models" or loc[2] != "train" or not isinstance(loc[1], int):
        return None

    def has(tree, path):
        for key in path:
            if not isinstance(tree, dict) or key not in tree:
                return False
            tree = tree[key]
        return True

    entries = raw.get("models") if isinstance(raw.get("models"), list) else []
    own = entries[loc[1]].get("train") if loc[1] < len(entries) and isinstance(entries[loc[1]], dict) else None
    rest = [str(part) for part in loc[3:]]
    if has(defaults, rest) and not has(own or {}, rest):
        return f"train_defaults.{'.'.join(rest)} (merged into models.{loc[1]}.train)"
    return None


def parse_sweep_config(data: dict, source: str = "sweep config") -> SweepConfig:
    raw = data
    data = dict(data)
    defaults = data.get("train_defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{source}: field 'train_defaults': expected a mapping of train-block keys")
    if isinstance(data.get("models"), list):
        models = []
        for entry in data["models"]:
            if isinstance(entry, dict) and isinstance(entry.get("train"), dict):
                entry = {**entry, "train": deep_merge(defaults, entry["train"])}
            models.append(entry)
        data["models"] = models
    try:
        cfg = SweepConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source, lambda loc: merged_from_defaults(loc, raw, defaults))) \
            from err
    check_consistency(cfg, source)
    for i, entry in enumerate(cfg.models):
        for j, raw in enumerate(entry.schedules):
            if not isinstance(raw, dict):
                raise ConfigError(f"{source}: field 'models.{i}.schedules.{j}': expected a mapping like {{steps: 32}}")
            unknown = sorted(set(raw) - set(SamplingSchedule.model_fields))
            if unknown:
                raise ConfigError(f"{source}: field 'models.{i}.schedules.{j}.{unknown[0]}': unknown schedule field; "
                                  f"use one of {sorted(SamplingSchedule.model_fields)}")
        for length in entry.lengths or cfg.lengths:
            for fields in expand_schedules(entry.schedules):
                where = f"{source}: field 'models.{i}.schedules'"
                try:
                    resolved = {k: resolve_value(v, length) for k, v in fields.items()}
                except ValueError as err:
                    raise ConfigError(f"{where}: {err}") from err
                schedule = parse(SamplingSchedule, resolved, f"{source}: models.{i}.schedules ({fields})")
                try:
                    check_schedule(entry.model_name, schedule)
                except ValueError as err:
                    raise ConfigError(f"{where}: {err}") from err
            if entry.train is not None:
                max_len = entry.train.backbone.max_len or entry.train.data.seq_len
                if length > max_len:
                    raise ConfigError(f"{source}: field 'models.{i}.train': length {length} exceeds the model's max_len "
                                      f"{max_len}; raise train.backbone.max_len or lower the sweep's lengths")
    return cfg


# ======================================================================================
# points
# ======================================================================================
@dataclass(frozen=True)
class Point:
    index: int
    entry: str
    schedule: dict
    label: str
    length: int
    seed: int
    group: str = ""  # the label with length expressions kept ("T=L/8"): the same curve across lengths

    @property
    def key(self) -> str:
        return f"{self.entry}/{self.label}/L{self.length}/s{self.seed}"


def expand_points(cfg: SweepConfig) -> list[Point]:
    """model entry -> length -> schedule -> seed, in config order (stable indices for --shard).

    A schedule written with a length expression that lands on an earlier point (T = L/8 is
    T = 128 at L = 1024) is that point, and is skipped; a literal repeat is a config error."""
    points, seen = [], set()
    for entry in cfg.models:
        for length in entry.lengths or cfg.lengths:
            for fields in expand_schedules(entry.schedules):
                resolved = {k: resolve_value(v, length) for k, v in fields.items()}
                schedule = SamplingSchedule(**resolved)
                for seed in cfg.seeds:
                    point = Point(len(points), entry.name, schedule.model_dump(exclude_defaults=True),
                                  schedule.label(), length, seed, group_label(schedule, fields))
                    if point.key in seen:
                        if any(map(is_length_expression, fields.values())):
                            continue
                        raise ConfigError(f"sweep {cfg.name}: point {point.key} appears twice; "
                                          "remove the repeated schedule")
                    seen.add(point.key)
                    points.append(point)
    return points


def group_label(schedule: SamplingSchedule, raw: dict) -> str:
    """Like ``schedule.label()`` but with the config's length expressions ("T=L/8")."""
    return schedule.label({k: v for k, v in raw.items() if is_length_expression(v)})


def parse_shard(shard: str | None) -> tuple[int, int]:
    if shard is None:
        return 0, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(shard))
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise ConfigError(f"--shard {shard!r}: use i/n with 0 <= i < n, e.g. --shard 0/4")
    return int(m.group(1)), int(m.group(2))


def stable_hash(obj, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def point_seed(seed: int, key: str) -> int:
    return int(hashlib.sha256(f"{seed}|{key}".encode()).hexdigest()[:15], 16)


def safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,-]", "_", key.replace("/", "__"))


# ======================================================================================
# results file
# ======================================================================================
def points_path(results: str | Path) -> Path:
    """A points.jsonl file, or a results folder holding one."""
    path = Path(results)
    return path / POINTS_FILE if path.is_dir() or path.suffix != ".jsonl" else path


def read_points(results: str | Path, strict: bool = False) -> list[dict]:
    """Every row of a points file in order; an unreadable LAST line (a crash mid-write) is ignored."""
    path = points_path(results)
    if not path.is_file():
        if strict:
            raise FileNotFoundError(f"no results file at {str(path)!r}; run 'esolm sweep CONFIG' first or pass "
                                    f"a results folder / points.jsonl")
        return []
    lines = path.read_text().split("\n")
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if all(not rest.strip() for rest in lines[i + 1 :]):
                break  # a half-written last line
            raise ValueError(f"{path}: line {i + 1} is not valid JSON; remove it (finished points are on other lines)")
        if not (isinstance(row, dict) and isinstance(row.get("key"), str) and isinstance(row.get("metrics"), dict)):
            raise ValueError(f"{path}: line {i + 1} is not a results row (it needs a 'key' string and a 'metrics' "
                             "mapping); fix or remove that line")
        rows.append(row)
    return rows


def latest_rows(rows: list[dict]) -> dict[str, dict]:
    """key -> the newest row of that key (a changed config appends a new row)."""
    out: dict[str, dict] = {}
    for row in rows:
        out.pop(row["key"], None)
        out[row["key"]] = row
    return out


def repair_tail(path: Path) -> None:
    """Cut a half-written last line so the next append starts on a fresh line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    with path.open("r+b") as f:
        f.truncate(cut)
        f.flush()
        os.fsync(f.fileno())


def append_row(path: Path, row: dict) -> None:
    line = (json.dumps(row, sort_keys=False, allow_nan=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write: shards appending to the same file never interleave
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ======================================================================================
# running
# ======================================================================================
def git_commit() -> str | None:
    from harness.checkpoint import git_commit as commit

    return commit()


def entry_train_config(cfg: SweepConfig, entry: ModelEntry) -> TrainConfig:
    block = entry.train.model_dump(exclude={"name"})
    block["out_dir"] = block["out_dir"] or str(Path(cfg.runs_dir) / cfg.name / entry.name)
    return TrainConfig.model_validate({**block, "name": f"{cfg.name}-{entry.name}"})


def entry_identity(cfg: SweepConfig, entry: ModelEntry) -> dict:
    """What decides an entry's weights: its recipe (trained/random) or its checkpoint file."""
    if entry.train is not None:
        recipe = entry.train.model_dump(exclude={"name", "out_dir"})
        if not recipe["train"]["compile"]:  # left out so results made before the field keep their hashes
            del recipe["train"]["compile"]
        if entry.init == "random":
            recipe = {k: v for k, v in recipe.items() if k != "train"} | {"seed": entry.train.train.seed}
        return {"init": entry.init, "recipe": recipe}
    path = Path(entry.checkpoint)
    if path.is_dir():
        from harness.checkpoint import CHECKPOINT_NAME

        path = path / CHECKPOINT_NAME
    stat = path.stat() if path.exists() else None
    return {"init": "checkpoint", "checkpoint": str(path), "model": entry.model,
            "size": stat.st_size if stat else None, "mtime_ns": stat.st_mtime_ns if stat else None}


def evaluator_identity(cfg: SweepConfig):
    if isinstance(cfg.evaluator, EvaluatorRef):
        entry = next(m for m in cfg.models if m.name == cfg.evaluator.model_entry)
        return {"model_entry": entry.name, **entry_identity(cfg, entry)}
    return cfg.evaluator


def point_hash(cfg: SweepConfig, entry: ModelEntry, point: Point, device: torch.device) -> str:
    metrics = sorted(cfg.metrics)
    spec = {
        "entry": entry_identity(cfg, entry), "length": point.length, "seed": point.seed,
        "schedule": SamplingSchedule(**point.schedule).hash_fields("split" in SCHEDULE_FIELDS.get(entry.family, ())),
        "num_samples": cfg.num_samples, "batch_size": cfg.batch_size, "metrics": metrics,
        "device": device.type, "precision": cfg.precision,
    }
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


@dataclass
class LoadedEntry:
    model: Any
    tokenizer: Any
    data: DataSpec
    checkpoint: str | None
    meta: dict
    model_name: str
    sampler: Any = None  # the bf16 copy that samples on CUDA (Context.sampler)


@dataclass
class Context:
    """Everything the points of one run share: loaded models, evaluator, test-ppl cache."""

    cfg: SweepConfig
    device: torch.device
    checkpoints: dict[str, str]  # entry name -> checkpoint path (trained / given entries)
    test_ppl_cache: dict[str, dict] = field(default_factory=dict)
    commit: str | None = None  # git commit at the start of the run (one value per run)
    _loaded: tuple[str, LoadedEntry] | None = None
    _evaluator: Any = None

    @property
    def bf16(self) -> bool:
        return self.cfg.precision == "bf16" or (self.cfg.precision == "auto" and self.device.type == "cuda")

    @property
    def cast_for_sampling(self) -> bool:
        """bf16 on CUDA samples from a bf16 copy of the weights instead of under autocast:
        the samplers' steps are CUDA graphs (harness.nn.steps), and autocast would re-cast
        every weight inside every replayed step."""
        return self.bf16 and self.device.type == "cuda"

    @property
    def autocast(self):
        if self.bf16:
            return lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext

    @property
    def sampling_autocast(self):
        return nullcontext if self.cast_for_sampling else self.autocast

    def sampler(self, loaded: "LoadedEntry"):
        """The model samples are drawn from (see :attr:`cast_for_sampling`)."""
        if not self.cast_for_sampling:
            return loaded.model
        if loaded.sampler is None:
            loaded.sampler = copy.deepcopy(loaded.model).to(torch.bfloat16)
        return loaded.sampler

    @property
    def dtype(self) -> str:
        """How samples are computed (test perplexity runs under bf16 autocast whenever bf16)."""
        if self.cast_for_sampling:
            return "bf16"
        return "bf16-autocast" if self.bf16 else "fp32"

    def entry(self, name: str) -> ModelEntry:
        return next(m for m in self.cfg.models if m.name == name)

    def load(self, name: str) -> LoadedEntry:
        """The entry's model on the device; one entry is kept loaded at a time."""
        if self._loaded and self._loaded[0] == name:
            return self._loaded[1]
        self._loaded = None
        if self.device.type == "cuda":  # the last entry's weights, KV caches and graph pools
            gc.collect()
            torch.cuda.empty_cache()
        entry = self.entry(name)
        if entry.init == "random":
            from harness.train import build, build_tokenizer

            tcfg = entry_train_config(self.cfg, entry)
            tokenizer = build_tokenizer(tcfg.data)
            torch.manual_seed(tcfg.train.seed)
            model = build(tcfg, tokenizer).to(self.device).eval()
            loaded = LoadedEntry(model, tokenizer, tcfg.data, None,
                                 {"parameters": model.net.num_parameters(), "weights": "random"}, tcfg.model)
        else:
            from harness.checkpoint import load_checkpoint

            path = self.checkpoints[name]
            ck = load_checkpoint(path, device=self.device, expect_model=entry.model_name)
            loaded = LoadedEntry(ck.model, ck.tokenizer, DataSpec(**ck.config["data"]), str(ck.path), ck.meta,
                                 entry.model_name or ck.config.get("model") or getattr(ck.model, "name", "custom"))
        self._loaded = (name, loaded)
        return loaded

    def evaluator(self):
        if self._evaluator is None:
            from harness.evaluators import get_evaluator

            spec = self.cfg.evaluator
            if isinstance(spec, EvaluatorRef):
                spec = f"ar:{self.checkpoints[spec.model_entry]}"
            self._evaluator = get_evaluator(spec, device=self.device)
        return self._evaluator


def compute_test_ppl(ctx: Context, entry: ModelEntry, loaded: LoadedEntry, length: int, alpha_0) -> dict:
    from harness.metrics.likelihood import test_perplexity
    from harness.train import load_splits

    key = ppl_cache_key(ctx.cfg, entry, length, alpha_0, ctx.device)
    if key not in ctx.test_ppl_cache:
        spec = ctx.cfg.test_ppl
        data = load_splits(loaded.data, loaded.tokenizer, seq_len=length)[spec.split]
        if spec.max_sequences:
            data = data[: spec.max_sequences]
        kwargs = {}
        if spec.draws != 1:
            kwargs["draws"] = spec.draws
        if alpha_0 is not None:
            kwargs["alpha_0"] = alpha_0
        with ctx.autocast():
            result = test_perplexity(loaded.model, data, spec.batch_size, seed=spec.seed, **kwargs)
        ctx.test_ppl_cache[key] = {"test_ppl": result["ppl"], "test_ppl_estimator": result["estimator"],
                                   "test_ppl_exact": result["exact"], "test_ppl_sequences": result["n_sequences"],
                                   "test_ppl_split": spec.split, "test_ppl_key": key}
    return ctx.test_ppl_cache[key]


def reference_texts(ctx: Context, loaded: LoadedEntry, length: int, n: int) -> list[str]:
    return test_texts(loaded.data, loaded.tokenizer, length, n)


def test_texts(data: DataSpec, tokenizer, length: int, n: int) -> list[str]:
    """The first n held-out test sequences of ``length`` tokens as text (MAUVE's references)."""
    from harness.train import load_splits

    rows = load_splits(data, tokenizer, seq_len=length)["test"][:n]
    return [tokenizer.decode(row[1:].tolist()) for row in rows]


def forward_cost(model) -> dict:
    """What one forward must at least do, for the report's floors (PERF.md): read every
    weight but the embedding table (only looked up), 2 FLOPs per such weight per token, and
    the K and V of every layer for each cache slot it attends to (``key_reads``)."""
    net = getattr(model, "net", None)
    if net is None:
        return {}
    weights = [p for name, p in net.named_parameters() if not name.startswith("embed.")]
    cfg = getattr(net, "cfg", None)
    # K and V of every layer, in the dtype new_cache allocates (the head's)
    kv = 2 * cfg.n_layers * cfg.d_model * net.head.weight.element_size() if cfg is not None else None
    return {"matmul_parameters": sum(p.numel() for p in weights),
            "weight_bytes": sum(p.numel() * p.element_size() for p in weights),
            "kv_bytes_per_key": kv}


def sample_boundaries(tokens: torch.Tensor, bos: int, eos: int) -> dict:
    """Where samples put BOS and EOS.  Every training row is [BOS] + text + [EOS] (SPEC §0
    wrap packing), so a model that learned the format starts with BOS and ends with EOS; AR
    is given its BOS, the diffusion samplers generate position 0, and with rotary positions
    only they can place it (and EOS at L − 1) only relative to tokens already revealed.
    EOS inside a sample marks document boundaries (the data has one every document)."""
    inside = tokens[:, 1:-1] == eos
    return {"bos_first": (tokens[:, 0] == bos).double().mean().item(),
            "eos_last": (tokens[:, -1] == eos).double().mean().item(),
            "eos_inside_per_sample": inside.sum(dim=1).double().mean().item()}


def compute_point(ctx: Context, point: Point) -> tuple[dict, list[dict]]:
    """Run one point: sample, score, time. Returns (row, sample records)."""
    cfg = ctx.cfg
    entry = ctx.entry(point.entry)
    loaded = ctx.load(point.entry)
    model, tok = loaded.model, loaded.tokenizer
    sampler = ctx.sampler(loaded)
    sampler.step_mode = None if cfg.step_mode == "auto" else cfg.step_mode
    fallbacks = len(FALLBACKS)
    model.check_length(point.length)
    schedule = SamplingSchedule(**point.schedule)
    options = model.options() if hasattr(model, "options") else {}
    model_name = loaded.model_name
    family = model_name if model_name in FAMILIES else "custom"
    is_esolm = family in ("esolm-a", "esolm-b") or "alpha_0" in options
    alpha_0 = (schedule.alpha_0 if schedule.alpha_0 is not None else options.get("alpha_0")) if is_esolm else None

    # --- samples ---------------------------------------------------------------------
    generator = torch.Generator(device=ctx.device).manual_seed(point_seed(point.seed, point.key))
    rows, nfe_batches, tokens_computed, nfe_rows, extra, key_reads = [], [], 0, [], {}, 0
    done = 0
    while done < cfg.num_samples:
        n = min(cfg.batch_size, cfg.num_samples - done)
        with torch.no_grad(), ctx.sampling_autocast():
            gen = sampler.sample(n, point.length, schedule, generator)
        rows.append(gen.tokens.cpu())
        nfe_batches.append(int(gen.nfe))
        tokens_computed += int(gen.tokens_computed)
        key_reads += int(gen.key_reads)
        if gen.nfe_per_sample is not None:
            nfe_rows.extend(int(v) for v in torch.as_tensor(gen.nfe_per_sample).reshape(-1).tolist())
        else:
            nfe_rows.extend([int(gen.nfe)] * n)
        for k, v in (gen.extra or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                extra.setdefault(k, []).append(v)
        done += n
    tokens = torch.cat(rows)
    texts = [tok.decode(row[1:].tolist() if int(row[0]) == tok.bos_id else row.tolist()) for row in tokens]

    metrics: dict[str, Any] = {
        "nfe": sum(nfe_batches) / len(nfe_batches),
        "nfe_per_batch": nfe_batches,
        "nfe_per_sample": sum(nfe_rows) / len(nfe_rows),
        "tokens_computed_per_sample": tokens_computed / cfg.num_samples,
        "key_reads_per_sample": key_reads / cfg.num_samples,
    }
    metrics.update(sample_boundaries(tokens, tok.bos_id, tok.eos_id))
    for k, values in extra.items():
        metrics[f"extra_{k}"] = sum(values) / len(values)
    records = [{"i": i, "text": t} for i, t in enumerate(texts)]

    if "entropy" in cfg.metrics:
        from harness.metrics.entropy import sample_entropies

        ent = sample_entropies(tokens, ignore_ids={tok.bos_id, tok.mask_id})
        metrics.update(entropy=ent["entropy_mean"], degenerate=ent["n_degenerate"],
                       degenerate_rule=ent["degenerate_rule"])
        for rec, h in zip(records, ent["entropy_per_sample"]):
            rec["entropy"] = h
    if "gen_ppl" in cfg.metrics:
        scored = ctx.evaluator().score(texts)
        metrics.update(gen_ppl=scored.ppl, gen_ppl_mean=scored.mean_sample_ppl, gen_ppl_tokens=scored.n_tokens,
                       evaluator=scored.evaluator)
        for rec, p in zip(records, scored.sample_ppl):
            rec["gen_ppl"] = p
    if "mauve" in cfg.metrics:
        from harness.metrics.mauve import mauve_score

        n_ref = cfg.mauve.reference_samples or cfg.num_samples
        kwargs = {"num_buckets": cfg.mauve.num_buckets} if cfg.mauve.num_buckets else {}
        result = mauve_score(ctx.evaluator(), texts, reference_texts(ctx, loaded, point.length, n_ref), **kwargs)
        metrics.update(mauve=result["mauve"], mauve_note=result.get("reason"), mauve_n=[result["n_p"], result["n_q"]])
        metrics.setdefault("evaluator", ctx.evaluator().name)
    if "test_ppl" in cfg.metrics:
        metrics.update(compute_test_ppl(ctx, entry, loaded, point.length, alpha_0 if is_esolm else None))
    if "speed" in cfg.metrics:
        from harness.metrics.speed import time_sampling

        def one_batch():
            # The samples' own seed: the timed runs take the shapes the sampling pass took, so
            # the CUDA graphs they replay were captured before the clock started.
            timing_gen = torch.Generator(device=ctx.device).manual_seed(point_seed(point.seed, point.key))
            with torch.no_grad(), ctx.sampling_autocast():
                return sampler.sample(cfg.batch_size, point.length, schedule, timing_gen)

        sp = time_sampling(one_batch, warmup=cfg.speed.warmup, repeats=cfg.speed.repeats, device=ctx.device,
                           dtype=ctx.dtype)
        if ctx.device.type == "cuda":
            metrics["graph_fallbacks"] = len(FALLBACKS) - fallbacks  # step shapes run eagerly, not as graphs
        metrics.update(seconds_per_sample=sp["seconds_per_sample"], tokens_per_second=sp["tokens_per_second"],
                       seconds_per_batch=sp["seconds_median"], seconds_all=sp["seconds_all"],
                       gpu_peak_memory_bytes=sp["peak_memory_bytes"], gpu_energy_per_sample_joules=sp["energy_per_sample_joules"],
                       gpu_mean_power_watts=sp["mean_power_watts"], telemetry_note=sp.get("telemetry_reason"))

    row = {
        "sweep": cfg.name,
        "key": point.key,
        "config_hash": point_hash(cfg, entry, point, ctx.device),
        "model_entry": entry.name,
        "family": family,
        "model": model_name,
        "model_options": options,
        "init": entry.init if entry.train is not None else "checkpoint",
        "checkpoint": loaded.checkpoint,
        "parameters": loaded.meta.get("parameters"),
        **forward_cost(sampler),
        "train_step": loaded.meta.get("step"),
        "schedule": point.label,
        "schedule_group": point.group,
        "schedule_fields": point.schedule,
        "alpha_0": alpha_0,
        "alpha_0_train": options.get("alpha_0"),
        "diffusion_split": schedule.diffusion_split() if is_esolm else None,  # absent in older rows: "fixed"
        "data_protocol": loaded.data.protocol,  # absent in older rows: "documents"
        "length": point.length,
        "seed": point.seed,
        "num_samples": cfg.num_samples,
        "batch_size": cfg.batch_size,
        "metrics": metrics,
        "device": str(ctx.device),
        "device_name": _device_name(ctx.device),
        "dtype": ctx.dtype,
        "step_mode": resolve_mode(sampler.step_mode, ctx.device),
        "git_commit": ctx.commit if ctx.commit is not None else git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return row, records


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU ({torch.get_num_threads()} threads)"


def _finish_point(results_dir: Path, cfg: SweepConfig, row: dict, records: list[dict]) -> None:
    keep = records if cfg.save_samples is None else records[: cfg.save_samples]
    write_atomic(results_dir / SAMPLES_DIR / f"{safe_name(row['key'])}.jsonl",
                 "".join(json.dumps(r) + "\n" for r in keep))
    append_row(results_dir / POINTS_FILE, row)


def train_entries(cfg: SweepConfig, names: set[str], progress: bool) -> dict[str, str]:
    """Checkpoint path of every named entry, training (or resuming) train entries first."""
    from harness.train import train

    paths = {}
    for entry in cfg.models:
        if entry.name not in names or entry.init == "random":
            continue
        if entry.checkpoint is not None:
            from harness.checkpoint import resolve_checkpoint_path

            paths[entry.name] = str(resolve_checkpoint_path(entry.checkpoint))
            continue
        paths[entry.name] = str(train(entry_train_config(cfg, entry), resume=True, progress=progress))
    return paths


def parse_entries(cfg: SweepConfig, entries: str | list[str] | None) -> set[str] | None:
    """--entries a,b: run only these model entries (e.g. one GPU lease trains half the models)."""
    if entries is None:
        return None
    names = [e.strip() for e in (entries.split(",") if isinstance(entries, str) else entries) if e.strip()]
    known = [m.name for m in cfg.models]
    unknown = [e for e in names if e not in known]
    if unknown or not names:
        raise ConfigError(f"--entries {entries!r}: {unknown[0] if unknown else 'nothing'} is not a model entry "
                          f"of sweep {cfg.name}; use a comma-separated subset of {known}")
    return set(names)


def run_sweep(config_path: str | Path, shard: str | None = None, results_root: str | Path = "results",
              report: bool = True, progress: bool = True, reports_root: str | Path = "reports",
              entries: str | list[str] | None = None, overrides: list[str] | tuple = ()) -> Path:
    """Run (or resume) a sweep; returns the results folder ``<results_root>/<name>``."""
    data = apply_overrides(read_yaml(config_path), overrides)  # read and merged once, kept below
    cfg = parse_sweep_config(data, str(config_path))
    shard_i, shard_n = parse_shard(shard)
    only = parse_entries(cfg, entries)
    if cfg.backend == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError(f"{config_path}: field 'backend': 'ray' needs the ray package; install ray "
                              "(pip install ray) or set backend: local") from None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    points = [p for p in expand_points(cfg) if p.index % shard_n == shard_i and (only is None or p.entry in only)]
    check_checkpoint_entries(cfg, {p.entry for p in points}, str(config_path))
    results_dir = Path(results_root) / cfg.name
    results_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(results_dir / "config.yaml", effective_config_text(config_path, overrides, data))
    path = results_dir / POINTS_FILE
    repair_tail(path)
    existing = read_points(path)
    finished = {(r["key"], r.get("config_hash")) for r in existing}
    entries = {m.name: m for m in cfg.models}
    todo = [p for p in points if (p.key, point_hash(cfg, entries[p.entry], p, device)) not in finished]
    skipped = len(points) - len(todo)

    ctx = Context(cfg, device, {}, commit=git_commit())
    if todo and ({"gen_ppl", "mauve"} & set(cfg.metrics)) and not isinstance(cfg.evaluator, EvaluatorRef):
        ctx.evaluator()  # a missing evaluator fails now, not after hours of training
    needed = {p.entry for p in todo}
    if todo and isinstance(cfg.evaluator, EvaluatorRef) and ({"gen_ppl", "mauve"} & set(cfg.metrics)):
        needed.add(cfg.evaluator.model_entry)
    checkpoints = train_entries(cfg, needed, progress)
    ctx.checkpoints = checkpoints
    for row in existing:  # reuse test perplexities of finished points (same entry, length, options)
        m = row.get("metrics", {})
        if "test_ppl_key" in m:
            ctx.test_ppl_cache[m["test_ppl_key"]] = {k: v for k, v in m.items() if k.startswith("test_ppl")}

    if skipped:
        print(f"sweep {cfg.name}: {skipped} of {len(points)} points already in {path}; running {len(todo)}",
              file=sys.stderr)
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc=f"sweep {cfg.name}", unit="pt", disable=not progress, dynamic_ncols=True)
    try:
        if cfg.backend == "ray" and todo:
            _run_ray(results_dir / "config.yaml", cfg, todo, checkpoints, results_dir, bar)  # with any --set
        else:
            for point in todo:
                bar.set_postfix_str(point.key)
                row, records = compute_point(ctx, point)
                _finish_point(results_dir, cfg, row, records)
                bar.update(1)
    finally:
        bar.close()
    if report:
        from harness.report import write_report

        out = write_report(results_dir, out_dir=Path(reports_root) / cfg.name)
        print(f"report: {out}", file=sys.stderr)
    return results_dir


# --------------------------------------------------------------------------------------
# Ray backend: one task per point; the driver appends rows as tasks finish
# --------------------------------------------------------------------------------------
def _ray_point(config_path: str, checkpoints: dict, point: Point):
    cfg = load_sweep_config(config_path)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx = Context(cfg, resolve_device(cfg.device), checkpoints)
    return compute_point(ctx, point)


def _run_ray(config_path, cfg: SweepConfig, todo: list[Point], checkpoints: dict, results_dir: Path, bar) -> None:
    import ray

    if not ray.is_initialized():
        ray.init()
    gpus = 1 if resolve_device(cfg.device).type == "cuda" else 0
    task = ray.remote(num_gpus=gpus)(_ray_point)
    config_path = str(Path(config_path).resolve())
    abs_ckpts = {k: str(Path(v).resolve()) for k, v in checkpoints.items()}
    pending = [task.remote(config_path, abs_ckpts, p) for p in todo]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        row, records = ray.get(done[0])
        _finish_point(results_dir, cfg, row, records)
        bar.update(1)
