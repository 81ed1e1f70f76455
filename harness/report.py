"""Reports: ``esolm report RESULTS_DIR`` -> ``reports/<sweep>/{*.png, report.md}``.

Rows come from ``points.jsonl`` (newest row per point key); seeds of the same (model entry,
schedule, length) are averaged.  Plots:

- ``pareto_time.png`` / ``pareto_nfe.png``: generative perplexity against seconds per
  sample / NFE per sample (log x), one colour per model family, one marker per model
  entry, each point labelled with its schedule and sample entropy (H, nats: collapse
  shows as low H with a flattering gen PPL); the Pareto frontier (no other point is both
  faster and better) is a dashed step line;
- ``alpha0.png``: Eso-LM test / generative perplexity against alpha_0 at evaluation, with
  AR and MDLM as horizontal reference lines;
- ``speed_vs_length.png`` (sweeps over several lengths): seconds per sample against L;
- ``speed_headline.png`` (CUDA sweeps): the paper's sampler settings, seconds per sample
  against L on one log-log panel.

On GPU rows that carry ``weight_bytes`` / ``matmul_parameters`` each point also gets a
floor (the time one could not beat on this GPU, PERF.md) and its measured / floor; with
Eso-LM (B) and MDLM / BD3-LM rows, a "Speed ratios" table (also ``speed_ratios.csv``)
next to the paper's figures.

``report.md`` embeds them, names the protocol (evaluator, estimator, device, dtype, batch
size, commit) and quotes a few samples.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path

FAMILY_COLORS = {"ar": "#333333", "mdlm": "#1f77b4", "bd3lm": "#2ca02c", "esolm-a": "#ff7f0e",
                 "esolm-b": "#d62728", "custom": "#9467bd"}
FAMILY_NAMES = {"ar": "AR", "mdlm": "MDLM", "bd3lm": "BD3-LM", "esolm-a": "Eso-LM (A)", "esolm-b": "Eso-LM (B)",
                "custom": "custom"}
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]
FAMILY_ORDER = list(FAMILY_COLORS)


# ======================================================================================
# loading
# ======================================================================================
def load_frame(results_dir: str | Path):
    """One row per point (newest line per key), metrics flattened into columns."""
    import pandas as pd

    from harness.sweep import latest_rows, read_points

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
        flat.append(item)
    df = pd.DataFrame(flat)
    for col in ("gen_ppl", "gen_ppl_mean", "entropy", "test_ppl", "mauve", "seconds_per_sample", "tokens_per_second",
                "nfe_per_sample", "nfe", "tokens_computed_per_sample", "degenerate", "alpha_0", "alpha_0_train",
                "batch_size", "weight_bytes", "matmul_parameters", "key_reads_per_sample", "kv_bytes_per_key",
                "bos_first", "eos_last", "eos_inside_per_sample"):
        if col not in df:
            df[col] = float("nan")
        df[col] = pd.to_numeric(df[col], errors="coerce")
    options = df["model_options"] if "model_options" in df else [None] * len(df)
    fields = df["schedule_fields"] if "schedule_fields" in df else [None] * len(df)
    df["block_size"] = [o.get("block_size") if isinstance(o, dict) else None for o in options]
    df["first_hitting"] = [bool(f.get("first_hitting")) if isinstance(f, dict) else False for f in fields]
    if "device" not in df:
        df["device"] = ""
    return df


def aggregate(df):
    """Mean over seeds of each (model entry, schedule, length)."""
    keys = ["model_entry", "family", "schedule", "length"]
    numeric = [c for c in ("gen_ppl", "gen_ppl_mean", "entropy", "degenerate", "mauve", "test_ppl", "nfe",
                           "nfe_per_sample", "tokens_computed_per_sample", "seconds_per_sample", "tokens_per_second",
                           "alpha_0", "alpha_0_train", "floor_seconds_per_sample", "bos_first", "eos_last",
                           "eos_inside_per_sample") if c in df]
    agg = df.groupby(keys, sort=False, dropna=False)[numeric].mean().reset_index()
    agg["seeds"] = df.groupby(keys, sort=False, dropna=False)["seed"].nunique().values
    for col in ("device", "block_size", "first_hitting"):
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


def pareto_front(xs, ys) -> list[int]:
    """Indices of points that no other point beats on both x and y (lower is better), by x."""
    pts = sorted((x, y, i) for i, (x, y) in enumerate(zip(xs, ys)) if _finite(x) and _finite(y))
    front, best = [], math.inf
    for x, y, i in pts:
        if y < best:
            front.append(i)
            best = y
    return front


def _finite(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


# ======================================================================================
# plots
# ======================================================================================
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style(agg):
    """Colour per family, marker per model entry (entries of one family get distinct markers)."""
    markers, per_family = {}, {}
    for entry, family in dict.fromkeys(zip(agg["model_entry"], agg["family"])):
        k = per_family.get(family, 0)
        markers[entry] = MARKERS[k % len(MARKERS)]
        per_family[family] = k + 1
    return markers


def _short(label: str) -> str:
    return "" if label == "default" else label.replace(",", " ")


def plot_pareto(agg, x: str, xlabel: str, title: str, path: Path) -> list[dict] | None:
    """gen PPL vs ``x`` per length; returns the frontier rows, or None when nothing to plot."""
    plt = _plt()
    from matplotlib.lines import Line2D

    data = agg[agg["gen_ppl"].map(_finite) & agg[x].map(_finite) & (agg[x] > 0)]
    if data.empty:
        return None
    lengths = sorted(data["length"].unique())
    markers = _style(agg)
    fig, axes = plt.subplots(1, len(lengths), figsize=(8.5 * len(lengths) + 3, 6.5), squeeze=False, dpi=130)
    frontier_rows, pending = [], []
    for ax, length in zip(axes[0], lengths):
        d = data[data["length"] == length].reset_index(drop=True)
        labels = []
        for _, r in d.iterrows():
            color = FAMILY_COLORS.get(r["family"])
            ax.scatter(r[x], r["gen_ppl"], s=70, marker=markers[r["model_entry"]], color=color,
                       edgecolor="white", linewidth=0.8, zorder=3)
            text = _short(r["schedule"]) or FAMILY_NAMES.get(r["family"], r["family"])
            if _finite(r.get("entropy")):
                text = f"{text}  H={r['entropy']:.2f}"
            labels.append(((r[x], r["gen_ppl"]), text, color))
        front = pareto_front(d[x].tolist(), d["gen_ppl"].tolist())
        segments = []
        if front:
            fx = [d.loc[i, x] for i in front] + [d[x].max() * 2.0]
            fy = [d.loc[i, "gen_ppl"] for i in front]
            fy.append(fy[-1])
            ax.step(fx, fy, where="post", color="0.45", linestyle="--", linewidth=1.2, zorder=2)
            frontier_rows += [d.loc[i].to_dict() for i in front]
            for k in range(len(fx) - 1):  # the step line's pieces, kept clear of labels
                segments += [((fx[k], fy[k]), (fx[k + 1], fy[k])), ((fx[k + 1], fy[k]), (fx[k + 1], fy[k + 1]))]
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_ticks(ax)
        ax.set_xlabel(xlabel, fontsize=11)
        ax.set_ylabel("generative perplexity (log scale, lower is better)", fontsize=11)
        ax.set_title(f"{title}, L = {length}", fontsize=12)
        ax.grid(True, which="both", alpha=0.25)
        _pad_log(ax, d[x], d["gen_ppl"])
        pending.append((ax, labels, segments))
    handles = [Line2D([], [], color=FAMILY_COLORS.get(fam), marker=markers[entry], linestyle="", markersize=8,
                      label=f"{entry} ({FAMILY_NAMES.get(fam, fam)})")
               for entry, fam in dict.fromkeys(zip(data["model_entry"], data["family"]))]
    handles.append(Line2D([], [], color="0.45", linestyle="--", label="Pareto frontier"))
    fig.legend(handles=handles, fontsize=9, loc="upper right", framealpha=0.9, title="model entry",
               title_fontsize=9)
    fig.text(0.01, 0.01, "point labels: schedule (T = steps, a0 = alpha_0 at evaluation) and H = mean unigram entropy "
             "of the samples in nats (low H = collapsed samples)", fontsize=8, color="0.3")
    fig.tight_layout(rect=(0, 0.03, 1 - 2.6 / fig.get_figwidth(), 1))
    for ax, labels, segments in pending:  # after the layout is final: placement works in pixels
        place_labels(fig, ax, labels, segments=segments)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return frontier_rows


# Label offsets tried in turn (points): right, left, above, below, then further out.
_OFFSETS = [(7, 3, "left"), (7, -11, "left"), (-7, 3, "right"), (-7, -11, "right"), (0, 9, "center"),
            (0, -18, "center"), (12, 14, "left"), (-12, 14, "right"), (12, -24, "left"), (-12, -24, "right"),
            (0, 22, "center"), (0, -30, "center"), (22, 26, "left"), (-22, 26, "right"), (22, -36, "left"),
            (-22, -36, "right"), (0, 36, "center"), (0, -44, "center")]


def place_labels(fig, ax, labels: list[tuple[tuple[float, float], str, str]], fontsize: int = 8,
                 segments=()) -> None:
    """Annotate points without overlapping other labels, markers or the given line segments (data
    coordinates; horizontal/vertical), greedily over candidate offsets; labels pushed away from
    their point get a thin leader line."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    occupied = []
    for (px, py), _, _ in labels:
        cx, cy = to_px((px, py))
        occupied.append((cx - 6, cy - 6, cx + 6, cy + 6))
    for a, b in segments:
        (ax_, ay), (bx, by) = to_px(a), to_px(b)
        occupied.append((min(ax_, bx) - 2, min(ay, by) - 2, max(ax_, bx) + 2, max(ay, by) + 2))
    axbox = ax.get_window_extent(renderer)

    def overlaps(b):
        return sum(1 for o in occupied if not (b[2] < o[0] or b[0] > o[2] or b[3] < o[1] or b[1] > o[3]))

    def relpos(dx, dy):
        """Where on the label box the leader line starts: the corner / edge facing the point."""
        return (0.0 if dx > 0 else 1.0 if dx < 0 else 0.5), (0.0 if dy > 0 else 1.0)

    def leader_crossings(start, b, rel):
        """Boxes crossed by the leader line from the point to the label's anchor."""
        end = (b[0] + rel[0] * (b[2] - b[0]), b[1] + rel[1] * (b[3] - b[1]))
        hits = set()
        for k in range(1, 10):
            px, py = start[0] + (end[0] - start[0]) * k / 10, start[1] + (end[1] - start[1]) * k / 10
            hits.update(i for i, o in enumerate(occupied) if o[0] <= px <= o[2] and o[1] <= py <= o[3]
                        and not (o[0] <= start[0] <= o[2] and o[1] <= start[1] <= o[3]))
        return len(hits)

    for xy, text, color in sorted(labels, key=lambda item: -item[0][1]):
        best = None
        for dx, dy, ha in _OFFSETS:
            ann = ax.annotate(text, xy, xytext=(dx, dy), textcoords="offset points", ha=ha, va="bottom",
                              fontsize=fontsize, color=color, zorder=4)
            bb = ann.get_window_extent(renderer)
            box = (bb.x0 - 1, bb.y0 - 1, bb.x1 + 1, bb.y1 + 1)
            outside = box[0] < axbox.x0 or box[2] > axbox.x1 or box[1] < axbox.y0 or box[3] > axbox.y1
            far = abs(dx) > 10 or abs(dy) > 20
            score = overlaps(box) + (10 if outside else 0) + (leader_crossings(to_px(xy), box, relpos(dx, dy))
                                                               if far else 0)
            if best is None or score < best[0]:
                if best is not None:
                    best[1].remove()
                best = (score, ann, box, (dx, dy))
            else:
                ann.remove()
            if score == 0:
                break
        _, ann, box, (dx, dy) = best
        if abs(dx) > 10 or abs(dy) > 20:
            ann.arrow_patch = None
            ann.remove()
            ann = ax.annotate(text, xy, xytext=(dx, dy), textcoords="offset points", ha=ann.get_ha(), va="bottom",
                              fontsize=fontsize, color=color, zorder=4,
                              arrowprops=dict(arrowstyle="-", color=color, lw=0.6, alpha=0.7, shrinkA=0, shrinkB=4,
                                              relpos=relpos(dx, dy)))
        occupied.append(box)


def _plain_ticks(ax, axes: str = "xy") -> None:
    """Plain numbers (not 6x10^2) on log axes, with labelled minor ticks when the range is small."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    fmt_tick = FuncFormatter(lambda v, _: f"{v:g}")
    for name in axes:
        axis = ax.xaxis if name == "x" else ax.yaxis
        axis.set_major_formatter(fmt_tick)
        axis.set_minor_locator(LogLocator(base=10, subs=(2, 3, 5)))
        axis.set_minor_formatter(fmt_tick)
    ax.tick_params(axis="both", which="minor", labelsize=8)


def _pad_log(ax, xs, ys):
    """Room on the right for labels and around the points on log axes."""
    x0, x1 = float(xs.min()), float(xs.max())
    y0, y1 = float(ys.min()), float(ys.max())
    ax.set_xlim(x0 / 1.6, x1 * 3.0)
    ax.set_ylim(y0 / 1.15, y1 * 1.25)


def plot_alpha0(agg, path: Path) -> bool:
    plt = _plt()

    eso = agg[agg["family"].isin(["esolm-a", "esolm-b"]) & agg["alpha_0"].map(_finite)]
    if eso.empty:
        return False
    lengths = sorted(eso["length"].unique())
    panels = [("test_ppl", "test perplexity (NELBO bound)"), ("gen_ppl", "generative perplexity")]
    panels = [(c, t) for c, t in panels if eso[c].map(_finite).any()]
    if not panels:
        return False
    markers = _style(agg)
    trained = {e: f" (trained a0={a:g})" for e, a in zip(eso["model_entry"], eso["alpha_0_train"]) if _finite(a)}
    fig, axes = plt.subplots(len(lengths), len(panels), figsize=(7.5 * len(panels), 5.5 * len(lengths)), squeeze=False)
    for row_axes, length in zip(axes, lengths):
        ref = agg[agg["length"] == length]
        e = eso[eso["length"] == length]
        for ax, (col, title) in zip(row_axes, panels):
            if col == "test_ppl":
                groups = e.groupby(["model_entry", "family"], sort=False)
                for (entry, fam), g in groups:
                    g = g.groupby("alpha_0", as_index=False)[col].mean().sort_values("alpha_0")
                    ax.plot(g["alpha_0"], g[col], marker=markers[entry], color=FAMILY_COLORS[fam],
                            label=f"{entry}{trained.get(entry, '')}")
            else:
                groups = e.groupby(["model_entry", "family", "steps"], sort=False, dropna=False)
                styles = ["-", "--", ":", "-."]
                steps_seen = {}
                for (entry, fam, steps), g in groups:
                    ls = styles[steps_seen.setdefault(entry, []).__len__() % len(styles)]
                    steps_seen[entry].append(steps)
                    g = g.sort_values("alpha_0")
                    label = f"{entry}{trained.get(entry, '')}" + (f", T={int(steps)}" if _finite(steps) else "")
                    ax.plot(g["alpha_0"], g[col], marker=markers[entry], linestyle=ls, color=FAMILY_COLORS[fam],
                            label=label)
            refs = _reference_lines(ax, ref, col)
            values = [v for v in list(e[col]) + refs if _finite(v)]
            if values:
                lo, hi = min(values), max(values)
                pad = 0.08 * (hi - lo or abs(hi) or 1.0)
                ax.set_ylim(lo - pad, hi + pad)
            ax.set_xlabel("alpha_0 at evaluation (fraction of tokens generated by diffusion)", fontsize=10)
            ax.set_ylabel(title, fontsize=10)
            ax.set_title(f"{title} vs alpha_0, L = {length}", fontsize=11)
            ticks = sorted(set(e["alpha_0"].round(4)))
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{t:g}" for t in ticks], rotation=45 if len(ticks) > 6 else 0)
            ax.set_xlim(min(ticks) - 0.05, max(ticks) + 0.05)
            ax.grid(True, alpha=0.25)
            ax.legend(fontsize=8, loc="best", framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return True


def _reference_lines(ax, ref, col) -> list[float]:
    """AR and MDLM as horizontal lines (MDLM at its largest T for gen PPL); returns their values."""
    drawn = []
    for fam, color in (("ar", FAMILY_COLORS["ar"]), ("mdlm", FAMILY_COLORS["mdlm"])):
        rows = ref[(ref["family"] == fam) & ref[col].map(_finite)]
        if rows.empty:
            continue
        if col == "gen_ppl" and fam == "mdlm" and rows["steps"].map(_finite).any():
            r = rows.loc[rows["steps"].astype(float).idxmax()]
            value, label = r[col], f"{FAMILY_NAMES[fam]} ({r['model_entry']}) {_short(r['schedule'])}".strip()
        else:
            r = rows.iloc[0]
            value, label = rows[col].mean(), f"{FAMILY_NAMES[fam]} ({r['model_entry']})"
        ax.axhline(value, color=color, linestyle="--", linewidth=1.2, alpha=0.8)
        ax.annotate(f"{label}: {value:.1f}", (0.01, value), xycoords=("axes fraction", "data"), xytext=(0, 3),
                    textcoords="offset points", fontsize=8, color=color)
        drawn.append(float(value))
    return drawn


def plot_speed_vs_length(agg, path: Path, measured: str = "") -> bool:
    """Seconds per sample vs L: one panel per family (AR drawn in every panel for reference),
    one colour per schedule within a panel."""
    plt = _plt()
    from matplotlib import colormaps

    data = agg[agg["seconds_per_sample"].map(_finite)]
    if data["length"].nunique() < 2:
        return False
    families = [f for f in FAMILY_ORDER if f in set(data["family"]) and f != "ar"] or ["ar"]
    ar = data[data["family"] == "ar"]
    cols = min(len(families), 2)
    rows = math.ceil(len(families) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7.5 * cols, 5.2 * rows), squeeze=False, sharey=True)
    lengths = sorted(data["length"].unique())
    for ax, fam in zip(axes.flat, families):
        sub = data[data["family"] == fam]
        curves = list(dict.fromkeys(zip(sub["model_entry"], sub["group"])))
        cmap = colormaps["viridis"]
        # Eso-LM: colour = alpha_0, line style = steps; otherwise one colour per curve
        by_alpha = sub["alpha_0"].map(_finite).all() and sub["alpha_0"].nunique() > 1
        alphas = sorted(sub["alpha_0"].unique(), reverse=True) if by_alpha else []
        steps = list(dict.fromkeys(sub["steps"])) if by_alpha else []
        styles = ["-", "--", ":", "-."]
        for k, (entry, group) in enumerate(curves):
            g = sub[(sub["model_entry"] == entry) & (sub["group"] == group)].sort_values("length")
            if by_alpha:
                color = cmap(alphas.index(g["alpha_0"].iloc[0]) / max(1, len(alphas) - 1) * 0.9)
                style = styles[steps.index(g["steps"].iloc[0]) % len(styles)]
            else:
                color, style = cmap(k / max(1, len(curves) - 1) * 0.9), "-"
            label = f"{entry} {_short(group)}".strip() if sub["model_entry"].nunique() > 1 else (_short(group) or entry)
            ax.plot(g["length"], g["seconds_per_sample"], marker="o", color=color, linestyle=style, label=label,
                    linewidth=1.6)
        if fam != "ar":
            for entry, g in ar.groupby("model_entry", sort=False):
                g = g.sort_values("length")
                ax.plot(g["length"], g["seconds_per_sample"], color=FAMILY_COLORS["ar"], linestyle="--", marker="s",
                        markersize=4, label=f"AR ({entry})", linewidth=1.4)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(lengths)
        ax.set_xticklabels([str(int(v)) for v in lengths])
        ax.minorticks_off()
        _plain_ticks(ax, "y")
        ax.set_title(FAMILY_NAMES.get(fam, fam), fontsize=12, color=FAMILY_COLORS.get(fam))
        ax.set_xlabel("sequence length L")
        ax.set_ylabel("seconds per sample (median)")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7.5, ncol=2 if len(curves) > 6 else 1, loc="upper left", framealpha=0.9)
    for ax in list(axes.flat)[len(families):]:
        ax.set_visible(False)
    fig.suptitle("Sampling time per sample vs length (log-log; lower is better)"
                 + (f"\n{measured.rstrip('.')}" if measured else ""), fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return True


def alpha0_table(agg, length: int) -> str:
    """The papers' perplexity-vs-alpha_0 table at one length: per Eso-LM entry (its training
    alpha_0 in brackets) and alpha_0 at evaluation, the test PPL (NELBO at that alpha_0) and
    gen PPL for each number of steps T; AR (alpha_0 = 0) and MDLM (alpha_0 = 1) as the ends."""
    at = agg[agg["length"] == length]
    eso = at[at["family"].isin(["esolm-a", "esolm-b"]) & at["alpha_0"].map(_finite)]
    if eso.empty:
        return ""
    ts = sorted({int(t) for t in eso["steps"] if _finite(t)})

    def cells(g):
        by_t = {int(t): v for t, v in zip(g["steps"], g["gen_ppl"]) if _finite(t)}
        if g["family"].iloc[0] == "ar":
            by_t = dict.fromkeys(ts, g["gen_ppl"].iloc[0])  # AR has no T: the same row under every T
        return [fmt(float(g["test_ppl"].mean()))] + [fmt(float(by_t[t])) if t in by_t else "–" for t in ts]

    def ends(family, label):
        return [[entry, label] + cells(g) for entry, g in at[at["family"] == family].groupby("model_entry", sort=False)]

    rows = ends("ar", "0 (AR)")
    for (entry, a0), g in eso.sort_values("alpha_0", kind="stable").groupby(["model_entry", "alpha_0"], sort=False):
        trained = g["alpha_0_train"].iloc[0]
        name = f"{entry} (trained a0={float(trained):g})" if _finite(trained) else entry
        rows.append([name, f"{float(a0):g}"] + cells(g))
    rows += ends("mdlm", "1 (MDLM)")
    return md_table(["model entry", "alpha_0"] + ["test PPL"] + [f"gen PPL T={t}" for t in ts], rows)


def by_length_table(agg, column: str, show) -> str:
    """``column`` (shown by ``show``), one table column per length; rows are the curves keyed
    by their length-free schedule (seconds per sample, or measured / floor)."""
    data = agg[agg[column].map(_finite)]
    lengths = sorted(data["length"].unique())
    rows = []
    for (entry, fam, group), g in data.groupby(["model_entry", "family", "group"], sort=False):
        by_len = dict(zip(g["length"], g[column]))
        rows.append([entry, FAMILY_NAMES.get(fam, fam), group] + [show(by_len[L]) if L in by_len else "–"
                                                                  for L in lengths])
    return md_table(["model entry", "family", "schedule"] + [f"L = {L}" for L in lengths], rows,
                    ["l", "l", "l"] + ["r"] * len(lengths))


# ======================================================================================
# GPU speed: floors, paper ratios, headline plot
# ======================================================================================
# PERF.md's ceilings on the lent H100 (bf16 matmul 8192^3; device-to-device copy).
PERF_H100 = {"matmul_flops": 759e12, "copy_bytes_per_s": 2.9e12, "source": "PERF.md (H100, bf16 matmul / copy)"}
# Eso-LM paper (Sahoo et al.), sampling-speed figure: Eso-LM (B) against MDLM and KV-cached BD3-LM.
PAPER_MDLM = "14–65×"
PAPER_BD3LM = "3–4×"


def floor_seconds(nfe: float, tokens_computed_per_sample: float, batch_size: float, weight_bytes: float,
                  matmul_parameters: float, matmul_flops: float, copy_bytes_per_s: float,
                  kv_bytes_per_sample: float = 0.0) -> float:
    """Seconds per sample no implementation can beat on this GPU: per batch, every forward reads
    all weights (``nfe`` is forwards per batch) and every cached forward its KV-cache slots,
    and every computed token costs 2 FLOPs per matmul parameter; whichever is slower, shared
    by the batch's samples."""
    read = (nfe * weight_bytes + kv_bytes_per_sample * batch_size) / copy_bytes_per_s
    compute = 2 * matmul_parameters * tokens_computed_per_sample * batch_size / matmul_flops
    return max(read, compute) / batch_size


def file_ceilings(results_dir: Path) -> dict | None:
    """Ceilings measured for this sweep: ``ceilings.json``, else ``gpu_bench.json``'s "ceilings"."""
    path = results_dir / "ceilings.json"
    if path.is_file():
        ceil = json.loads(path.read_text())
        return {**ceil, "source": ceil.get("source") or str(path), "any_device": True}
    path = results_dir / "gpu_bench.json"
    if path.is_file():
        bench = json.loads(path.read_text())
        if isinstance(bench.get("ceilings"), dict):
            device = f" on {bench['device']}" if bench.get("device") else ""
            return {**bench["ceilings"], "source": f"measured by scripts/gpu_bench.py{device}, {path}",
                    "any_device": False}
    return None


def add_floors(df, results_dir: Path) -> list[dict]:
    """Column ``floor_seconds_per_sample`` (NaN where no ceilings apply or the row lacks the
    forward's cost); returns the ceilings used.  ceilings.json applies to every row,
    gpu_bench.json to CUDA rows, PERF.md's figures to H100 rows; CPU rows get no floor."""
    measured = file_ceilings(results_dir)
    used, floors = {}, []
    for _, r in df.iterrows():
        cuda = str(r.get("device", "")).startswith("cuda")
        if measured and (measured["any_device"] or cuda):
            ceil = measured
        elif cuda and "H100" in str(r.get("device_name", "")):
            ceil = PERF_H100
        else:
            ceil = None
        values = [r.get(c) for c in ("nfe", "tokens_computed_per_sample", "batch_size", "weight_bytes",
                                     "matmul_parameters")]
        if ceil is None or not all(_finite(v) for v in values):
            floors.append(float("nan"))
            continue
        kv = [r.get(c) for c in ("key_reads_per_sample", "kv_bytes_per_key")]
        kv_bytes = float(kv[0]) * float(kv[1]) if all(_finite(v) for v in kv) else 0.0  # older rows: not counted
        floors.append(floor_seconds(*(float(v) for v in values), float(ceil["matmul_flops"]),
                                    float(ceil["copy_bytes_per_s"]), kv_bytes))
        used[ceil["source"]] = ceil
    df["floor_seconds_per_sample"] = floors
    return list(used.values())


def floor_text(ceilings: list[dict]) -> str:
    """The floor's formula, the ceilings and their source, and what it leaves out."""
    parts = [f"{c['matmul_flops'] / 1e12:.0f} TFLOP/s matmul and {c['copy_bytes_per_s'] / 1e12:.2f} TB/s memory "
             f"copy ({c['source']})" for c in ceilings]
    return ("Floor (floor_s, seconds per sample) = max((NFE per batch × weight bytes + KV-cache slots read × "
            "K/V bytes per slot) / copy rate, 2 × matmul parameters × tokens computed per sample × batch size / "
            "matmul rate) / batch size, with the weights of every layer but the embedding table in the sampling "
            "dtype; ceilings: " + "; ".join(parts) + ". Rows from before the KV-read counter (no "
            "key_reads_per_sample) count no KV reads. The floor ignores attention FLOPs, the embedding lookup and "
            "sampling (the work between forwards), so it is a lower bound; x floor = measured / floor.")


def measured_on(df) -> str:
    """One line naming what every figure and table here was measured with."""
    def join(col):
        return ", ".join(_values(df, col)) or "unknown"

    batch = ", ".join(str(int(v)) for v in sorted(df["batch_size"].dropna().unique())) or "unknown"
    commits = _values(df, "git_commit")
    return (f"Measured on {join('device_name')}, batch size {batch}, {join('dtype')}, "
            f"commit{'s' if len(commits) > 1 else ''} {', '.join(commits) or 'unknown'}.")


def _on_cuda(frame):
    return frame["device"].astype(str).str.startswith("cuda")


def _cuda_rows(frame):
    return frame[_on_cuda(frame)]


def _cuda(agg):
    """Timed CUDA rows."""
    return agg[_on_cuda(agg) & agg["seconds_per_sample"].map(_finite)]


def _steps_is(r, steps) -> bool:
    return _finite(r["steps"]) and int(r["steps"]) == int(steps)


def _pick(rows, test):
    """First row (config order) passing ``test``, or None."""
    for _, r in rows.iterrows():
        if test(r):
            return r
    return None


def _eso_a1(rows, steps):
    return _pick(rows, lambda r: r["family"] == "esolm-b" and _finite(r["alpha_0"]) and float(r["alpha_0"]) == 1.0
                 and _steps_is(r, steps))


def _t_name(group: str, steps) -> str:
    """'T=L/8' when the schedule was written with a length expression, else 'T=<steps>'."""
    m = re.search(r"(?:^|,)T=([^,]+)", str(group))
    return f"T={m.group(1)}" if m and "L" in m.group(1) else f"T={int(steps)}"


def speed_ratios(agg, column: str = "seconds_per_sample") -> dict | None:
    """Per length: MDLM / Eso-LM (B) alpha_0 = 1 at the same T, and BD3-LM (first hitting) /
    Eso-LM (B) alpha_0 = 1, T = L; with the seconds per sample (``column``: measured, or
    ``floor_seconds_per_sample`` for the ratios with no per-step overhead) of every compared
    point.  None unless the CUDA rows hold Eso-LM (B) and MDLM or BD3-LM."""
    data = _cuda(agg)
    fams = set(data["family"])
    if "esolm-b" not in fams or not fams & {"mdlm", "bd3lm"}:
        return None
    lengths = sorted(int(v) for v in data["length"].unique())
    mdlm_cols, bd3_cols = {}, []  # T name -> [steps/length ...]; block sizes
    for _, r in data.iterrows():
        rows = data[data["length"] == r["length"]]
        if r["family"] == "mdlm" and _finite(r["steps"]) and _eso_a1(rows, r["steps"]) is not None:
            mdlm_cols.setdefault(_t_name(r["group"], r["steps"]), []).append(float(r["steps"]) / r["length"])
        if (r["family"] == "bd3lm" and r["first_hitting"] and _finite(r["block_size"])
                and int(r["block_size"]) not in bd3_cols):
            bd3_cols.append(int(r["block_size"]))
    t_names = sorted(mdlm_cols, key=lambda k: sum(mdlm_cols[k]) / len(mdlm_cols[k]))
    bd3_cols.sort()
    table = []
    for L in lengths:
        rows = data[data["length"] == L]
        line = {"length": L}
        for name in t_names:
            mdlm = _pick(rows, lambda r: r["family"] == "mdlm" and _finite(r["steps"])
                         and _t_name(r["group"], r["steps"]) == name)
            eso = _eso_a1(rows, mdlm["steps"]) if mdlm is not None else None
            line[f"MDLM {name} s"] = float(mdlm[column]) if mdlm is not None else None
            line[f"Eso-LM (B) a0=1 {name} s"] = float(eso[column]) if eso is not None else None
        eso_l = _eso_a1(rows, L)
        if bd3_cols:
            line["Eso-LM (B) a0=1 T=L s"] = float(eso_l[column]) if eso_l is not None else None
        for b in bd3_cols:
            bd3 = _pick(rows, lambda r: r["family"] == "bd3lm" and r["first_hitting"] and _finite(r["block_size"])
                        and int(r["block_size"]) == b)
            line[f"BD3-LM L'={b} s"] = float(bd3[column]) if bd3 is not None else None
        for name in t_names:
            line[f"MDLM / Eso-LM {name}"] = _ratio(line[f"MDLM {name} s"], line[f"Eso-LM (B) a0=1 {name} s"])
        for b in bd3_cols:
            line[f"BD3-LM L'={b} / Eso-LM T=L"] = _ratio(line[f"BD3-LM L'={b} s"], line["Eso-LM (B) a0=1 T=L s"])
        table.append(line)
    return {"t_names": t_names, "block_sizes": bd3_cols, "rows": table}


def _ratio(num, den):
    return num / den if _finite(num) and _finite(den) and den > 0 else None


def times(v) -> str:
    """A ratio as '12.3×'; '—' when a point is missing."""
    return f"{v:.1f}×" if _finite(v) else "—"


def ratio_tables(ratios: dict, seconds_title: str = "Seconds per sample of the compared points:") -> str:
    """The ratios with the paper's figures as a last row, then the compared points' seconds."""
    rcols = [k for k in ratios["rows"][0] if " / " in k]
    scols = [k for k in ratios["rows"][0] if k.endswith(" s")]
    rows = [[f"L = {r['length']}"] + [times(r[k]) for k in rcols] for r in ratios["rows"]]
    rows.append(["paper (Eso-LM (B), L up to 8192)"] + [PAPER_MDLM if k.startswith("MDLM") else PAPER_BD3LM
                                                         for k in rcols])
    seconds = [[f"L = {r['length']}"] + [fmt(r[k], 4) if _finite(r[k]) else "—" for k in scols]
               for r in ratios["rows"]]
    return (md_table(["length"] + rcols, rows, ["l"] + ["r"] * len(rcols)) + "\n\n"
            + seconds_title + "\n\n"
            + md_table(["length"] + [k[:-2] for k in scols], seconds, ["l"] + ["r"] * len(scols)))


def write_ratios_csv(ratios: dict, path: Path) -> None:
    """The same table, numbers unformatted (empty where a point is missing)."""
    import csv

    cols = list(ratios["rows"][0])
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(cols)
        for r in ratios["rows"]:
            writer.writerow(["" if r[c] is None else r[c] for c in cols])


# (label, family, line style, marker, test(row)): the paper's sampler settings, by resolved steps
HEADLINE = [
    ("AR", "ar", "-", "s", lambda r: True),
    ("MDLM T=L/8", "mdlm", "-", "o", lambda r: _steps_is(r, r["length"] // 8)),
    ("MDLM T=L", "mdlm", "--", "o", lambda r: _steps_is(r, r["length"])),
    ("BD3-LM L'=4", "bd3lm", "-", "^", lambda r: r["first_hitting"] and r["block_size"] == 4),
    ("BD3-LM L'=16", "bd3lm", "--", "v", lambda r: r["first_hitting"] and r["block_size"] == 16),
    ("Eso-LM (B) a0=1 T=L/8", "esolm-b", "-", "D", lambda r: r["alpha_0"] == 1.0 and _steps_is(r, r["length"] // 8)),
    ("Eso-LM (B) a0=1 T=L", "esolm-b", "--", "D", lambda r: r["alpha_0"] == 1.0 and _steps_is(r, r["length"])),
    ("Eso-LM (B) a0=0.25 T=128", "esolm-b", ":", "P", lambda r: r["alpha_0"] == 0.25 and _steps_is(r, 128)),
]


def plot_speed_headline(agg, df, path: Path) -> bool:
    """Seconds per sample vs L for the paper's settings (CUDA rows), one line each."""
    data = _cuda(agg)
    if data.empty:
        return False
    curves = []
    for label, fam, style, marker, test in HEADLINE:
        pts = []
        for L in sorted(data["length"].unique()):
            r = _pick(data[(data["length"] == L) & (data["family"] == fam)], test)
            if r is not None:
                pts.append((int(L), float(r["seconds_per_sample"])))
        if pts:
            curves.append((label, fam, style, marker, pts))
    if not curves:
        return False
    plt = _plt()
    cuda = _cuda_rows(df)
    fig, ax = plt.subplots(figsize=(10, 6), dpi=130)
    for label, fam, style, marker, pts in curves:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=FAMILY_COLORS[fam], linestyle=style, marker=marker,
                linewidth=2, markersize=7, label=label)
    lengths = sorted({p[0] for c in curves for p in c[4]})
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(lengths)
    ax.set_xticklabels([str(v) for v in lengths])
    ax.minorticks_off()
    _plain_ticks(ax, "y")
    if len(lengths) > 1:
        ax.set_xlim(lengths[0] / 1.25, lengths[-1] * 1.25)
    ys = [p[1] for c in curves for p in c[4]]
    ax.set_ylim(min(ys) / 1.3, max(ys) * 1.3)
    ax.set_xlabel("sequence length L (tokens, log scale)", fontsize=11)
    ax.set_ylabel("seconds per sample (log scale, lower is better)", fontsize=11)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=9.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.9, title="sampler",
              title_fontsize=10)
    ax.set_title("Sampling time per sample vs length\n" + textwrap.fill(measured_on(cuda).rstrip("."), 80),
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return True


# ======================================================================================
# markdown
# ======================================================================================
def fmt(v, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        if v != 0 and (abs(v) >= 1e7 or abs(v) < 0.5 * 10 ** -digits):
            return f"{v:.3e}"
        return f"{v:,.{digits}f}"
    return str(v)


def md_table(headers: list[str], rows: list[list], align: list[str] | None = None) -> str:
    align = align or ["l"] + ["r"] * (len(headers) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


RESULT_COLUMNS = [  # (column, header, digits)
    ("test_ppl", "test PPL", 2), ("gen_ppl", "gen PPL", 2), ("gen_ppl_mean", "gen PPL (mean/sample)", 2),
    ("entropy", "entropy", 3), ("degenerate", "degenerate", 1), ("mauve", "MAUVE", 3),
    ("nfe_per_sample", "NFE/sample", 1), ("tokens_computed_per_sample", "tokens computed/sample", 1),
    ("seconds_per_sample", "s/sample", 4), ("floor_seconds_per_sample", "floor_s", 4), ("x_floor", "x floor", 1),
    ("tokens_per_second", "tokens/s", 0),
]


def results_table(agg) -> str:
    cols = [c for c in RESULT_COLUMNS if agg[c[0]].map(_finite).any()]
    headers = ["model entry", "family", "schedule", "alpha_0"] + [h for _, h, _ in cols]
    rows = []
    for _, r in agg.iterrows():
        rows.append([r["model_entry"], FAMILY_NAMES.get(r["family"], r["family"]), r["schedule"],
                     fmt(r["alpha_0"], 4) if _finite(r["alpha_0"]) else "–"]
                    + [times(r[c]) if c == "x_floor" else fmt(float(r[c]), d) for c, _, d in cols])
    return md_table(headers, rows, ["l", "l", "l"] + ["r"] * (len(headers) - 3))


def boundaries_table(agg) -> str:
    """BOS at position 0, EOS at L − 1 and EOS inside, per point: a format check the
    perplexities miss (gen PPL takes the first token as context only)."""
    rows = [[r["model_entry"], FAMILY_NAMES.get(r["family"], r["family"]), r["schedule"], r["length"],
             fmt(100 * float(r["bos_first"]), 0), fmt(100 * float(r["eos_last"]), 0),
             fmt(float(r["eos_inside_per_sample"]), 2)]
            for _, r in agg.iterrows() if _finite(r["bos_first"])]
    return md_table(["model entry", "family", "schedule", "L", "BOS at 0 (%)", "EOS at L − 1 (%)",
                     "EOS inside / sample"], rows, ["l", "l", "l", "r", "r", "r", "r"])


def _values(df, col) -> list:
    return sorted({str(v) for v in df[col].dropna()}) if col in df else []


def protocol_table(df, results_dir: Path) -> str:
    estimators = _values(df, "test_ppl_estimator")
    rows = [
        ["sweep", ", ".join(_values(df, "sweep"))],
        ["results", f"`{results_dir}` ({len(df)} points)"],
        ["generative-PPL evaluator", ", ".join(_values(df, "evaluator")) or "– (gen_ppl not measured)"],
        ["test-PPL estimator(s)", ", ".join(estimators) or "– (test_ppl not measured)"],
        ["test-PPL data", ", ".join(f"{s} split" for s in _values(df, "test_ppl_split")) +
         (f", first {int(df['test_ppl_sequences'].max())} sequences" if "test_ppl_sequences" in df
          and df["test_ppl_sequences"].notna().any() else "")],
        ["device", ", ".join(_values(df, "device_name"))],
        ["dtype", ", ".join(_values(df, "dtype"))],
        ["sampler step mode", ", ".join(_values(df, "step_mode")) or "not recorded"],
        ["samples per point", ", ".join(_values(df, "num_samples"))],
        ["batch size", ", ".join(_values(df, "batch_size"))],
        ["seeds", ", ".join(_values(df, "seed"))],
        ["lengths", ", ".join(str(v) for v in sorted(df["length"].unique()))],
        ["git commit", ", ".join(_values(df, "git_commit")) or "unknown"],
        ["torch / python", f"{', '.join(_values(df, 'torch'))} / {', '.join(_values(df, 'python'))}"],
        ["finished", f"{df['timestamp'].min()} … {df['timestamp'].max()}" if "timestamp" in df else "–"],
    ]
    return md_table(["", ""], rows, ["l", "l"])


def sample_section(df, agg, results_dir: Path, per_entry: int = 1, chars: int = 400) -> str:
    """The first sample of each entry's best (lowest gen PPL, else first) point."""
    from harness.sweep import SAMPLES_DIR, safe_name

    out = []
    for entry in dict.fromkeys(agg["model_entry"]):
        rows = df[df["model_entry"] == entry]
        if rows["gen_ppl"].map(_finite).any():
            row = rows.loc[rows["gen_ppl"].astype(float).idxmin()]
        else:
            row = rows.iloc[0]
        path = results_dir / SAMPLES_DIR / f"{safe_name(row['key'])}.jsonl"
        if not path.is_file():
            continue
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][:per_entry]
        for rec in records:
            text = rec.get("text", "").strip()
            text = (text[:chars] + " …") if len(text) > chars else text
            stats = []
            if _finite(rec.get("gen_ppl")):
                stats.append(f"gen PPL {rec['gen_ppl']:.1f}")
            if _finite(rec.get("entropy")):
                stats.append(f"entropy {rec['entropy']:.2f}")
            out.append(f"**{entry}**, `{row['key']}` (sample {rec.get('i', 0)}; {', '.join(stats)}):\n\n"
                       "```text\n" + text.replace("```", "'''") + "\n```\n")
    return "\n".join(out) if out else "_no sample files found_\n"


def notes(df) -> list[str]:
    out = []
    for col, label in (("mauve_note", "MAUVE"), ("telemetry_note", "GPU telemetry")):
        if col in df:
            vals = _values(df, col)
            if vals:
                out.append(f"- {label}: {'; '.join(vals)}.")
    if "degenerate_rule" in df and _values(df, "degenerate_rule"):
        out.append(f"- Degenerate samples are counted, never dropped: {'; '.join(_values(df, 'degenerate_rule'))}.")
    if "mauve" in df and df["mauve"].map(_finite).any() and "mauve_n" in df:
        n = min(min(v) for v in df["mauve_n"] if isinstance(v, list) and v)
        if n < 200:
            out.append(f"- MAUVE here compares only {n} generated vs reference texts per point: at this size it is "
                       "very noisy (differences of ±0.3 are common); read it as a pipeline check, not a ranking.")
    if any(str(v).startswith("harness-ar:") for v in _values(df, "evaluator")) and (df["family"] == "ar").any():
        out.append("- The evaluator is a harness AR checkpoint: if it is an AR row of this sweep, that row's "
                   "generative perplexity scores the evaluator's own samples and is flattered accordingly.")
    out.append("- Speed: wall-clock after warm-up, median of repeats, device-synchronised; tokens/s counts all L "
               "positions of a sample. NFE and tokens computed are exact and hardware-independent.")
    if (df["family"].isin(["esolm-a", "esolm-b"])).any() and "test_ppl" in df:
        out.append("- Eso-LM test PPL is the NELBO at the row's alpha_0 (evaluation), computed once per "
                   "(model entry, length, alpha_0); other models once per (model entry, length).")
    return out


def default_report_dir(results_dir: Path) -> Path:
    root = results_dir.parent.parent if results_dir.parent.name == "results" else Path(".")
    return root / "reports" / results_dir.name


def write_report(results_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write plots and report.md; returns the report.md path.  Default folder: the reports/
    beside the results root + the results folder's name (results/x -> reports/x,
    out/results/x -> out/reports/x, so a report of ``make smoke``'s output never overwrites
    the committed reports/smoke), else reports/x; a re-scored copy such as results/x_smollm2
    never overwrites the report of results/x."""
    results_dir = Path(results_dir)
    if results_dir.is_file():
        results_dir = results_dir.parent
    df = load_frame(results_dir)
    sweep = str(df["sweep"].iloc[0])
    out = Path(out_dir) if out_dir is not None else default_report_dir(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    ceilings = add_floors(df, results_dir)
    agg = aggregate(df)

    md = [f"# Sweep `{sweep}`", "", measured_on(df), ""]
    desc = _description(results_dir)
    if desc:
        md += [desc.strip(), ""]
    md += ["## Protocol", "", protocol_table(df, results_dir), ""]
    if ceilings:
        md += [floor_text(ceilings), ""]
    for length in sorted(agg["length"].unique()):
        sub = agg[agg["length"] == length]
        md += [f"## Results at L = {length}", "", f"Means over {int(sub['seeds'].max())} seed(s); "
               "lower is better for perplexities, NFE, tokens computed and seconds.", "", results_table(sub), ""]

    pareto = ["## Speed vs quality", ""]
    for x, xlabel, title, name in (
        ("seconds_per_sample", "seconds per sample (median, log scale)", "gen PPL vs time", "pareto_time.png"),
        ("nfe_per_sample", "network function evaluations per sample (log scale)", "gen PPL vs NFE", "pareto_nfe.png"),
    ):
        front = plot_pareto(agg, x, xlabel, title, out / name)
        if front is None:
            (out / name).unlink(missing_ok=True)
            continue
        pareto += [f"![{title}]({name})", ""]
        pareto += [f"Pareto frontier ({title}): " + ", ".join(
            f"{r['model_entry']} {_short(r['schedule'])} (L={r['length']}, {fmt(float(r[x]), 3)}, "
            f"{fmt(float(r['gen_ppl']), 1)})".replace("  ", " ") for r in front), ""]
    if len(pareto) > 2:  # a speed-only sweep has no quality axis: no empty section
        md += pareto
    if plot_alpha0(agg, out / "alpha0.png"):
        md += ["## Eso-LM: perplexity vs alpha_0", "", "![perplexity vs alpha_0](alpha0.png)", ""]
        for length in sorted(agg["length"].unique()):
            table = alpha0_table(agg, length)
            if table:
                md += [f"At L = {length}; test PPL: exact for AR, NELBO otherwise (Eso-LM: at the row's alpha_0); "
                       "lower is better.", "", table, ""]
    else:
        (out / "alpha0.png").unlink(missing_ok=True)
    if plot_speed_headline(agg, df, out / "speed_headline.png"):
        md += ["## Sampling speed (headline)", "", measured_on(_cuda_rows(df)),
               "", "![seconds per sample vs L, paper settings](speed_headline.png)", ""]
    else:
        (out / "speed_headline.png").unlink(missing_ok=True)
    ratios = speed_ratios(agg)
    if ratios:
        md += ["## Speed ratios", "", measured_on(_cuda_rows(df)), "",
               "Seconds per sample of the slower sampler over Eso-LM (B) at alpha_0 = 1 (pure diffusion): MDLM at "
               "the same number of steps T, and BD3-LM (first hitting, block size L') against Eso-LM (B) with T = L "
               f"(both about one token per forward). The paper reports Eso-LM (B) {PAPER_MDLM} faster than MDLM and "
               f"{PAPER_BD3LM} faster than KV-cached BD3-LM, the ratios growing with L up to 8192. "
               "— = a point not measured (yet).", "", ratio_tables(ratios), "",
               "The same table as CSV: [speed_ratios.csv](speed_ratios.csv).", ""]
        write_ratios_csv(ratios, out / "speed_ratios.csv")
    else:
        (out / "speed_ratios.csv").unlink(missing_ok=True)
    at_floor = speed_ratios(agg, "floor_seconds_per_sample")
    if at_floor and any(_finite(v) for r in at_floor["rows"] for k, v in r.items() if " / " in k):
        md += ["### The same ratios at the floors", "",
               "Each point's floor_s in place of its measured time: the ratios if every sampler ran at its floor, "
               "with no per-step overhead (PERF.md; the floor is defined under the results tables).", "",
               ratio_tables(at_floor, "Floor seconds per sample of the compared points:"), "",
               "As CSV: [speed_ratios_at_floor.csv](speed_ratios_at_floor.csv).", ""]
        write_ratios_csv(at_floor, out / "speed_ratios_at_floor.csv")
    else:
        (out / "speed_ratios_at_floor.csv").unlink(missing_ok=True)
    if plot_speed_vs_length(agg, out / "speed_vs_length.png", measured_on(df)):
        md += ["## Speed vs length", "", "![seconds per sample vs L](speed_vs_length.png)", "",
               "Seconds per sample (median):", "", by_length_table(agg, "seconds_per_sample", lambda v: fmt(float(v), 4)), ""]
        if agg["x_floor"].map(_finite).any():
            md += ["Measured / floor (x floor; floor as above):", "", by_length_table(agg, "x_floor", times), ""]
    else:
        (out / "speed_vs_length.png").unlink(missing_ok=True)
    quality = agg["entropy"].map(_finite) | agg["gen_ppl"].map(_finite)
    if (quality & agg["bos_first"].map(_finite)).any():
        md += ["## Sample boundaries", "",
               "Training rows are [BOS] + text + [EOS], so a model that learned the format puts BOS at position 0 "
               "and EOS at L − 1. AR is given its BOS; MDLM, BD3-LM and Eso-LM generate position 0 (unless the "
               "schedule says bos=True), and with rotary positions only they can place it (and the final EOS) "
               "only relative to tokens already revealed. EOS inside a sample separates documents.", "", boundaries_table(agg[quality]), ""]
    md += ["## Samples", "", sample_section(df, agg, results_dir), "## Notes", "", *notes(df), ""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path


def _description(results_dir: Path) -> str:
    cfg = results_dir / "config.yaml"
    if not cfg.is_file():
        return ""
    try:
        import yaml

        return str((yaml.safe_load(cfg.read_text()) or {}).get("description", "") or "")
    except Exception:
        return ""
