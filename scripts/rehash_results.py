"""Rewrite the config hashes of results folders to the current identity rule.

    python scripts/rehash_results.py                      # every results/*/ folder with a config.yaml
    python scripts/rehash_results.py results/smoke ...    # these folders

A row's ``config_hash`` (and its test perplexity's ``test_ppl_key``) is rewritten only once
it is verified: it must be the hash the version-1 rule (frozen below, as it was) gives the
point as the row ran it, worked out from its folder's config.yaml.  How it ran is read from
the row where the config may mean something else now: the diffusion split it drew (rows from
before that field ran 'fixed') and the model options whose default changed (rows from before
them ran the legacy values), so the current config does not resume a row that ran something
else.  Rows already under the current rule are left as they are, so re-running is safe; rows
that match neither are reported and left unchanged (exit 1 unless --allow-unverified).
Nothing but those hashes changes: each rewritten file is compared with the old one, row by
row and field by field, before it replaces it.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from harness.config import DataSpec
from harness.models import resolve_model_class
from harness.results_store import POINTS_FILE, write_atomic
from harness.sweep.grid import Point, expand_points
from harness.sweep.identity import IDENTITY_VERSION, point_hash, ppl_cache_key, reads_split, stable_hash
from harness.sweep.schema import EvaluatorRef, ModelEntry, SweepConfig, load_sweep_config

HASH_FIELDS = ("config_hash", "metrics.test_ppl_key")  # the only fields this script changes


# --- the version-1 rule, frozen --------------------------------------------------------------
# Every field of every section, with exceptions so that results made before a field existed kept
# their hashes.  ``options``: the legacy-tracked model options the point's model was built with.
# It dumps the current schemas whole: rehash a folder before any of its sections gains a field.
V1_DATA_LEFT_OUT = ("hf_dataset", "text_field", "protocol", "valid_docs", "framing")  # at their defaults


def v1_entry_identity(cfg: SweepConfig, entry: ModelEntry, options: dict) -> dict:
    if entry.train is not None:
        recipe = entry.train.model_dump(exclude={"name", "out_dir"})
        for key in V1_DATA_LEFT_OUT:
            if key in recipe["data"] and recipe["data"][key] == DataSpec.model_fields[key].default:
                del recipe["data"][key]
        if not recipe["train"]["compile"]:
            del recipe["train"]["compile"]
        cls = resolve_model_class(entry.train.model)
        if entry.init == "trained" and options != cls.legacy_options:
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


def v1_schedule(fields: dict, family: str) -> dict:
    from harness.schedules import SamplingSchedule

    schedule = SamplingSchedule(**fields)
    out = schedule.model_dump(exclude_defaults=True)
    out.pop("split", None)
    if reads_split(family) and schedule.diffusion_split() != "fixed":
        out["split"] = schedule.diffusion_split()
    return out


def v1_point_hash(cfg: SweepConfig, entry: ModelEntry, point: Point, device: torch.device, options: dict) -> str:
    metrics = sorted(cfg.metrics)
    spec = {
        "entry": v1_entry_identity(cfg, entry, options), "length": point.length, "seed": point.seed,
        "schedule": v1_schedule(point.schedule, entry.family),
        "num_samples": cfg.num_samples, "batch_size": cfg.batch_size, "metrics": metrics,
        "device": device.type, "precision": cfg.precision,
    }
    if point.batch_size is not None:
        spec["point_batch_size"] = point.batch_size
    if cfg.max_memory is not None:
        spec["max_memory"] = cfg.max_memory
    if cfg.step_mode != "auto":
        spec["step_mode"] = cfg.step_mode
    if {"gen_ppl", "mauve"} & set(metrics):
        if isinstance(cfg.evaluator, EvaluatorRef):
            ev = next(m for m in cfg.models if m.name == cfg.evaluator.model_entry)
            spec["evaluator"] = {"model_entry": ev.name, **v1_entry_identity(cfg, ev, built_options(ev, None))}
        else:
            spec["evaluator"] = cfg.evaluator
    for name in ("test_ppl", "speed", "mauve"):
        if name in metrics:
            spec[name] = getattr(cfg, name).model_dump()
    return stable_hash(spec)


def v1_ppl_cache_key(cfg: SweepConfig, entry: ModelEntry, length: int, alpha_0, device, options: dict) -> str:
    return stable_hash({"entry": v1_entry_identity(cfg, entry, options), "length": length, "alpha_0": alpha_0,
                        "spec": cfg.test_ppl.model_dump(), "device": device.type, "precision": cfg.precision})


# --- the point as a row ran it ---------------------------------------------------------------
def built_options(entry: ModelEntry, row: dict | None) -> dict:
    """The legacy-tracked options the entry's model was built with: the row's (a row from
    before an option existed ran its legacy value), or without a row what the recipe builds."""
    if entry.train is None:
        return {}
    cls = resolve_model_class(entry.train.model)
    if row is None:
        return cls.recipe_options(entry.train.model_args)
    saved = cls.saved_options(row.get("model_options") or {})
    return {k: saved[k] for k in cls.legacy_options}


def as_run(cfg: SweepConfig, points: dict[str, Point], row: dict):
    """(entry, pinned, point, options, device) of the row's point as it ran, or a reason it has
    none; ``pinned`` is the entry with those options written into its recipe."""
    point = points.get(row["key"])
    entry = next((m for m in cfg.models if m.name == row.get("model_entry")), None)
    if point is None or entry is None or point.entry != entry.name:
        return f"key {row['key']!r} is not a point of config.yaml"
    if reads_split(entry.family):  # the split it drew; 'fixed' before the field existed
        point = replace(point, schedule={**point.schedule, "split": row.get("diffusion_split") or "fixed"})
    options, pinned = built_options(entry, row), entry
    if options:  # pinned in the recipe, the current rule hashes them as built
        train = entry.train.model_copy(update={"model_args": {**entry.train.model_args, **options}})
        pinned = entry.model_copy(update={"train": train})
    return entry, pinned, point, options, torch.device(row["device"])


def hashes(cfg: SweepConfig, run, row: dict, rule: int) -> dict:
    """The row's hash fields under version 1 or the current rule."""
    entry, pinned, point, options, device = run
    alpha_0, ppl = row.get("alpha_0"), "test_ppl_key" in row["metrics"]
    if rule == 1:
        out = {"config_hash": v1_point_hash(cfg, entry, point, device, options)}
        key = ppl and v1_ppl_cache_key(cfg, entry, point.length, alpha_0, device, options)
    else:
        out = {"config_hash": point_hash(cfg, pinned, point, device)}
        key = ppl and ppl_cache_key(cfg, pinned, point.length, alpha_0, device)
    return out | ({"metrics.test_ppl_key": key} if ppl else {})


def stored(row: dict) -> dict:
    return {"config_hash": row["config_hash"], **({"metrics.test_ppl_key": row["metrics"]["test_ppl_key"]}
                                                  if "test_ppl_key" in row["metrics"] else {})}


def rewrite_line(line: str, old: dict, new: dict) -> str:
    """The line with each old hash replaced in place (the rest byte for byte)."""
    for field, value in old.items():
        name = field.rsplit(".", 1)[-1]
        before, after = f'"{name}": "{value}"', f'"{name}": "{new[field]}"'
        if line.count(before) != 1:
            raise ValueError(f"{before} is not written once in the row; rewrite it by hand")
        line = line.replace(before, after)
    return line


def without_hashes(row: dict) -> dict:
    row = {**row, "metrics": dict(row["metrics"])}
    row.pop("config_hash", None)
    row["metrics"].pop("test_ppl_key", None)
    return row


def check_only_hashes_differ(old_text: str, new_text: str) -> None:
    """Raise unless the two points files hold the same rows, differing in HASH_FIELDS only."""
    old, new = old_text.split("\n"), new_text.split("\n")
    if len(old) != len(new):
        raise ValueError(f"the rewrite has {len(new)} lines, the file {len(old)}")
    for i, (a, b) in enumerate(zip(old, new)):
        if a != b and without_hashes(json.loads(a)) != without_hashes(json.loads(b)):
            raise ValueError(f"line {i + 1}: the rewrite changes more than {', '.join(HASH_FIELDS)}")


def rehash_folder(folder: Path, write: bool = True) -> dict:
    """Rewrite one folder's verified rows; returns the counts and the unverified rows."""
    cfg = load_sweep_config(folder / "config.yaml")
    points = {p.key: p for p in expand_points(cfg)}
    path = folder / POINTS_FILE
    text = path.read_text()
    lines = text.split("\n")
    out = {"rows": 0, "verified": 0, "rewritten": 0, "current": 0, "unverified": []}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        row = json.loads(line)
        out["rows"] += 1
        run = as_run(cfg, points, row)
        if isinstance(run, str):
            out["unverified"].append((row["key"], run))
            continue
        have, now = stored(row), hashes(cfg, run, row, IDENTITY_VERSION)
        if have == now:
            out["current"] += 1
        elif have == hashes(cfg, run, row, 1):
            out["verified"] += 1
            lines[i] = rewrite_line(line, have, now)
        else:
            entry = run[0]
            why = "its hash is neither the version-1 rule's nor the current rule's for the point as it ran"
            if entry.checkpoint is not None and not Path(entry.checkpoint).exists():
                why += f" (checkpoint {entry.checkpoint} is not here: its size and mtime are hashed)"
            out["unverified"].append((row["key"], why))
    new_text = "\n".join(lines)
    check_only_hashes_differ(text, new_text)
    if write and new_text != text:
        write_atomic(path, new_text)
        out["rewritten"] = out["verified"]
    return out


def folders_of(args: list[str]) -> list[Path]:
    if args:
        return [Path(a) for a in args]
    return sorted(p for p in Path("results").iterdir() if (p / "config.yaml").is_file() and (p / POINTS_FILE).is_file())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="*", help="results folders (default: every results/*/ with a config.yaml)")
    p.add_argument("--dry-run", action="store_true", help="verify and count, write nothing")
    p.add_argument("--allow-unverified", action="store_true", help="exit 0 even if some rows are left unverified")
    args = p.parse_args(argv)
    unverified = 0
    for folder in folders_of(args.folders):
        if not (folder / "config.yaml").is_file() or not (folder / POINTS_FILE).is_file():
            p.error(f"{folder}: needs a config.yaml and a {POINTS_FILE}; give a sweep's results folder")
        s = rehash_folder(folder, write=not args.dry_run)
        print(f"{folder}: {s['rows']} rows: {s['verified']} verified, {s['rewritten']} rewritten, "
              f"{s['current']} already current, {len(s['unverified'])} unverified")
        for key, why in s["unverified"]:
            print(f"  unverified {folder} {key}: {why}")
        unverified += len(s["unverified"])
    return 1 if unverified and not args.allow_unverified else 0


if __name__ == "__main__":
    sys.exit(main())
