"""``esolm report``: writes the plots and report.md of one results folder.

The report folder records which results it was made from (``source.txt``, a path relative
to the folder), so a report of other results never silently replaces it (``force=True``
does)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from harness.report.caching import caching_section
from harness.report.frame import aggregate, finite, load_frame, within_spread
from harness.report.paper import paper_section
from harness.report.paper_speed import paper_speed_section
from harness.report.plots import (plot_alpha0, plot_pareto, plot_speed_headline, plot_speed_vs_length,
                                  point_numbers, short_label)
from harness.report.speed import (PAPER_BD3LM, PAPER_MDLM, add_floors, cuda_rows, ratio_tables, speed_ratios,
                                  write_ratios_csv)
from harness.report.tables import (alpha0_table, boundaries_table, by_length_table, fmt, points_table, results_table,
                                   times)
from harness.report.throughput import throughput_section
from harness.report.text import description, floor_text, measured_on, notes, protocol_table, sample_section
from harness.results_store import check_output

SOURCE_FILE = "source.txt"


class ReportExists(ValueError):
    """The report folder holds the report of other results."""


def default_report_dir(results_dir: Path) -> Path:
    """``reports/<name>`` beside the results: results/x -> reports/x, out/results/x ->
    out/reports/x, /tmp/cand/x -> /tmp/cand/reports/x (never ./reports for results elsewhere)."""
    results_dir = Path(results_dir)
    root = results_dir.parent.parent if results_dir.parent.name == "results" else results_dir.parent
    return root / "reports" / results_dir.name


def report_source(out: Path) -> Path | None:
    """The results folder the report in ``out`` was made from (None: no report there).  Reports
    written before source.txt existed name it in their protocol table, relative to the
    folder the command ran in."""
    if (out / SOURCE_FILE).is_file():
        return out / (out / SOURCE_FILE).read_text().strip()
    if (out / "report.md").is_file():
        m = re.search(r"^\| results \| `([^`]+)`", (out / "report.md").read_text(), re.M)
        return Path(m.group(1)) if m else out / "<unknown results>"
    return None


def check_report_dir(out: Path, results_dir: Path, force: bool = False) -> None:
    """Refuse to replace the report of other results unless ``force``."""
    source = report_source(out)
    if force or source is None or source.resolve() == results_dir.resolve():
        return
    raise ReportExists(f"{out} holds the report of {os.path.normpath(source)}, not of {results_dir}; pass --out DIR "
                       "for a new folder or --force to replace it")


def speed_ties(agg, numbers: dict, front: set) -> str:
    """Which speed differences at the time frontier are within the spread of the repeats."""
    timed = [(n, agg.loc[i]) for i, n in numbers.items() if finite(agg.loc[i, "seconds_min_per_sample"])]
    if not timed:
        return "These rows keep no per-repeat timings, so the spread of the speed measurements is unknown."
    ties = [f"#{b} and #{a}" for k, (a, ra) in enumerate(timed) for b, rb in timed[:k]
            if (a in front or b in front) and ra["length"] == rb["length"] and within_spread(ra, rb)]
    if not ties:
        return ("Every speed difference between a point on the time frontier and another point is larger than the "
                "spread of their timed repeats.")
    return ("Within the spread of their timed repeats (fastest to slowest; the time order of these pairs, and so the "
            f"time frontier, may change on another run): {', '.join(ties)}.")


def write_report(results_dir: str | Path, out_dir: str | Path | None = None, force: bool = False) -> Path:
    """Write plots and report.md; returns the report.md path.  Default folder:
    :func:`default_report_dir` (so a report of ``make smoke``'s out/results/smoke never
    replaces the committed reports/smoke, and a re-scored copy results/x_smollm2 gets its own
    folder).  A folder holding the report of other results is refused unless ``force``."""
    results_dir = Path(results_dir)
    if results_dir.is_file():
        results_dir = results_dir.parent
    df = load_frame(results_dir)
    sweep = str(df["sweep"].iloc[0])
    out = Path(out_dir) if out_dir is not None else default_report_dir(results_dir)
    check_output(out, "--out", results=(results_dir,))
    if out.exists() and not out.is_dir():
        raise ValueError(f"report folder {out} is a file, not a folder; pass --out with a folder (new or a report's)")
    check_report_dir(out, results_dir, force)
    out.mkdir(parents=True, exist_ok=True)
    (out / SOURCE_FILE).write_text(os.path.relpath(results_dir.resolve(), out.resolve()) + "\n")
    ceilings = add_floors(df, results_dir)
    agg = aggregate(df)

    md = [f"# Sweep `{sweep}`", "", measured_on(df), ""]
    desc = description(results_dir)
    if desc:
        md += [desc.strip(), ""]
    md += ["## Protocol", "", protocol_table(df, results_dir), ""]
    if ceilings:
        md += [floor_text(ceilings), ""]
    for length in sorted(agg["length"].unique()):
        sub = agg[agg["length"] == length]
        md += [f"## Results at L = {length}", "", f"Means over {int(sub['seeds'].max())} seed(s); "
               "lower is better for perplexities, NFE, tokens computed and seconds.", "", results_table(sub), ""]

    md += paper_section(df, results_dir)  # only with imported checkpoints measured as in the papers
    pareto, numbers, fronts = ["## Speed vs quality", ""], point_numbers(agg), {}
    for x, xlabel, title, name, axis in (
        ("seconds_per_sample", "seconds per sample (median, log scale)", "gen PPL vs time", "pareto_time.png", "time"),
        ("nfe_per_sample", "network function evaluations per sample (log scale)", "gen PPL vs NFE", "pareto_nfe.png",
         "NFE"),
    ):
        front = plot_pareto(agg, x, xlabel, title, out / name, numbers)
        if front is None:
            (out / name).unlink(missing_ok=True)
            continue
        fronts[axis] = {r["number"] for r in front}
        pareto += [f"![{title}]({name})", ""]
        unit = (lambda v: f"{v:.3g} s/sample") if axis == "time" else (lambda v: f"NFE {v:g}")
        pareto += [f"Pareto frontier ({title}): " + ", ".join(
            f"{r['model_entry']} {short_label(r['schedule'])} (#{r['number']}, L={r['length']}, {unit(float(r[x]))}, "
            f"gen PPL {fmt(float(r['gen_ppl']), 1)})".replace("  ", " ") for r in front), ""]
    if fronts:
        pareto += ["The numbered points of the plots:", "", points_table(agg, numbers, fronts), ""]
        pareto += [speed_ties(agg, numbers, fronts.get("time", set())), ""]
    if len(pareto) > 2:  # a speed-only sweep has no quality axis: no empty section
        md += pareto
    md += caching_section(df, out)  # only where the sweep measured cache error
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
        md += ["## Sampling speed (headline)", "", measured_on(cuda_rows(df)),
               "", "![seconds per sample vs L, paper settings](speed_headline.png)", ""]
    else:
        (out / "speed_headline.png").unlink(missing_ok=True)
    throughput = throughput_section(agg)
    md += throughput
    # the batch-1 latency ratios pair points by length only: not for a sweep over batch sizes
    ratios = None if throughput else speed_ratios(agg)
    if ratios:
        md += ["## Speed ratios", "", measured_on(cuda_rows(df)), "",
               "Seconds per sample of the slower sampler over Eso-LM (B) at alpha_0 = 1 (pure diffusion): MDLM at "
               "the same number of steps T, and BD3-LM (first hitting, block size L') against Eso-LM (B) with T = L "
               f"(both about one token per forward). The paper reports Eso-LM (B) {PAPER_MDLM} faster than MDLM and "
               f"{PAPER_BD3LM} faster than KV-cached BD3-LM, the ratios growing with L up to 8192. "
               "— = a point not measured (yet).", "", ratio_tables(ratios), "",
               "The same table as CSV: [speed_ratios.csv](speed_ratios.csv).", ""]
        write_ratios_csv(ratios, out / "speed_ratios.csv")
    else:
        (out / "speed_ratios.csv").unlink(missing_ok=True)
    at_floor = None if throughput else speed_ratios(agg, "floor_seconds_per_sample")
    if at_floor and any(finite(v) for r in at_floor["rows"] for k, v in r.items() if " / " in k):
        md += ["### The same ratios at the floors", "",
               "Each point's floor_s in place of its measured time: the ratios if every sampler ran at its floor, "
               "with no per-step overhead (docs/floors.md; the floor is defined under the results tables).", "",
               ratio_tables(at_floor, "Floor seconds per sample of the compared points:"), "",
               "As CSV: [speed_ratios_at_floor.csv](speed_ratios_at_floor.csv).", ""]
        write_ratios_csv(at_floor, out / "speed_ratios_at_floor.csv")
    else:
        (out / "speed_ratios_at_floor.csv").unlink(missing_ok=True)
    md += paper_speed_section(df)  # only where a point ran under one of the paper's timing protocols
    if plot_speed_vs_length(agg, out / "speed_vs_length.png", measured_on(df)):
        md += ["## Speed vs length", "", "![seconds per sample vs L](speed_vs_length.png)", "",
               "Seconds per sample (median):", "", by_length_table(agg, "seconds_per_sample", lambda v: fmt(float(v), 4)), ""]
        if agg["x_floor"].map(finite).any():
            md += ["Measured / floor (x floor; floor as above):", "", by_length_table(agg, "x_floor", times), ""]
    else:
        (out / "speed_vs_length.png").unlink(missing_ok=True)
    quality = agg["entropy"].map(finite) | agg["gen_ppl"].map(finite)
    if (quality & agg["bos_first"].map(finite)).any():
        md += ["## Sample boundaries", "",
               "Training rows are [BOS] + text + [EOS], so a model that learned the format puts BOS at position 0 "
               "and EOS at L − 1. AR is given its BOS; MDLM, BD3-LM and Eso-LM generate position 0 (unless the "
               "schedule says bos=True), and with rotary positions only they can place it (and the final EOS) "
               "only relative to tokens already revealed. EOS inside a sample separates documents.", "", boundaries_table(agg[quality]), ""]
    md += ["## Samples", "", sample_section(df, agg, results_dir), "## Notes", "", *notes(df), ""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path
