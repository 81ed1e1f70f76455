"""Sweeps: a YAML grid of model entries x sampling schedules x lengths x seeds.

``esolm sweep CONFIG`` trains (or loads) every model entry, then runs each *point* — one
(model entry, schedule, length, seed) — and appends one row per finished point to
``results/<sweep>/points.jsonl``.  The modules, in the order a sweep uses them:

- :mod:`harness.sweep.schema`: the config schema (documented there), ``--set`` and its checks
  (with :mod:`harness.sweep.paths`: ``paths:`` and ``import_defaults:``);
- :mod:`harness.sweep.grid`: expansion into points;
- :mod:`harness.sweep.shard`: the points one process runs (``--shard``, ``--entries``);
- :mod:`harness.sweep.preflight`: what is checked before anything runs (paths, model
  classes, checkpoint entries) and the import of released files;
- :mod:`harness.sweep.identity`: config hashes (what makes a point "already done") and seeds;
- :mod:`harness.sweep.context`, :mod:`harness.sweep.point`, :mod:`harness.sweep.step_modes`:
  computing one point, whose row :mod:`harness.results_row` defines;
- :mod:`harness.sweep.run`: the driver (``run_sweep``), with the runners
  :mod:`harness.sweep.local` and :mod:`harness.sweep.ray_runner`;
- :mod:`harness.results_store` (outside this package, so readers never load the runner):
  points.jsonl and the samples files.

Names are imported from here lazily, so ``from harness.sweep import read_points`` does not
load torch or the runner.
"""

from __future__ import annotations

import importlib

_HOME = {
    "harness.sweep.schema": ["METRICS", "NAME_PATTERN", "TrainBlock", "EvaluatorRef",
                             "PerplexitySpec", "SpeedSpec", "MauveSpec", "ModelEntry", "SweepConfig", "deep_merge",
                             "check_schedule", "check_consistency", "load_sweep_config",
                             "apply_overrides", "effective_config_text", "merged_from_defaults", "parse_sweep_config",
                             "entry_train_config"],
    "harness.sweep.grid": ["resolve_value", "expand_schedules", "entry_grid", "Point", "expand_points", "group_label"],
    "harness.sweep.shard": ["parse_shard", "parse_entries", "select_points"],
    "harness.sweep.identity": ["IDENTITY_VERSION", "stable_hash", "point_seed", "entry_identity", "evaluator_identity",
                               "schedule_identity", "point_identity", "point_hash", "ppl_cache_key"],
    "harness.sweep.context": ["git_commit", "LoadedEntry", "Context"],
    "harness.sweep.point": ["compute_test_ppl", "reference_texts",
                            "sample_boundaries", "compute_point", "save_point"],
    "harness.sweep.step_modes": ["trial_modes", "fastest_mode"],
    "harness.sweep.preflight": ["preflight", "prepare_checkpoints", "missing_paths", "check_models", "import_entries",
                                "check_checkpoint_entries"],
    "harness.sweep.run": ["train_entries", "run_sweep"],
    "harness.results_store": ["POINTS_FILE", "SAMPLES_DIR", "safe_name", "points_path", "read_points", "latest_rows",
                              "repair_tail", "append_row", "write_atomic", "sample_path", "read_samples",
                              "write_samples"],
}
_MODULE = {name: module for module, names in _HOME.items() for name in names}
__all__ = sorted(_MODULE)


def __getattr__(name: str):
    if name not in _MODULE:
        raise AttributeError(f"module 'harness.sweep' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE[name]), name)
