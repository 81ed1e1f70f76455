"""The sweep config: its schema, ``--set`` overrides and the checks made before anything runs.

Config schema (one-line errors name the key and the fix)::

    name: smoke                      # results/<name>/, runs/<name>/<entry>/, reports/<name>/
    lengths: [64]
    num_samples: 16
    batch_size: 8
    seeds: [0]
    metrics: [test_ppl, gen_ppl, entropy, speed]       # + mauve
    evaluator: {model_entry: ar}     # or "smollm2", "hf:/path", "ar:/path/to/checkpoint.pt"
    train_defaults: {data: {seq_len: 64}, train: {steps: 300}}   # deep-merged into every train block
    paths: {released: /data/released}  # ${released} in any string field; --set paths.released=DIR
    import_defaults: {data: {protocol: owt}}           # deep-merged into every imported entry's import_args
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
import difflib
import shlex
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from harness.config import (NAME_PATTERN, SEED_MAX, ConfigError, Strict, TrainConfig, format_validation_error, parse,
                            read_yaml)
from harness.metrics.likelihood import MAX_DRAWS
from harness.models import REGISTRY, model_class
from harness.schedules import SamplingSchedule
from harness.sweep.grid import entry_grid, resolve_value
from harness.sweep.paths import deep_merge, expand_paths

METRICS = ("test_ppl", "gen_ppl", "entropy", "mauve", "speed")
# Stated budgets: a point runs its samples and draws with no progress of its own, so sizes far
# beyond any protocol (the papers use thousands) are refused rather than run for days.
MAX_SAMPLES = 1_000_000


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
    seed: int = Field(0, ge=0, le=SEED_MAX, description="seeds torch's RNG for the Monte-Carlo estimators")

    @field_validator("draws")
    @classmethod
    def _draw_budget(cls, value):
        if value > MAX_DRAWS:
            raise ValueError(f"at most {MAX_DRAWS:,} draws per sequence (each draw is another forward over every "
                             f"sequence), got {value}; lower it")
        return value


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
    import_args: dict[str, Any] | None = Field(None, description="a checkpoint naming a released file (hf:/folder "
                                               "or a .ckpt): block_size, alpha_0, ema, corpus as for esolm import")
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
        if self.import_args is not None and self.train is not None:
            raise ValueError("'import_args' is for checkpoint entries naming a released file")
        if not self.schedules:
            raise ValueError("schedules must not be empty; omit it to run the model's default schedule")
        return self

    @property
    def model_name(self) -> str | None:
        return self.train.model if self.train is not None else self.model

    @property
    def family(self) -> str:
        name = self.model_name
        return name if name in REGISTRY else "custom"


class SweepConfig(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    models: list[ModelEntry] = Field(min_length=1)
    lengths: list[int] = Field(min_length=1)
    num_samples: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    batch_sizes: list[int] | dict[int, int | list[int]] | None = Field(
        None, description="throughput: time every point at each of these batch sizes (a grid dimension; a mapping "
                          "length -> sizes gives them per length); such a point samples one batch of its size, "
                          "so num_samples and batch_size do not apply to it")
    max_memory: int | str | None = Field(
        None, description="bytes a sampling forward plus the KV cache may use, e.g. '40GB' (harness/memory.py); "
                          "null: 90% of the device's free memory")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    metrics: list[str] = Field(min_length=1, description=f"subset of {list(METRICS)}")
    evaluator: str | EvaluatorRef | None = None
    test_ppl: PerplexitySpec = Field(default_factory=PerplexitySpec)
    speed: SpeedSpec = Field(default_factory=SpeedSpec)
    mauve: MauveSpec = Field(default_factory=MauveSpec)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto = bf16 autocast on CUDA, fp32 on CPU")
    threads: int | None = Field(None, ge=1, description="torch CPU threads")
    step_mode: Literal["auto", "fastest", "dynamic", "static", "graph", "compiled"] = Field(
        "auto", description="how the cached samplers run their steps (harness/nn/steps.py): auto = the fastest "
                            "measured of the modes that give the eager tokens exactly (on a GPU: one batch each in "
                            "graph and dynamic at the first point of each entry, length and batch, trials recorded; "
                            "on a CPU that is dynamic alone), or "
                            "$ESOLM_STEP_MODE; fastest = the same over every mode, compiled included")
    backend: Literal["local", "ray"] = "local"
    runs_dir: str = Field("runs", description="trained entries go to <runs_dir>/<name>/<entry>/")
    save_samples: int | None = Field(None, ge=0, description="texts kept per point in samples/ (null: all)")
    train_defaults: dict[str, Any] = Field(default_factory=dict, description="deep-merged into every train block")
    paths: dict[str, str] = Field(default_factory=dict, description="named paths: ${name} in any string field is "
                                  "replaced by paths.name (harness/sweep/paths.py); import_defaults: deep-merged into "
                                  "every imported entry's import_args")

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value):
        unknown = [m for m in value if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRICS)}")
        if len(set(value)) != len(value):
            raise ValueError("a metric is listed twice; list each once")
        return value

    @field_validator("batch_sizes")
    @classmethod
    def _positive_batches(cls, value):
        sizes = value if isinstance(value, list) else [v for vs in (value or {}).values()
                                                       for v in (vs if isinstance(vs, list) else [vs])]
        if any(v < 1 for v in sizes) or (value is not None and not sizes):
            raise ValueError("every batch size must be at least 1, e.g. batch_sizes: [1, 8, 64]")
        if any(v > MAX_SAMPLES for v in sizes):
            raise ValueError(f"every batch size must be at most {MAX_SAMPLES:,} (a point samples its whole batch), "
                             f"got {max(sizes)}; lower it")
        return value

    @field_validator("num_samples", "batch_size")
    @classmethod
    def _sample_budget(cls, value):
        if value > MAX_SAMPLES:
            raise ValueError(f"at most {MAX_SAMPLES:,} samples per point, got {value}; lower it (more seeds give "
                             "more samples, each seed its own point)")
        return value

    @field_validator("seeds")
    @classmethod
    def _seed_range(cls, value):
        bad = [s for s in value if not 0 <= s <= SEED_MAX]
        if bad:
            raise ValueError(f"every seed must be in [0, 2**63 - 1] (torch's 64-bit seed, as esolm sample --seed), "
                             f"got {bad[0]}")
        return value

    @field_validator("max_memory")
    @classmethod
    def _memory(cls, value):
        from harness.memory import parse_bytes

        parse_bytes(value)
        return value

    def batches_at(self, length: int) -> list[int | None]:
        """The batch sizes points at this length are timed at ([None]: the sweep's batch_size)."""
        if self.batch_sizes is None:
            return [None]
        if isinstance(self.batch_sizes, list):
            return list(self.batch_sizes)
        sizes = self.batch_sizes.get(length)
        if sizes is None:
            raise ValueError(f"batch_sizes has no entry for length {length}; add '{length}: [...]'")
        return sizes if isinstance(sizes, list) else [sizes]

    @field_validator("lengths")
    @classmethod
    def _positive_lengths(cls, value):
        if any(v < 2 for v in value):
            raise ValueError("every length must be at least 2")
        return value


def check_schedule(model: str | None, schedule: SamplingSchedule) -> None:
    """The model class's own check (a plug-in named by path checks its schedules when it runs:
    a config is never a reason to import it early)."""
    cls = model_class(model)
    if cls is not None:
        cls.check_schedule(schedule)


def check_consistency(cfg: SweepConfig, source: str) -> None:
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


def load_sweep_config(path: str | Path, overrides: list[str] | tuple = ()) -> SweepConfig:
    data = apply_overrides(read_yaml(path), overrides)
    return parse_sweep_config(data, config_source(path, overrides))


def config_source(path: str | Path, overrides: list[str] | tuple = ()) -> str:
    """How an error names the config: the file and the --set items (a bad value may come from either)."""
    return str(path) + "".join(f" --set {item}" for item in overrides)


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
    data = expand_paths(data, source)
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
        where = lambda loc: merged_from_defaults(loc, raw, defaults)  # noqa: E731
        raise ConfigError(format_validation_error(err, source, where, SweepConfig)) from err
    check_consistency(cfg, source)
    for i, entry in enumerate(cfg.models):
        for j, raw in enumerate(entry.schedules):
            if not isinstance(raw, dict):
                raise ConfigError(f"{source}: field 'models.{i}.schedules.{j}': expected a mapping like {{steps: 32}}")
            unknown = sorted(set(raw) - set(SamplingSchedule.model_fields))
            if unknown:
                close = difflib.get_close_matches(unknown[0], list(SamplingSchedule.model_fields), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"{source}: field 'models.{i}.schedules.{j}.{unknown[0]}': unknown schedule field; "
                                  f"use one of {sorted(SamplingSchedule.model_fields)}{hint}")
        for length in entry.lengths or cfg.lengths:
            try:
                cfg.batches_at(length)
            except ValueError as err:
                raise ConfigError(f"{source}: field 'batch_sizes': {err}") from None
        for length, _, fields in entry_grid(entry, cfg.lengths):
            where = f"{source}: field 'models.{i}.schedules'"
            try:
                resolved = {k: resolve_value(v, length) for k, v in fields.items()}
            except ValueError as err:
                raise ConfigError(f"{where}: {err}") from err
            schedule = parse(SamplingSchedule, resolved, f"{source}: models.{i}.schedules ({fields})")
            try:
                check_schedule(entry.model_name, schedule)
                schedule.check_length(length)
            except ValueError as err:
                raise ConfigError(f"{where}: {err}") from err
        for length in entry.lengths or cfg.lengths:
            if entry.train is not None:
                max_len = entry.train.backbone.max_len or entry.train.data.seq_len
                if length > max_len:
                    raise ConfigError(f"{source}: field 'models.{i}.train': length {length} exceeds the model's max_len "
                                      f"{max_len}; raise train.backbone.max_len or lower the sweep's lengths")
    check_costs(cfg, source)
    return cfg


def check_costs(cfg: SweepConfig, source: str) -> None:
    """What one point holds at once must fit half of this machine's free memory (the check
    ``esolm sample`` makes), checked before anything is trained: a schedule's step plan (built
    whole, :func:`harness.memory.plan_cost`) and the samples the point keeps until it is written.
    A size that cannot fit is refused naming its field (it used to take the memory until the
    kernel killed the sweep)."""
    import torch

    from harness.memory import HEADROOM, HELD_TOKEN_BYTES, free_bytes, gib, plan_cost

    free = free_bytes(torch.device("cpu"))

    def refuse_over(need: int, field: str, what: str, fix: str) -> None:
        if need > free * HEADROOM:
            raise ConfigError(f"{source}: field '{field}': {what} needs ~{gib(need)} but {gib(free)} is free on this "
                              f"machine; {fix}")

    for i, entry in enumerate(cfg.models):
        block = entry.train.model_args.get("block_size") if entry.train is not None and entry.family == "bd3lm" else None
        for length, j, fields in entry_grid(entry, cfg.lengths):
            windows = -(-length // block) if isinstance(block, int) and block > 0 else 1
            for key in ("steps", "blocks"):
                value = resolve_value(fields.get(key), length)
                if isinstance(value, int) and not isinstance(value, bool):
                    per_row, fixed = plan_cost(value if key == "steps" else None,
                                               value if key == "blocks" else None, windows)
                    fix = (f"lower steps (steps: L = {length} already reveals one position per step)"
                           if key == "steps" else f"lower blocks (at most L = {length}: one position each)")
                    refuse_over(per_row + fixed, f"models.{i}.schedules.{j}.{key}",
                                f"{key} {value} at length {length} (one sample's step plan)", fix)
        for length in entry.lengths or cfg.lengths:
            for batch in cfg.batches_at(length):
                n = batch or cfg.num_samples
                refuse_over(n * length * HELD_TOKEN_BYTES, "batch_sizes" if batch else "num_samples",
                            f"{n} samples x {length} tokens, all kept by one point,", "lower it")


def entry_train_config(cfg: SweepConfig, entry: ModelEntry) -> TrainConfig:
    block = entry.train.model_dump(exclude={"name"})
    block["out_dir"] = block["out_dir"] or str(Path(cfg.runs_dir) / cfg.name / entry.name)
    return TrainConfig.model_validate({**block, "name": f"{cfg.name}-{entry.name}"})
