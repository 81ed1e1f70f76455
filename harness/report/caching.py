"""The report's "Exact vs approximate caching" section: generative perplexity against time
and NFE with exact and approximate caches marked apart, and each point's cache error
(harness.unmasking.probe; docs/models.md §2.4) beside the speed-up its cache bought."""

from __future__ import annotations

import textwrap
from pathlib import Path

from harness.report.frame import FAMILY_NAMES, finite
from harness.report.plots import entry_styles, gen_ppl_axes, place_labels, pyplot, short_label
from harness.report.tables import fmt, md_table

APPROXIMATE, EXACT, NONE = "approximate cache", "exact KV cache", "no KV cache"
MARK = {APPROXIMATE: "^", EXACT: "o", NONE: "s"}
# schedule fields that only switch the cache (or its probe) on: a point's uncached twin lacks them
CACHE_FIELDS = ("cache", "refresh", "measure_cache_error")
ERROR_COLUMNS = ("cache_error_max_logit", "cache_error_kl", "cache_error_flip", "cache_error_draws")


def cache_kind(fields, key_reads) -> str:
    """Approximate: MDLM's prefix or dual cache, unless rebuilt at every step (refresh 1);
    exact: a sampler that reads a KV cache otherwise (AR, BD3-LM, Eso-LM); else none."""
    fields = fields if isinstance(fields, dict) else {}
    if fields.get("cache") and fields.get("refresh") != 1:
        return APPROXIMATE
    return EXACT if finite(key_reads) and key_reads > 0 else NONE


def caching_points(df):
    """One row per (entry, schedule, length): means over seeds, the largest max |Δ logit|, the
    cache kind, and the speed-up and work saved against the point's uncached twin (the same
    entry and schedule without the cache fields), where the sweep ran one."""
    import pandas as pd

    if "cache_error_method" not in df or not df["cache_error_method"].map(lambda v: isinstance(v, str)).any():
        return None
    df = df.copy()
    for col in ERROR_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce") if col in df else float("nan")
    df["twin"] = [repr(sorted((k, v) for k, v in (f or {}).items() if k not in CACHE_FIELDS))
                  for f in df["schedule_fields"]]
    df["cached"] = [bool((f or {}).get("cache")) for f in df["schedule_fields"]]
    keys = ["model_entry", "family", "schedule", "length"]
    mean_cols = ["gen_ppl", "mauve", "entropy", "nfe_per_sample", "tokens_computed_per_sample", "seconds_per_sample",
                 "key_reads_per_sample", "cache_error_kl", "cache_error_flip", "cache_error_draws"]
    agg = df.groupby(keys, sort=False, dropna=False)[mean_cols].mean().reset_index()
    grouped = df.groupby(keys, sort=False, dropna=False)
    agg["cache_error_max_logit"] = grouped["cache_error_max_logit"].max().values
    for col in ("schedule_fields", "twin", "cached"):
        agg[col] = grouped[col].first().values
    agg["kind"] = [cache_kind(f, k) for f, k in zip(agg["schedule_fields"], agg["key_reads_per_sample"])]
    plain = {(r["model_entry"], r["length"], r["twin"]): r for _, r in agg.iterrows() if not r["cached"]}
    speedup, saved = [], []
    for _, r in agg.iterrows():
        twin = plain.get((r["model_entry"], r["length"], r["twin"])) if r["cached"] else None
        speedup.append(twin["seconds_per_sample"] / r["seconds_per_sample"] if twin is not None else float("nan"))
        saved.append(twin["tokens_computed_per_sample"] / r["tokens_computed_per_sample"]
                     if twin is not None else float("nan"))
    agg["speedup"], agg["work_ratio"] = speedup, saved
    agg["number"] = range(1, len(agg) + 1)
    return agg


def plot_caching(agg, path: Path) -> bool:
    """gen PPL against seconds and against NFE per sample, one row of panels per length;
    marker: the cache kind (hollow triangles approximate), colour: the model entry."""
    data = agg[agg["gen_ppl"].map(finite)]
    if data.empty:
        return False
    plt = pyplot()
    from matplotlib.lines import Line2D

    lengths = sorted(data["length"].unique())
    styles = entry_styles(agg)
    fig, axes = plt.subplots(len(lengths), 2, figsize=(17, 6.5 * len(lengths)), squeeze=False, dpi=130)
    pending = []
    for row, length in zip(axes, lengths):
        d = data[data["length"] == length]
        for ax, x, xlabel in ((row[0], "seconds_per_sample", "seconds per sample (median, log scale)"),
                              (row[1], "nfe_per_sample", "NFE per sample (log scale)")):
            dx = d[d[x].map(finite) & (d[x] > 0)]
            labels = []
            for _, r in dx.iterrows():
                color = styles[r["model_entry"]][0]
                hollow = r["kind"] == APPROXIMATE
                ax.scatter(r[x], r["gen_ppl"], s=80, marker=MARK[r["kind"]], facecolor="none" if hollow else color,
                           edgecolor=color, linewidth=1.8, zorder=3)
                labels.append(((r[x], r["gen_ppl"]), str(int(r["number"])), color))
            gen_ppl_axes(ax, xlabel, f"gen PPL vs {'time' if x.startswith('seconds') else 'NFE'}, L = {length}",
                         dx[x], dx["gen_ppl"])
            pending.append((ax, labels))
    handles = [Line2D([], [], color="0.3", marker=MARK[k], linestyle="", markersize=9,
                      markerfacecolor="none" if k == APPROXIMATE else "0.3", label=k) for k in MARK]
    handles += [Line2D([], [], color=styles[e][0], marker="o", linestyle="", markersize=8,
                       label=f"{e} ({FAMILY_NAMES.get(f, f)})")
                for e, f in dict.fromkeys(zip(data["model_entry"], data["family"]))]
    fig.legend(handles=handles, fontsize=9, loc="upper right", framealpha=0.9)
    caption = ("labels: the point's number in the caching table; hollow triangles: approximate caches (MDLM's prefix "
               "and dual caches); filled circles: exact KV caches (AR, BD3-LM, Eso-LM); filled squares: no KV cache")
    fig.text(0.01, 0.01, textwrap.fill(caption, 140), fontsize=8, color="0.3")
    fig.tight_layout(rect=(0, 0.04, 0.84, 1))
    for ax, labels in pending:
        place_labels(fig, ax, labels)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return True


def caching_table(agg) -> str:
    headers = ["#", "model entry", "schedule", "cache", "gen PPL", "MAUVE", "entropy", "NFE/sample",
               "tokens computed/sample", "s/sample", "speed-up (time)", "work saved (tokens)", "max |Δ logit|",
               "KL(uncached ‖ cached)", "tokens changed", "draws probed"]
    rows = []
    for _, r in agg.iterrows():
        rows.append([int(r["number"]), r["model_entry"], short_label(r["schedule"]) or "default", r["kind"],
                     fmt(float(r["gen_ppl"]), 2), fmt(float(r["mauve"]), 3), fmt(float(r["entropy"]), 3),
                     fmt(float(r["nfe_per_sample"]), 1), fmt(float(r["tokens_computed_per_sample"]), 0),
                     fmt(float(r["seconds_per_sample"]), 4),
                     f"{r['speedup']:.2f}x" if finite(r["speedup"]) else "–",
                     f"{r['work_ratio']:.2f}x" if finite(r["work_ratio"]) else "–",
                     fmt(float(r["cache_error_max_logit"]), 3), fmt(float(r["cache_error_kl"]), 4),
                     fmt(float(r["cache_error_flip"]), 3),
                     fmt(int(r["cache_error_draws"])) if finite(r["cache_error_draws"]) else "–"])
    return md_table(headers, rows, ["r", "l", "l", "l"] + ["r"] * (len(headers) - 4))


def caching_section(df, out: Path) -> list[str]:
    """The section's markdown lines (none for a sweep that measured no cache error)."""
    agg = caching_points(df)
    if agg is None:
        (out / "caching.png").unlink(missing_ok=True)
        return []
    md = ["## Exact vs approximate caching", ""]
    if plot_caching(agg, out / "caching.png"):
        md += ["![gen PPL vs time and NFE, by cache kind](caching.png)", ""]
    else:
        (out / "caching.png").unlink(missing_ok=True)
    md += ["Cache error: each cached step re-run without its cache at the same state (MDLM's approximate caches), "
           "or the sampler run twice with the same seed, cached and uncached, draws compared in order (every other "
           "sampler); max |Δ logit| over the probed draws, the mean KL(uncached ‖ cached) of their distributions and "
           "the fraction of drawn tokens the same Gumbel noise would change (docs/models.md §2.4). An exact cache "
           "reads 0 to float tolerance. Speed-up and work saved: against the same entry and schedule without the "
           "cache, where the sweep ran it (– otherwise); the timings exclude the probe.", "",
           caching_table(agg), ""]
    return md
