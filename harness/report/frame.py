"""The report's data: one row per point from the results store, metrics as columns, seeds
averaged, and the Pareto frontier."""

from __future__ import annotations

import math
from pathlib import Path

from harness.metrics.mauve import recorded_degenerate
from harness.models import LanguageModel, registered_classes
from harness.results_store import latest_rows, read_points

# Names and colours come from the model classes (their facts); "custom" is a plug-in model's
# family (a report never imports a plug-in named in a results file).
FAMILY_COLORS = {name: cls.color for name, cls in registered_classes().items()} | {"custom": LanguageModel.color}
FAMILY_NAMES = {name: cls.display_name or name for name, cls in registered_classes().items()} | {"custom": "custom"}
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]
SHADES = [0.0, -0.45, 0.45, -0.7, 0.7]  # a family's further entries: darker (-) or lighter (+)
FAMILY_ORDER = list(FAMILY_COLORS)


def load_frame(results_dir: str | Path):
    """One row per point (newest line per key), metrics flattened into columns."""
    import pandas as pd

    every = read_points(results_dir, strict=True)
    sweeps = sorted({str(r.get("sweep")) for r in every})
    if len(sweeps) > 1:  # rows are merged by key: another sweep's row would silently replace this one's
        raise ValueError(f"{results_dir}: rows of sweeps {sweeps} in one results file; every sweep writes its own "
                         "folder, so report each folder separately")
    rows = list(latest_rows(every).values())
    if not rows:
        raise ValueError(f"{results_dir}: the results file has no finished points yet; run the sweep first")
    flat = []
    for row in rows:
        item = {k: v for k, v in row.items() if k != "metrics"}
        item.update(row.get("metrics", {}))
        item["mauve_degenerate"] = recorded_degenerate(row.get("metrics", {}))
        flat.append(item)
    df = pd.DataFrame(flat)
    for col in ("gen_ppl", "gen_ppl_mean", "entropy", "test_ppl", "test_ppl_se", "mauve", "seconds_per_sample", "tokens_per_second",
                "nfe_per_sample", "nfe", "tokens_computed_per_sample", "degenerate", "alpha_0", "alpha_0_train",
                "batch_size", "weight_bytes", "matmul_parameters", "key_reads_per_sample", "kv_bytes_per_key",
                "attention_pairs_per_sample", "attention_flops_per_pair", "bos_first", "eos_last", "eos_inside_per_sample"):
        if col not in df:
            df[col] = float("nan")
        df[col] = pd.to_numeric(df[col], errors="coerce")
    options = df["model_options"] if "model_options" in df else [None] * len(df)
    fields = df["schedule_fields"] if "schedule_fields" in df else [None] * len(df)
    df["block_size"] = [o.get("block_size") if isinstance(o, dict) else None for o in options]
    df["first_hitting"] = [bool(f.get("first_hitting")) if isinstance(f, dict) else False for f in fields]
    if "device" not in df:
        df["device"] = ""
    for col in ("run_id", "batch_grid"):  # rows from before these fields
        if col not in df:
            df[col] = None
    df["seconds_min_per_sample"], df["seconds_max_per_sample"] = zip(*[
        repeat_spread(r) for r in df.to_dict("records")]) if len(df) else ([], [])
    return df


def repeat_spread(row: dict) -> tuple[float, float]:
    """Fastest and slowest timed repeat of a row, per sample (the median is seconds_per_sample);
    NaN for rows without their repeat timings."""
    times, median, per_sample = row.get("seconds_all"), row.get("seconds_per_batch"), row.get("seconds_per_sample")
    if not (isinstance(times, list) and times and finite(median) and median > 0 and finite(per_sample)):
        return float("nan"), float("nan")
    scale = per_sample / median
    return min(times) * scale, max(times) * scale


def aggregate(df):
    """Mean over seeds of each (model entry, schedule, length), with the fastest and slowest
    timed repeat over all of them."""
    keys = ["model_entry", "family", "schedule", "length", "batch_size"]
    numeric = [c for c in ("gen_ppl", "gen_ppl_mean", "entropy", "degenerate", "mauve", "test_ppl", "test_ppl_se", "nfe",
                           "nfe_per_sample", "tokens_computed_per_sample", "seconds_per_sample", "tokens_per_second",
                           "alpha_0", "alpha_0_train", "floor_seconds_per_sample", "bos_first", "eos_last",
                           "eos_inside_per_sample") if c in df]
    agg = df.groupby(keys, sort=False, dropna=False)[numeric].mean().reset_index()
    agg["seeds"] = df.groupby(keys, sort=False, dropna=False)["seed"].nunique().values
    if "mauve_degenerate" in df:  # a seed's degenerate MAUVE makes the mean degenerate too
        agg["mauve_degenerate"] = df.groupby(keys, sort=False, dropna=False)["mauve_degenerate"].agg(
            lambda v: next((x for x in v if isinstance(x, str)), None)).values
    busy = df["machine_busy"].map(lambda v: v is True) if "machine_busy" in df else None
    agg["machine_busy"] = (busy.groupby([df[k] for k in keys], sort=False, dropna=False).any().values
                           if busy is not None else False)  # a seed timed on a shared machine flags the point
    for col, how in (("seconds_min_per_sample", "min"), ("seconds_max_per_sample", "max")):  # over seeds and repeats
        agg[col] = df.groupby(keys, sort=False, dropna=False)[col].agg(how).values if col in df else float("nan")
    for col in ("device", "device_name", "dtype", "step_mode", "run_id", "batch_grid", "block_size", "first_hitting"):
        if col in df:
            agg[col] = df.groupby(keys, sort=False, dropna=False)[col].first().values
    if "floor_seconds_per_sample" not in agg:
        agg["floor_seconds_per_sample"] = float("nan")
    agg["x_floor"] = agg["seconds_per_sample"] / agg["floor_seconds_per_sample"]
    steps = df.groupby(keys, sort=False, dropna=False)["schedule_fields"].first().values
    agg["steps"] = [s.get("steps") if isinstance(s, dict) else None for s in steps]
    if "schedule_group" in df:
        groups = df.groupby(keys, sort=False, dropna=False)["schedule_group"].first().values
        agg["group"] = [g if isinstance(g, str) and g else s for g, s in zip(groups, agg["schedule"])]
    else:
        agg["group"] = agg["schedule"]
    order = {f: i for i, f in enumerate(FAMILY_ORDER)}
    entries = list(dict.fromkeys(df["model_entry"]))
    agg["_f"] = agg["family"].map(lambda f: order.get(f, 99))
    agg["_e"] = agg["model_entry"].map(entries.index)
    agg["_o"] = range(len(agg))
    return agg.sort_values(["length", "_f", "_e", "_o"]).drop(columns=["_f", "_e", "_o"]).reset_index(drop=True)


def within_spread(a, b) -> bool:
    """Whether two points' timed repeats overlap, so their speed order may flip on another run."""
    lo_a, hi_a, lo_b, hi_b = (a["seconds_min_per_sample"], a["seconds_max_per_sample"], b["seconds_min_per_sample"],
                              b["seconds_max_per_sample"])
    return all(finite(v) for v in (lo_a, hi_a, lo_b, hi_b)) and lo_a <= hi_b and lo_b <= hi_a


def pareto_front(xs, ys) -> list[int]:
    """Indices of points that no other point beats on both x and y (lower is better), by x."""
    pts = sorted((x, y, i) for i, (x, y) in enumerate(zip(xs, ys)) if finite(x) and finite(y))
    front, best = [], math.inf
    for x, y, i in pts:
        if y < best:
            front.append(i)
            best = y
    return front


def finite(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
