"""What a sweep checks before it runs anything, in one place: every path it reads exists
(each missing one listed), every model class loads and takes its arguments, and every
checkpoint entry, released files imported first, holds the model and lengths the config
asks of it.  :func:`preflight` writes nothing; :func:`prepare_checkpoints` imports."""

from __future__ import annotations

import sys
from pathlib import Path

from harness.config import ConfigError
from harness.schedules import SamplingSchedule
from harness.sweep.grid import entry_grid, resolve_value
from harness.sweep.schema import EvaluatorRef, SweepConfig, check_schedule


def preflight(cfg: SweepConfig, names: set[str], source: str) -> None:
    """The checks that need nothing written or loaded: paths, then model classes."""
    missing_paths(cfg, names, source)
    check_models(cfg, source)


def prepare_checkpoints(cfg: SweepConfig, names: set[str], source: str) -> None:
    """Import the released files the named entries use, then check every checkpoint entry."""
    import_entries(cfg, names, source)
    check_checkpoint_entries(cfg, names, source)


def check_models(cfg: SweepConfig, source: str) -> None:
    """Every entry's model class loads and takes its model_args, before any entry is trained
    (a bad models.1 used to fail after models.0 had trained)."""
    import inspect

    from harness.models import resolve_model_class

    for i, entry in enumerate(cfg.models):
        model, where = (entry.train.model, "train.model") if entry.train is not None else (entry.model, "model")
        if model is None:
            continue
        try:
            cls = resolve_model_class(model)
        except ValueError as err:
            raise ConfigError(f"{source}: field 'models.{i}.{where}': {err}") from None
        if entry.train is not None:
            try:
                inspect.signature(cls).bind(None, None, **entry.train.model_args)
            except TypeError as err:
                raise ConfigError(f"{source}: field 'models.{i}.train.model_args': {err}; use the arguments of "
                                  f"{cls.__name__}") from None


def missing_paths(cfg: SweepConfig, names: set[str], source: str) -> None:
    """Pre-flight: every checkpoint and evaluator path the run needs exists, else one stderr
    line per missing path and a ConfigError before anything is imported, trained or written."""
    from harness.checkpoints.own_format import foreign_source

    checkpoints, texts = [], []  # reported in this order: every checkpoint, then the texts
    for i, e in enumerate(cfg.models):
        if e.name not in names or e.checkpoint is None:
            continue
        checkpoints.append((f"models.{i}.checkpoint", foreign_source(e.checkpoint) or e.checkpoint))
        args = e.import_args or {}  # the text an imported checkpoint's test_ppl reads
        corpus, dataset = args.get("corpus"), args.get("data") or {}
        texts += [(f"models.{i}.import_args.corpus", p) for p in corpus or () if isinstance(corpus, list)]
        if isinstance(dataset, dict) and dataset.get("hf_dataset"):
            texts.append((f"models.{i}.import_args.data.hf_dataset", dataset["hf_dataset"]))
    wanted = checkpoints + texts
    scored = {"gen_ppl", "mauve"} & set(cfg.metrics)
    if scored and isinstance(cfg.evaluator, str) and cfg.evaluator.partition(":")[0].lower() in ("hf", "ar"):
        wanted.append(("evaluator", cfg.evaluator.partition(":")[2].strip()))
    readers: dict[str, list[str]] = {}  # each missing path once, with every field that reads it
    for field, path in wanted:
        if not Path(path).expanduser().exists():
            readers.setdefault(path, []).append(field)
    missing = [f"{source}: field '{fields[0]}'{f' (and {len(fields) - 1} more)' if len(fields) > 1 else ''}: "
               f"{'checkpoint ' if fields[0].endswith('checkpoint') else ''}{path!r} not found"
               for path, fields in readers.items()]
    if len(missing) > 1:
        for line in missing:
            print(f"esolm: missing: {line}", file=sys.stderr)
    if missing:
        more = f" (+{len(missing) - 1} more, listed above)" if len(missing) > 1 else ""
        named = f" (its paths: {', '.join(f'paths.{k}' for k in cfg.paths)})" if cfg.paths else ""
        raise ConfigError(f"{missing[0]}{more}; fix the path(s) in the config or with --set{named}; nothing was run")


def import_entries(cfg: SweepConfig, names: set[str], source: str) -> None:
    """Checkpoint entries naming a released file (``hf:/folder`` or a ``.ckpt``) are imported
    once into <runs_dir>/<name>/<entry>/ (harness.checkpoints.released) and read like any checkpoint after."""
    from harness.checkpoints.own_format import foreign_source
    from harness.checkpoints.released import imported_checkpoint

    for i, entry in enumerate(cfg.models):
        if entry.name in names and entry.checkpoint is not None and foreign_source(entry.checkpoint):
            try:
                entry.checkpoint = str(imported_checkpoint(entry.checkpoint, entry.model,
                                                           Path(cfg.runs_dir) / cfg.name / entry.name,
                                                           entry.import_args))
            except (ValueError, FileNotFoundError) as err:
                raise ConfigError(f"{source}: field 'models.{i}.checkpoint': {str(err).splitlines()[0]}") from None


def check_checkpoint_entries(cfg: SweepConfig, names: set[str], source: str) -> None:
    """Checkpoint entries exist and hold the sweep's lengths: checked before anything is
    written or trained (train entries are checked when the config is parsed)."""
    from harness.checkpoints.own_format import check_model, read_state

    for i, entry in enumerate(cfg.models):
        if entry.checkpoint is None or entry.name not in names:
            continue
        where = f"{source}: field 'models.{i}.checkpoint'"
        try:
            state = read_state(entry.checkpoint, mmap=True)
            check_model(state, entry.checkpoint, entry.model)
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(f"{where}: {str(err).splitlines()[0]}") from None
        held = state["model_name"]
        if isinstance(cfg.evaluator, EvaluatorRef) and cfg.evaluator.model_entry == entry.name and held != "ar":
            raise ConfigError(f"{source}: field 'evaluator.model_entry': entry {entry.name!r} (models.{i}) holds a "
                              f"{held!r} checkpoint ({entry.checkpoint}), not 'ar'; name an AR entry as the evaluator")
        for length, _, fields in entry_grid(entry, cfg.lengths) if entry.model is None else ():  # for what it holds
            try:
                check_schedule(held, SamplingSchedule(**{k: resolve_value(v, length) for k, v in fields.items()}))
            except ValueError as err:
                raise ConfigError(f"{source}: field 'models.{i}.schedules': entry {entry.name!r} holds a {held!r} "
                                  f"checkpoint ({entry.checkpoint}): {err}") from None
        max_len = state["backbone"]["max_len"]
        too_long = [length for length in entry.lengths or cfg.lengths if length > max_len]
        if too_long:
            raise ConfigError(f"{where}: length(s) {too_long} exceed the checkpoint's max_len {max_len}; "
                              f"lower the sweep's lengths (or this entry's lengths:) to <= {max_len}")
