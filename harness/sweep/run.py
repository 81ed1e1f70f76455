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
from harness.sweep.preflight import prepare_checkpoints, preflight
from harness.sweep.schema import (EvaluatorRef, SweepConfig, apply_overrides, config_source, effective_config_text,
                                  entry_train_config, parse_sweep_config)
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
    names = {p.entry for p in points} | evaluator_entry
    preflight(cfg, names, str(config_path))  # the missing paths come before any complaint about the device
    device = resolve_device(cfg.device)
    prepare_checkpoints(cfg, names, str(config_path))
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
