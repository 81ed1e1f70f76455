"""Write the results figures of results/README.md from the committed results, so they cannot drift.

Each figure sits between ``<!-- figures:NAME -->`` and ``<!-- /figures:NAME -->`` in
results/README.md and is made from ``results/`` by the function of that name below (the
same loading and ratios as ``esolm report``).  Run after committing new results:

    python scripts/readme_figures.py            # rewrite the blocks in results/README.md
    python scripts/readme_figures.py --check    # exit 1 naming any block that is out of date

tests/test_readme.py runs the check.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "results" / "README.md"  # the file whose figures blocks this script writes
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from harness.report import FAMILY_NAMES, aggregate, fmt, load_frame, md_table  # noqa: E402


def seconds(v) -> str:
    """Three significant figures, two decimals below 10 s (0.36, 2.02, 17.1)."""
    return "—" if v is None else f"{v:.2f}" if v < 10 else f"{v:.3g}"


def ratio(v) -> str:
    return "—" if v is None else f"{v:.1f}×"


def speed_ratios_of(results: Path, column: str):
    from harness.report import add_floors, speed_ratios

    df = load_frame(results)
    add_floors(df, results)
    return speed_ratios(aggregate(df), column)


def paper_speed(repo: Path) -> str:
    """Seconds per sample on the GPU and the slower sampler's time over Eso-LM (B)'s."""
    rows = []
    for r in speed_ratios_of(repo / "results" / "paper_speed", "seconds_per_sample")["rows"]:
        rows.append([r["length"], seconds(r["MDLM T=L/8 s"]), seconds(r["Eso-LM (B) a0=1 T=L/8 s"]),
                     ratio(r["MDLM / Eso-LM T=L/8"]), seconds(r["MDLM T=L s"]), seconds(r["Eso-LM (B) a0=1 T=L s"]),
                     ratio(r["MDLM / Eso-LM T=L"]), seconds(r["BD3-LM L'=4 s"]), ratio(r["BD3-LM L'=4 / Eso-LM T=L"])])
    return md_table(["L", "MDLM T=L/8", "Eso-LM (B) α0=1, T=L/8", "ratio", "MDLM T=L", "Eso-LM (B) α0=1, T=L",
                     "ratio", "BD3-LM L'=4", "BD3-LM / Eso-LM (T=L)"], rows, ["r"] * 9)


def paper_speed_floors(repo: Path) -> str:
    """The same ratios with every point at its floor (no per-step overhead)."""
    rows = [[r["length"], ratio(r["MDLM / Eso-LM T=L/8"]), ratio(r["MDLM / Eso-LM T=L"]),
             ratio(r["BD3-LM L'=4 / Eso-LM T=L"]), ratio(r["BD3-LM L'=16 / Eso-LM T=L"])]
            for r in speed_ratios_of(repo / "results" / "paper_speed", "floor_seconds_per_sample")["rows"]]
    return md_table(["L", "MDLM / Eso-LM (B), T=L/8", "MDLM / Eso-LM (B), T=L", "BD3-LM L'=4 / Eso-LM (B)",
                     "BD3-LM L'=16 / Eso-LM (B)"], rows, ["r"] * 5)


def _entry_rows(results: Path):
    """Points in config order with what the tables name them by."""
    df = load_frame(results)
    for _, r in df.iterrows():
        a0 = r["alpha_0"] if r["family"] in ("esolm-a", "esolm-b") else None
        trained = r["alpha_0_train"] if r["family"] in ("esolm-a", "esolm-b") else None
        yield r, a0, trained


def cpu_quality_test_ppl(repo: Path) -> str:
    """Test perplexity per model entry (Eso-LM: at its training alpha_0), lowest first."""
    seen, rows = set(), []
    for r, a0, trained in _entry_rows(repo / "results" / "cpu_quality"):
        if r["model_entry"] in seen or (a0 is not None and a0 != trained):
            continue
        seen.add(r["model_entry"])
        block = f", L' = {int(r['block_size'])}" if r["family"] == "bd3lm" else ""
        at = f", α0 = {trained:g}" if trained is not None else ""
        rows.append((float(r["test_ppl"]), [r["model_entry"], f"{FAMILY_NAMES[r['family']]}{block}{at}",
                                            fmt(float(r["test_ppl"]), 1), r["test_ppl_estimator"]]))
    return md_table(["model entry", "model (trained at)", "test PPL", "estimator"], [r for _, r in sorted(rows)],
                    ["l", "l", "r", "l"])


def cpu_quality_gen_ppl(repo: Path) -> str:
    """Generative perplexity under SmolLM2-135M per model entry and alpha_0, every schedule."""
    cells: dict[tuple, list[str]] = {}
    for r, a0, trained in _entry_rows(repo / "results" / "cpu_quality_smollm2"):
        name = r["model_entry"] + (f" (trained α0 = {trained:g})" if trained is not None else "")
        schedule = re.sub(r",?a0=[0-9.]+", "", r["schedule"]) or "default"
        cells.setdefault((name, "" if a0 is None else f"{a0:g}"), []).append(
            f"{schedule}: {fmt(float(r['gen_ppl']), 0)}")
    return md_table(["model entry", "α0 (sampling)", "gen PPL by schedule"],
                    [[name, a0 or "–", "; ".join(v)] for (name, a0), v in cells.items()], ["l", "r", "l"])


FIGURES = {f.__name__: f for f in (cpu_quality_test_ppl, cpu_quality_gen_ppl, paper_speed, paper_speed_floors)}


def block_pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- figures:{name} -->\n)(.*?)(<!-- /figures:{name} -->)", re.S)


def update(text: str, repo: Path = REPO) -> tuple[str, list[str]]:
    """Text with every figures block regenerated, and the names of blocks that changed."""
    changed = []
    for name in sorted(set(re.findall(r"<!-- figures:([A-Za-z0-9_]+) -->", text))):
        if name not in FIGURES:
            raise ValueError(f"block figures:{name} has no generator; use one of {sorted(FIGURES)}")
        pattern = block_pattern(name)
        if not pattern.search(text):
            raise ValueError(f"block figures:{name} has no closing <!-- /figures:{name} -->")
        body = FIGURES[name](repo).rstrip("\n") + "\n"
        if pattern.search(text).group(2) != body:
            changed.append(name)
        text = pattern.sub(lambda m: m.group(1) + body + m.group(3), text)
    return text, changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a block is out of date; write nothing")
    parser.add_argument("--readme", default=str(README), help="the file to check or rewrite (default: %(default)s)")
    args = parser.parse_args(argv)
    path = Path(args.readme)
    text, changed = update(path.read_text())
    if args.check:
        if changed:
            print(f"{path}: figures out of date: {', '.join(changed)}; run python scripts/readme_figures.py",
                  file=sys.stderr)
            return 1
        return 0
    path.write_text(text)
    print(f"{path}: {len(changed)} block(s) rewritten" + (f" ({', '.join(changed)})" if changed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
