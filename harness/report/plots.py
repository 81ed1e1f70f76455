"""Plots: gen PPL against time and NFE (with the Pareto frontier), perplexity against
alpha_0, seconds per sample against length, and the paper-settings speed headline."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

from harness.report.frame import FAMILY_COLORS, FAMILY_NAMES, FAMILY_ORDER, MARKERS, SHADES, finite, pareto_front
from harness.report.speed import cuda_rows, cuda_timed, pick, steps_is
from harness.report.text import measured_on


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def entry_styles(agg) -> dict[str, tuple[str, str]]:
    """A colour and a marker of its own for every model entry: the family's colour for its
    first entry, darker and lighter shades of it for the next ones, and markers in turn."""
    from matplotlib.colors import to_hex, to_rgb

    styles, per_family = {}, {}
    for k, (entry, family) in enumerate(dict.fromkeys(zip(agg["model_entry"], agg["family"]))):
        n = per_family.get(family, 0)
        per_family[family] = n + 1
        base = to_rgb(FAMILY_COLORS.get(family, FAMILY_COLORS["custom"]))
        shade = SHADES[n % len(SHADES)]
        target = 0.0 if shade < 0 else 1.0  # towards black (darker) or white (lighter)
        color = to_hex(tuple(c + abs(shade) * (target - c) for c in base))
        styles[entry] = (color, MARKERS[k % len(MARKERS)])
    return styles


def schedule_markers(agg) -> dict[tuple[str, str], str]:
    """(model entry, schedule) -> a marker: each schedule of an entry its own shape, so the
    points of a one-model sweep differ at a glance (the colour says the entry)."""
    out, per_entry = {}, {}
    for entry, schedule in dict.fromkeys(zip(agg["model_entry"], agg["schedule"])):
        n = per_entry.get(entry, 0)
        per_entry[entry] = n + 1
        out[(entry, schedule)] = MARKERS[n % len(MARKERS)]
    return out


def _close(a, b, xs, ys, within: float = 0.015) -> bool:
    """Whether two points fall within ``within`` of the log-scale data span on both axes (a
    marker's width on the plots' axes)."""
    def span(v):
        lo, hi = math.log(float(v.min())), math.log(float(v.max()))
        return max(hi - lo, 1e-9) * 1.9  # the plots pad their log axes by about this much
    return (abs(math.log(a[0] / b[0])) < within * span(xs)) and (abs(math.log(a[1] / b[1])) < within * span(ys))


def short_label(label: str) -> str:
    return "" if label == "default" else label.replace(",", " ")


def point_numbers(agg) -> dict:
    """agg index -> the number a point carries in the speed-quality plots and their table."""
    rows = agg[agg["gen_ppl"].map(finite)]
    return {i: n for n, i in enumerate(rows.index, start=1)}


def plot_pareto(agg, x: str, xlabel: str, title: str, path: Path, numbers: dict | None = None) -> list[dict] | None:
    """gen PPL vs ``x`` per length, each point numbered (the report's table says which point is
    which), frontier points ringed; returns the frontier rows, or None when nothing to plot."""
    plt = pyplot()
    from matplotlib.lines import Line2D

    numbers = numbers if numbers is not None else point_numbers(agg)
    data = agg[agg["gen_ppl"].map(finite) & agg[x].map(finite) & (agg[x] > 0)]
    if data.empty:
        return None
    lengths = sorted(data["length"].unique())
    styles, markers = entry_styles(agg), schedule_markers(agg)
    fig, axes = plt.subplots(1, len(lengths), figsize=(8.5 * len(lengths) + 3, 6.5), squeeze=False, dpi=130)
    frontier_rows, pending = [], []
    for ax, length in zip(axes[0], lengths):
        d = data[data["length"] == length]
        front = [d.index[i] for i in pareto_front(d[x].tolist(), d["gen_ppl"].tolist())]
        labels, segments, drawn = [], [], []
        for i, r in d.iterrows():
            color, marker = styles[r["model_entry"]][0], markers[(r["model_entry"], r["schedule"])]
            # see-through faces with solid edges; a point landing on earlier ones is drawn as a
            # larger outline around them, so none hides another
            under = sum(1 for p in drawn if _close(p, (r[x], r["gen_ppl"]), d[x], d["gen_ppl"]))
            drawn.append((r[x], r["gen_ppl"]))
            ax.scatter(r[x], r["gen_ppl"], s=64 * (1 + 1.2 * under), marker=marker, linestyle="--" if under else "-",
                       facecolor=color + ("59" if not under else "00"), edgecolor=color, linewidth=1.6, zorder=3)
            labels.append(((r[x], r["gen_ppl"]), f"{numbers[i]} {short_label(r['schedule'])}".strip(), color))
            lo, hi = (r.get("seconds_min_per_sample"), r.get("seconds_max_per_sample"))
            if x == "seconds_per_sample" and finite(lo) and finite(hi):  # fastest to slowest timed repeat
                ax.errorbar(r[x], r["gen_ppl"], xerr=[[r[x] - lo], [hi - r[x]]], fmt="none", ecolor=color,
                            elinewidth=1.0, capsize=2.5, alpha=0.8, zorder=2)
                segments.append(((lo, r["gen_ppl"]), (hi, r["gen_ppl"])))  # kept clear of labels too
        if front:
            fx = [d.loc[i, x] for i in front] + [d[x].max() * 2.0]
            fy = [d.loc[i, "gen_ppl"] for i in front]
            fy.append(fy[-1])
            ax.step(fx, fy, where="post", color="0.45", linestyle="--", linewidth=1.2, zorder=2)
            ax.scatter(fx[:-1], fy[:-1], s=190, facecolors="none", edgecolors="black", linewidths=1.3, zorder=4)
            frontier_rows += [{**d.loc[i].to_dict(), "number": numbers[i]} for i in front]
            for k in range(len(fx) - 1):  # the step line's pieces, kept clear of labels
                segments += [((fx[k], fy[k]), (fx[k + 1], fy[k])), ((fx[k + 1], fy[k]), (fx[k + 1], fy[k + 1]))]
        gen_ppl_axes(ax, xlabel, f"{title}, L = {length}", d[x], d["gen_ppl"])
        pending.append((ax, labels, segments))
    handles = [Line2D([], [], color=styles[entry][0], marker="o", linestyle="", markersize=8,
                      label=f"{entry} ({FAMILY_NAMES.get(fam, fam)})")
               for entry, fam in dict.fromkeys(zip(data["model_entry"], data["family"]))]
    handles.append(Line2D([], [], color="0.45", linestyle="--", marker="o", markersize=12, markerfacecolor="none",
                          markeredgecolor="black", label="Pareto frontier (ringed)"))
    fig.legend(handles=handles, fontsize=9, loc="upper right", framealpha=0.9, title="model entry",
               title_fontsize=9)
    bars = "; bars: fastest to slowest timed repeat" if x == "seconds_per_sample" else ""
    caption = ("labels: the point's number in the report's table and its schedule; colour: the model entry; marker: "
               "one per schedule of an entry; dashed outline: a point on top of an earlier one; ringed (black): on "
               "the Pareto frontier (no other point both faster and better)" + bars)
    fig.text(0.01, 0.01, textwrap.fill(caption, int(fig.get_figwidth() * 16)), fontsize=8, color="0.3")
    fig.tight_layout(rect=(0, 0.05, 1 - 2.6 / fig.get_figwidth(), 1))
    for ax, labels, segments in pending:  # after the layout is final: placement works in pixels
        place_labels(fig, ax, labels, segments=segments)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return frontier_rows


def _offsets(rings: int = 10, step: float = 9.0):
    """Label offsets in points, nearest first: 8 directions on rings of growing radius."""
    for k in range(1, rings + 1):
        r = step * k
        for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1)):
            yield dx * r, dy * r


def place_labels(fig, ax, labels: list[tuple[tuple[float, float], str, str]], fontsize: int = 8,
                 segments=()) -> list[tuple[float, float, float, float]]:
    """Annotate points so no label overlaps another label and, where any offset allows, no
    marker or given line segment (data coordinates; horizontal/vertical) either: offsets are
    tried nearest first; a label pushed away from its point gets a thin leader line.  Returns
    the label boxes in pixels."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    r = 7 * fig.dpi / 72  # a marker with its frontier ring: 7 points
    marks = []
    for (px, py), _, _ in labels:
        cx, cy = to_px((px, py))
        marks.append((cx - r, cy - r, cx + r, cy + r))
    for a, b in segments:
        (ax_, ay), (bx, by) = to_px(a), to_px(b)
        marks.append((min(ax_, bx) - 2, min(ay, by) - 2, max(ax_, bx) + 2, max(ay, by) + 2))
    axbox = ax.get_window_extent(renderer)
    placed = []

    def hits(box, boxes):
        return sum(1 for o in boxes if not (box[2] < o[0] or box[0] > o[2] or box[3] < o[1] or box[1] > o[3]))

    def annotate(xy, text, color, dx, dy, leader):
        ha = "left" if dx > 0 else "right" if dx < 0 else "center"
        va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
        arrow = dict(arrowstyle="-", color=color, lw=0.6, alpha=0.7, shrinkA=0, shrinkB=5) if leader else None
        return ax.annotate(text, xy, xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=fontsize,
                           color=color, fontweight="bold", zorder=5, arrowprops=arrow)

    for xy, text, color in sorted(labels, key=lambda item: -item[0][1]):
        best = None
        for dx, dy in _offsets():
            ann = annotate(xy, text, color, dx, dy, leader=False)
            bb = ann.get_window_extent(renderer)
            ann.remove()
            box = (bb.x0 - 1, bb.y0 - 1, bb.x1 + 1, bb.y1 + 1)
            inside = axbox.x0 <= box[0] and box[2] <= axbox.x1 and axbox.y0 <= box[1] and box[3] <= axbox.y1
            if not inside or hits(box, placed):
                continue
            score = hits(box, marks)
            if best is None or score < best[0]:
                best = (score, box, dx, dy)
            if score == 0:
                break
        if best is None:  # no room inside the axes: the nearest offset, outside if need be
            (dx, dy), box = next(_offsets()), None
        else:
            _, box, dx, dy = best
        ann = annotate(xy, text, color, dx, dy, leader=max(abs(dx), abs(dy)) > 9)
        if box is None:
            bb = ann.get_window_extent(renderer)
            box = (bb.x0 - 1, bb.y0 - 1, bb.x1 + 1, bb.y1 + 1)
        placed.append(box)
    return placed


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


def gen_ppl_axes(ax, xlabel: str, title: str, xs, ys) -> None:
    """The speed-quality plots' axes: log-log, plain tick labels, gen PPL on y, padded
    around the points xs, ys (none: matplotlib's limits)."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_ticks(ax)
    ax.set_xlabel(xlabel, fontsize=11)
    ax.set_ylabel("generative perplexity (log scale, lower is better)", fontsize=11)
    ax.set_title(title, fontsize=12)
    ax.grid(True, which="both", alpha=0.25)
    if len(xs):
        _pad_log(ax, xs, ys)


def _pad_log(ax, xs, ys):
    """Room on the right for labels and around the points on log axes."""
    x0, x1 = float(xs.min()), float(xs.max())
    y0, y1 = float(ys.min()), float(ys.max())
    ax.set_xlim(x0 / 1.6, x1 * 3.0)
    ax.set_ylim(y0 / 1.15, y1 * 1.25)


def plot_alpha0(agg, path: Path) -> bool:
    plt = pyplot()

    eso = agg[agg["family"].isin(["esolm-a", "esolm-b"]) & agg["alpha_0"].map(finite)]
    if eso.empty:
        return False
    lengths = sorted(eso["length"].unique())
    panels = [("test_ppl", "test perplexity (NELBO bound)"), ("gen_ppl", "generative perplexity")]
    panels = [(c, t) for c, t in panels if eso[c].map(finite).any()]
    if not panels:
        return False
    looks = entry_styles(agg)
    trained = {e: f" (trained a0={a:g})" for e, a in zip(eso["model_entry"], eso["alpha_0_train"]) if finite(a)}
    fig, axes = plt.subplots(len(lengths), len(panels), figsize=(7.5 * len(panels), 5.5 * len(lengths)), squeeze=False)
    for row_axes, length in zip(axes, lengths):
        ref = agg[agg["length"] == length]
        e = eso[eso["length"] == length]
        for ax, (col, title) in zip(row_axes, panels):
            if col == "test_ppl":
                groups = e.groupby(["model_entry", "family"], sort=False)
                for (entry, fam), g in groups:
                    g = g.groupby("alpha_0", as_index=False)[col].mean().sort_values("alpha_0")
                    ax.plot(g["alpha_0"], g[col], marker=looks[entry][1], color=looks[entry][0],
                            label=f"{entry}{trained.get(entry, '')}")
            else:
                groups = e.groupby(["model_entry", "family", "steps"], sort=False, dropna=False)
                styles = ["-", "--", ":", "-."]
                steps_seen = {}
                for (entry, fam, steps), g in groups:
                    ls = styles[steps_seen.setdefault(entry, []).__len__() % len(styles)]
                    steps_seen[entry].append(steps)
                    g = g.sort_values("alpha_0")
                    label = f"{entry}{trained.get(entry, '')}" + (f", T={int(steps)}" if finite(steps) else "")
                    ax.plot(g["alpha_0"], g[col], marker=looks[entry][1], linestyle=ls, color=looks[entry][0],
                            label=label)
            refs = _reference_lines(ax, ref, col)
            values = [v for v in list(e[col]) + refs if finite(v)]
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
        rows = ref[(ref["family"] == fam) & ref[col].map(finite)]
        if rows.empty:
            continue
        if col == "gen_ppl" and fam == "mdlm" and rows["steps"].map(finite).any():
            r = rows.loc[rows["steps"].astype(float).idxmax()]
            value, label = r[col], f"{FAMILY_NAMES[fam]} ({r['model_entry']}) {short_label(r['schedule'])}".strip()
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
    plt = pyplot()
    from matplotlib import colormaps

    data = agg[agg["seconds_per_sample"].map(finite)]
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
        by_alpha = sub["alpha_0"].map(finite).all() and sub["alpha_0"].nunique() > 1
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
            label = f"{entry} {short_label(group)}".strip() if sub["model_entry"].nunique() > 1 else (short_label(group) or entry)
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


# (label, family, line style, marker, test(row)): the paper's sampler settings, by resolved steps
HEADLINE = [
    ("AR", "ar", "-", "s", lambda r: True),
    ("MDLM T=L/8", "mdlm", "-", "o", lambda r: steps_is(r, r["length"] // 8)),
    ("MDLM T=L", "mdlm", "--", "o", lambda r: steps_is(r, r["length"])),
    ("BD3-LM L'=4", "bd3lm", "-", "^", lambda r: r["first_hitting"] and r["block_size"] == 4),
    ("BD3-LM L'=16", "bd3lm", "--", "v", lambda r: r["first_hitting"] and r["block_size"] == 16),
    ("Eso-LM (B) a0=1 T=L/8", "esolm-b", "-", "D", lambda r: r["alpha_0"] == 1.0 and steps_is(r, r["length"] // 8)),
    ("Eso-LM (B) a0=1 T=L", "esolm-b", "--", "D", lambda r: r["alpha_0"] == 1.0 and steps_is(r, r["length"])),
    ("Eso-LM (B) a0=0.25 T=128", "esolm-b", ":", "P", lambda r: r["alpha_0"] == 0.25 and steps_is(r, 128)),
]


def plot_speed_headline(agg, df, path: Path) -> bool:
    """Seconds per sample vs L for the paper's settings (CUDA rows), one line each."""
    data = cuda_timed(agg)
    if data.empty:
        return False
    curves = []
    for label, fam, style, marker, test in HEADLINE:
        pts = []
        for L in sorted(data["length"].unique()):
            r = pick(data[(data["length"] == L) & (data["family"] == fam)], test)
            if r is not None:
                pts.append((int(L), float(r["seconds_per_sample"])))
        if pts:
            curves.append((label, fam, style, marker, pts))
    if not curves:
        return False
    plt = pyplot()
    cuda = cuda_rows(df)
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
