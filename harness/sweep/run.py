"""``esolm sweep CONFIG``: train (or load) every model entry, then run each point and append
its row to the results store (:mod:`harness.results_store`).

Re-running the same command skips points whose key AND config hash are already in the
results file (:mod:`harness.sweep.identity`), so a crashed or interrupted sweep resumes
where it stopped.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import torch

from harness import locks
from harness.config import ConfigError, read_yaml, resolve_device
from harness.results_store import POINTS_FILE, check_output, read_points, repair_tail, write_atomic
from harness.sweep.claims import PointClaims
from harness.sweep.context import Context, git_commit
from harness.sweep.identity import point_hash
from harness.sweep.local import run_local
from harness.sweep.schema import (EvaluatorRef, SweepConfig, apply_overrides, check_checkpoint_entries, config_source,
                                  effective_config_text, entry_train_config, parse_sweep_config)
from harness.sweep.shard import parse_entries, parse_shard, select_points


def train_entries(cfg: SweepConfig, names: set[str], progress: bool) -> dict[str, str]:
    """Checkpoint path of every named entry, training (or resuming) train entries first."""
    from harness.train import train

    paths = {}
    for entry in cfg.models:
        if entry.name not in names or entry.init == "random":
            continue
        if entry.checkpoint is not None:
            from harness.checkpoints.own_format import resolve_checkpoint_path

            paths[entry.name] = str(resolve_checkpoint_path(entry.checkpoint))
            continue
        # wait=True: a shard finding another training this run waits for its checkpoint
        paths[entry.name] = str(train(entry_train_config(cfg, entry), resume=True, progress=progress, wait=True))
    return paths


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


@contextmanager
def results_lock(results_dir: Path, shard: tuple[int, int], only: set[str] | None):
    """One process per results folder and shard (and --entries subset): a second one would
    append the same rows.  Refused naming the holder's pid; released when the run ends."""
    suffix = "" if shard == (0, 1) else f"-shard-{shard[0]}-of-{shard[1]}"
    suffix += f"-entries-{'+'.join(sorted(only))}" if only else ""
    try:
        handle = locks.take(results_dir / f".lock{suffix}")
    except locks.Held as held:
        raise ConfigError(f"{results_dir} is being written by pid {held.holder or '?'} running the same "
                          "sweep (and shard); wait for it to finish (a re-run skips its finished points)") from None
    with handle:
        yield




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

    missing_paths(cfg, names, source)
    for i, entry in enumerate(cfg.models):
        if entry.name in names and entry.checkpoint is not None and foreign_source(entry.checkpoint):
            try:
                entry.checkpoint = str(imported_checkpoint(entry.checkpoint, entry.model,
                                                           Path(cfg.runs_dir) / cfg.name / entry.name,
                                                           entry.import_args))
            except (ValueError, FileNotFoundError) as err:
                raise ConfigError(f"{source}: field 'models.{i}.checkpoint': {str(err).splitlines()[0]}") from None


def run_sweep(config_path: str | Path, shard: str | None = None, results_root: str | Path = "results",
              report: bool = True, progress: bool = True, reports_root: str | Path | None = None,
              entries: str | list[str] | None = None, overrides: list[str] | tuple = ()) -> Path:
    """Run (or resume) a sweep; returns the results folder ``<results_root>/<name>``."""
    data = apply_overrides(read_yaml(config_path), overrides)  # read and merged once, kept below
    cfg = parse_sweep_config(data, config_source(config_path, overrides))
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
    points = select_points(cfg, (shard_i, shard_n), only)
    evaluator_entry = {cfg.evaluator.model_entry} if isinstance(cfg.evaluator, EvaluatorRef) else set()
    missing_paths(cfg, {p.entry for p in points} | evaluator_entry, str(config_path))  # before any device complaint
    device = resolve_device(cfg.device)
    check_models(cfg, str(config_path))
    import_entries(cfg, {p.entry for p in points} | evaluator_entry, str(config_path))
    check_checkpoint_entries(cfg, {p.entry for p in points} | evaluator_entry, str(config_path))
    results_dir = Path(results_root) / cfg.name
    if report and reports_root is not None:  # before any work: the report must not land in the results
        check_output(Path(reports_root) / cfg.name, "--reports", results=(results_dir,))
    with results_lock(results_dir, (shard_i, shard_n), only):
        return _run_checked(cfg, config_path, overrides, data, points, results_dir, device, report, reports_root,
                            progress)


def _run_checked(cfg: SweepConfig, config_path, overrides, data: dict, points, results_dir: Path, device,
                 report: bool, reports_root, progress: bool) -> Path:
    """The run itself, once the config is validated and the results folder locked."""
    path = results_dir / POINTS_FILE
    repair_tail(path)
    existing = read_points(path)
    finished = {(r["key"], r.get("config_hash")) for r in existing}
    entries = {m.name: m for m in cfg.models}
    hashes = {p.key: point_hash(cfg, entries[p.entry], p, device) for p in points}
    todo = [p for p in points if (p.key, hashes[p.key]) not in finished]
    skipped = len(points) - len(todo)

    ctx = Context(cfg, device, {}, commit=git_commit())
    if todo and ({"gen_ppl", "mauve"} & set(cfg.metrics)) and not isinstance(cfg.evaluator, EvaluatorRef):
        ctx.evaluator()  # a missing evaluator fails now, not after hours of training
    needed = {p.entry for p in todo}
    if todo and isinstance(cfg.evaluator, EvaluatorRef) and ({"gen_ppl", "mauve"} & set(cfg.metrics)):
        needed.add(cfg.evaluator.model_entry)
    on_ray = cfg.backend == "ray" and bool(todo)
    if not on_ray:  # Ray trains on its workers
        ctx.checkpoints = train_entries(cfg, needed, progress)
    # Written once the entries are trained or loaded (Ray: before its workers start): a config that
    # failed never replaces the one that ran.
    write_atomic(results_dir / "config.yaml", effective_config_text(config_path, overrides, data))
    for row in existing:  # reuse test perplexities of finished points (same entry, length, options)
        m = row.get("metrics", {})
        if "test_ppl_key" in m:
            ctx.test_ppl_cache[m["test_ppl_key"]] = {k: v for k, v in m.items() if k.startswith("test_ppl")}

    if skipped:
        print(f"sweep {cfg.name}: {skipped} of {len(points)} points already in {path}; running {len(todo)}",
              file=sys.stderr)
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc=f"sweep {cfg.name}", unit="pt", disable=not progress, dynamic_ncols=True)
    claims = PointClaims(results_dir, hashes)
    try:
        if on_ray:
            from harness.sweep.ray_runner import run_ray

            run_ray(results_dir / "config.yaml", cfg, todo, needed, results_dir, bar, claims, ctx.commit,
                    ctx.run_id)  # with any --set; one run_id for the rows of this call
        else:
            run_local(ctx, todo, results_dir, bar, claims)
    finally:
        bar.close()
        claims.release_all()
    if claims.left_to_others():
        print(f"sweep {cfg.name}: {claims.left_to_others()}", file=sys.stderr)
    if report:
        from harness.report.write import ReportExists, default_report_dir, write_report

        out_dir = Path(reports_root) / cfg.name if reports_root is not None else default_report_dir(results_dir)
        try:
            print(f"report: {write_report(results_dir, out_dir=out_dir)}", file=sys.stderr)
        except ReportExists as err:  # the results are kept; only the report is not written
            print(f"sweep {cfg.name}: report not written: {err}", file=sys.stderr)
    return results_dir
