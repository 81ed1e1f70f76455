"""Reports: Pareto frontier, plots written, markdown tables, protocol and samples."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from harness import report as rp
from harness.sweep import append_row, safe_name

REPO = Path(__file__).resolve().parents[1]


def row(entry, family, schedule, gen_ppl, seconds, nfe, *, length=64, seed=0, alpha_0=None, alpha_0_train=None,
        test_ppl=None, entropy=4.0, steps=None):
    fields = {}
    if steps is not None:
        fields["steps"] = steps
    if alpha_0 is not None and schedule != "default":
        fields["alpha_0"] = alpha_0
    key = f"{entry}/{schedule}/L{length}/s{seed}"
    metrics = {"gen_ppl": gen_ppl, "gen_ppl_mean": gen_ppl * 1.05, "evaluator": "harness-ar:ar@step300",
               "entropy": entropy, "degenerate": 0, "nfe": nfe, "nfe_per_sample": nfe,
               "tokens_computed_per_sample": nfe * length, "seconds_per_sample": seconds,
               "tokens_per_second": length / seconds, "mauve": None,
               "mauve_note": "not available: install the 'mauve' extra", "telemetry_note": "not available: no CUDA device"}
    if test_ppl is not None:
        metrics.update(test_ppl=test_ppl, test_ppl_estimator="exact" if family == "ar" else "nelbo(draws=1)",
                       test_ppl_split="test", test_ppl_sequences=128)
    return {"sweep": "demo", "key": key, "config_hash": "0" * 16, "model_entry": entry, "family": family,
            "model": family, "schedule": schedule, "schedule_fields": fields, "alpha_0": alpha_0,
            "alpha_0_train": alpha_0_train, "length": length, "seed": seed, "num_samples": 16, "batch_size": 8,
            "metrics": metrics, "device": "cpu", "device_name": "x86_64 CPU (1 threads)", "dtype": "fp32",
            "git_commit": "abc1234", "torch": "2.13.0", "python": "3.11.7", "timestamp": "2026-01-01T00:00:00+00:00"}


def demo_rows():
    rows = [row("ar", "ar", "default", 100.0, 0.010, 63, test_ppl=90.0, entropy=3.9)]
    for t, (g, s) in zip((8, 32, 128), ((900.0, 0.005), (800.0, 0.02), (700.0, 0.08))):
        rows.append(row("mdlm", "mdlm", f"T={t}", g, s, min(t, 64), test_ppl=380.0, steps=t))
    rows.append(row("bd3lm", "bd3lm", "T=2", 950.0, 0.03, 23, test_ppl=460.0, steps=2))
    for a, (g, tp) in zip((1.0, 0.5, 0.25), ((750.0, 330.0), (650.0, 310.0), (600.0, 290.0))):
        for t, extra in ((8, 0.0), (32, -20.0)):
            rows.append(row("esolm-b", "esolm-b", f"T={t},a0={a:g}", g + extra, 0.003 + 0.004 * (1 - a) + t * 1e-4,
                            8 + 56 * (1 - a), alpha_0=a, alpha_0_train=0.25, test_ppl=tp, steps=t, entropy=3.8))
    return rows


def write_results(tmp_path: Path, rows) -> Path:
    out = tmp_path / "results" / "demo"
    (out / "samples").mkdir(parents=True)
    for r in rows:
        append_row(out / "points.jsonl", r)
        (out / "samples" / f"{safe_name(r['key'])}.jsonl").write_text(
            json.dumps({"i": 0, "text": f"sample text of {r['key']}", "entropy": 3.5, "gen_ppl": 99.0}) + "\n")
    (out / "config.yaml").write_text("name: demo\ndescription: A demo sweep for the report test.\n")
    return out


def test_pareto_front():
    xs = [1, 2, 3, 4, 0.5, 5]
    ys = [10, 5, 7, 1, 20, 1]
    # sorted by x: (0.5,20) (1,10) (2,5) (3,7: dominated) (4,1) (5,1: not strictly better)
    assert rp.pareto_front(xs, ys) == [4, 0, 1, 3]
    assert rp.pareto_front([1, float("nan"), 2], [3, 1, 2]) == [0, 2]
    assert rp.pareto_front([], []) == []


def test_report_files_tables_protocol_and_samples(tmp_path):
    rows = demo_rows()
    # a superseded row of the same key (config changed): the newest line must win
    stale = row("ar", "ar", "default", 5000.0, 0.010, 63, test_ppl=90.0)
    results = write_results(tmp_path, [stale] + rows)
    out = rp.write_report(results, out_dir=tmp_path / "report")
    assert out == tmp_path / "report" / "report.md"
    for name in ("pareto_time.png", "pareto_nfe.png", "alpha0.png"):
        data = (tmp_path / "report" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert not (tmp_path / "report" / "speed_vs_length.png").exists()  # one length only
    md = out.read_text()
    assert "A demo sweep for the report test." in md
    for needle in ("harness-ar:ar@step300", "exact, nelbo(draws=1)", "x86_64 CPU (1 thread)", "fp32", "abc1234",
                   "| batch size | 8 |", "![gen PPL vs time](pareto_time.png)", "![perplexity vs alpha_0](alpha0.png)",
                   "sample text of ar/default/L64/s0", "mauve"):
        assert needle in md, needle
    assert "5,000" not in md and "| ar | AR | default | – | 90.00 | 100.00 |" in md
    # frontier by time: esolm-b T=8 a0=1 (0.0038 s) -> esolm-b T=32 a0=1 -> ... -> ar (0.010 s, 100)
    line = next(l for l in md.splitlines() if l.startswith("Pareto frontier (gen PPL vs time)"))
    assert line.split(": ", 1)[1].startswith("esolm-b T=8 a0=1") and line.rstrip().endswith("gen PPL 100.0)")
    assert "0.01 s/sample" in line  # every value with its unit
    nfe_line = next(l for l in md.splitlines() if l.startswith("Pareto frontier (gen PPL vs NFE)"))
    assert "NFE 8," in nfe_line
    assert "mdlm" not in line  # every MDLM point is slower and worse than AR
    # table rows in family order with the schedule and alpha_0 columns
    table = [l for l in md.splitlines() if l.startswith("| ") and " | " in l and "L = " not in l]
    families = [l.split(" | ")[1] for l in table if l.split(" | ")[1] in rp.FAMILY_NAMES.values()]
    assert families == ["AR"] + ["MDLM"] * 3 + ["BD3-LM"] + ["Eso-LM (B)"] * 6


def test_every_entry_has_its_own_colour_and_marker():
    import pandas as pd

    from harness.report.plots import entry_styles

    agg = pd.DataFrame({"model_entry": ["ar", "mdlm", "esolm-b", "esolm-b-a1", "esolm-b-x", "mine"],
                        "family": ["ar", "mdlm", "esolm-b", "esolm-b", "esolm-b", "custom"]})
    styles = entry_styles(agg)
    assert len({c for c, _ in styles.values()}) == 6 and len({m for _, m in styles.values()}) == 6
    assert styles["esolm-b"][0] == rp.FAMILY_COLORS["esolm-b"]  # a family's first entry keeps its colour


def test_labels_never_overlap_each_other_and_avoid_markers_where_there_is_room():
    import random

    from harness.report.plots import place_labels, pyplot

    plt = pyplot()
    rng = random.Random(0)
    for crowd, spread in ((40, 0.05), (12, 1.0)):  # a tight cluster, and points with room around them
        fig, ax = plt.subplots(figsize=(8, 6), dpi=100)
        pts = [(1 + spread * rng.random(), 1 + spread * rng.random()) for _ in range(crowd)]
        ax.scatter(*zip(*pts))
        ax.set_xlim(0.5, 2.5)
        ax.set_ylim(0.5, 2.5)
        boxes = place_labels(fig, ax, [(p, str(i + 1), "k") for i, p in enumerate(pts)])
        assert len(boxes) == crowd
        for i, a in enumerate(boxes):
            for b in boxes[:i]:
                assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1], (a, b)
        if spread == 1.0:
            r = 7 * fig.dpi / 72
            for a in boxes:
                for x, y in (ax.transData.transform(p) for p in pts):
                    assert a[2] < x - r or x + r < a[0] or a[3] < y - r or y + r < a[1]
        plt.close(fig)


def test_plot_points_are_numbered_in_a_table_with_their_frontiers(tmp_path):
    md = rp.write_report(write_results(tmp_path, demo_rows()), out_dir=tmp_path / "r").read_text()
    table = md.split("The numbered points of the plots:")[1].split("\n## ")[0]
    rows = [l.split(" | ") for l in table.splitlines() if l.startswith("| ") and l[2].isdigit()]
    assert [int(r[0][2:]) for r in rows] == list(range(1, 12))
    by_number = {int(r[0][2:]): r for r in rows}
    time_line = next(l for l in md.splitlines() if l.startswith("Pareto frontier (gen PPL vs time)"))
    on_time = [int(n) for n in __import__("re").findall(r"\(#(\d+),", time_line)]
    assert on_time and all("time" in by_number[n][-1] for n in on_time)
    assert sum("time" in r[-1] for r in rows) == len(on_time)
    assert by_number[1][1:4] == ["ar", "AR", "default"]


def timed(r, repeats):
    """A row with its per-batch repeat timings (batch of 8); the median is seconds_per_batch."""
    r["metrics"].update(seconds_all=repeats, seconds_per_batch=sorted(repeats)[len(repeats) // 2],
                        seconds_per_sample=sorted(repeats)[len(repeats) // 2] / 8)
    return r


def test_speed_spread_of_the_repeats_and_differences_within_it(tmp_path):
    from harness.report.frame import repeat_spread

    assert repeat_spread({"seconds_all": [0.08, 0.10, 0.09], "seconds_per_batch": 0.09,
                          "seconds_per_sample": 0.09 / 8}) == pytest.approx((0.01, 0.0125))
    assert all(math.isnan(v) for v in repeat_spread({"seconds_per_sample": 0.01}))
    rows = [timed(row("ar", "ar", "default", 100.0, 1, 63), [0.080, 0.088, 0.120]),        # 0.0100–0.0150
            timed(row("mdlm", "mdlm", "T=8", 900.0, 1, 8, steps=8), [0.070, 0.076, 0.082]),  # 0.0088–0.0103
            timed(row("mdlm", "mdlm", "T=32", 800.0, 1, 32, steps=32), [0.3, 0.31, 0.32])]
    md = rp.write_report(write_results(tmp_path, rows), out_dir=tmp_path / "r").read_text()
    assert "| 1 | ar | AR | default | 64 | 0.0110 (0.0100–0.0150) |" in md
    assert "may change on another run): #1 and #2." in md  # #3 is far slower than both
    rows[0] = timed(row("ar", "ar", "default", 100.0, 1, 63), [0.090, 0.088, 0.095])  # 0.0110–0.0119: apart
    shutil.rmtree(tmp_path / "results")
    md = rp.write_report(write_results(tmp_path, rows), out_dir=tmp_path / "r").read_text()
    assert "Every speed difference between a point on the time frontier and another point is larger" in md


def test_degenerate_mauve_is_shown_as_such_not_as_a_score(tmp_path):
    from harness.metrics.mauve import DISJOINT_MAUVE

    rows = demo_rows()[:3]
    rows[0]["metrics"].update(mauve=0.61, mauve_degenerate=None)
    rows[1]["metrics"].update(mauve=DISJOINT_MAUVE)  # written before the flag existed
    rows[2]["metrics"].update(mauve=0.25, mauve_degenerate="all generated texts fall into one of 2 clusters")
    md = rp.write_report(write_results(tmp_path, rows), out_dir=tmp_path / "r").read_text()
    table = [l for l in md.split("## Results at L = 64")[1].split("\n## ")[0].splitlines() if l.startswith("| ")]
    mauve = table[0].split(" | ").index("MAUVE")
    assert [l.split(" | ")[mauve] for l in table[2:]] == ["0.610", "degenerate", "degenerate"]
    assert "0.004" not in md and "0.250" not in md
    note = next(l for l in md.splitlines() if l.startswith('- MAUVE is shown as "degenerate" at 2 of 3 points'))
    assert "all generated texts fall into one of 2 clusters" in note and "recognised by its value" in note
    stored = [json.loads(l)["metrics"]["mauve"] for l in (tmp_path / "results/demo/points.jsonl").open()]
    assert stored == [0.61, DISJOINT_MAUVE, 0.25]  # the raw values stay in the rows


def test_perplexity_vs_alpha_0_table(tmp_path):
    """Rows from AR (alpha_0 = 0) through Eso-LM by alpha_0 to MDLM (alpha_0 = 1); gen PPL per
    Eso-LM T (MDLM's T = 128 has no Eso-LM column; AR has no T and fills every column)."""
    md = rp.write_report(write_results(tmp_path, demo_rows()), out_dir=tmp_path / "r").read_text()
    section = md.split("## Eso-LM: perplexity vs alpha_0")[1].split("\n## ")[0]
    lines = [l for l in section.splitlines() if l.startswith("| ")]
    assert lines[0] == "| model entry | alpha_0 | test PPL | gen PPL T=8 | gen PPL T=32 |"
    assert lines[2:] == ["| ar | 0 (AR) | 90.00 | 100.00 | 100.00 |",
                         "| esolm-b (trained a0=0.25) | 0.25 | 290.00 | 600.00 | 580.00 |",
                         "| esolm-b (trained a0=0.25) | 0.5 | 310.00 | 650.00 | 630.00 |",
                         "| esolm-b (trained a0=0.25) | 1 | 330.00 | 750.00 | 730.00 |",
                         "| mdlm | 1 (MDLM) | 380.00 | 900.00 | 800.00 |"]
    assert "At L = 64; test PPL: exact for AR" in section


def test_seeds_are_averaged_and_lengths_get_their_own_tables(tmp_path):
    rows = [row("ar", "ar", "default", 100.0, 0.01, 63, seed=0), row("ar", "ar", "default", 120.0, 0.03, 63, seed=1),
            row("ar", "ar", "default", 90.0, 0.05, 127, length=128),
            row("mdlm", "mdlm", "T=8", 900.0, 0.005, 8, steps=8),
            row("mdlm", "mdlm", "T=8", 800.0, 0.01, 8, steps=8, length=128)]
    out = rp.write_report(write_results(tmp_path, rows), out_dir=tmp_path / "r")
    md = out.read_text()
    assert "## Results at L = 64" in md and "## Results at L = 128" in md
    assert "| ar | AR | default | – | 110.00 |" in md  # mean of the two seeds
    assert (tmp_path / "r" / "speed_vs_length.png").is_file()
    assert not (tmp_path / "r" / "alpha0.png").exists()  # no Eso-LM rows


def test_speed_only_sweep_has_no_quality_plots(tmp_path):
    rows = [row(e, f, s, float("nan"), sec, n, length=L) for e, f, s, sec, n in
            (("ar", "ar", "default", 0.1, 1023), ("mdlm", "mdlm", "T=128", 0.05, 128)) for L in (1024, 2048)]
    for r in rows:
        r["metrics"]["gen_ppl"] = None
    out = rp.write_report(write_results(tmp_path, rows), out_dir=tmp_path / "r")
    assert not (tmp_path / "r" / "pareto_time.png").exists()
    assert (tmp_path / "r" / "speed_vs_length.png").is_file()
    assert "gen PPL" not in out.read_text().split("## Speed vs quality")[0].split("## Results")[1]


def test_sample_boundaries_section(tmp_path):
    """Shown for quality points that carry the boundary counts (rows from before them, and
    speed-only sweeps, get no section); percentages of samples, EOS inside per sample."""
    rows = demo_rows()
    assert "## Sample boundaries" not in rp.write_report(write_results(tmp_path, rows), tmp_path / "a").read_text()
    rows[0]["metrics"].update(bos_first=1.0, eos_last=0.9375, eos_inside_per_sample=0.125)
    rows[1]["metrics"].update(bos_first=0.375, eos_last=0.875, eos_inside_per_sample=0.5)
    md = rp.write_report(write_results(tmp_path / "b", rows), tmp_path / "b" / "r").read_text()
    section = md.split("## Sample boundaries")[1].split("\n## ")[0]
    lines = [l for l in section.splitlines() if l.startswith("| ")]
    assert lines[2:] == ["| ar | AR | default | 64 | 100 | 94 | 0.12 |",
                         "| mdlm | MDLM | T=8 | 64 | 38 | 88 | 0.50 |"]
    speed = [row("ar", "ar", "default", float("nan"), 0.1, 1023, length=1024, entropy=None)]
    speed[0]["metrics"].update(gen_ppl=None, bos_first=0.0, eos_last=0.0, eos_inside_per_sample=3.0)
    assert "## Sample boundaries" not in rp.write_report(write_results(tmp_path / "c", speed),
                                                         tmp_path / "c" / "r").read_text()


def test_empty_results_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="run 'esolm sweep CONFIG' first"):
        rp.write_report(tmp_path / "empty")
    (tmp_path / "empty" / "points.jsonl").write_text("")
    with pytest.raises(ValueError, match="no finished points"):
        rp.write_report(tmp_path / "empty")


def test_formatting_helpers():
    assert rp.fmt(None) == "–" and rp.fmt(float("nan")) == "–" and rp.fmt(1234.5678) == "1,234.57"
    assert rp.fmt(1.5e-5, 4) == "1.500e-05" and rp.fmt(0.0086, 4) == "0.0086"
    assert rp.md_table(["a", "b"], [[1, "x|y"]]) == "| a | b |\n| :--- | ---: |\n| 1 | x\\|y |"
    agg = rp.aggregate(_frame([row("ar", "ar", "default", 10.0, 1.0, 3), row("ar", "ar", "default", 20.0, 1.0, 3, seed=1)]))
    assert len(agg) == 1 and math.isclose(agg["gen_ppl"][0], 15.0) and agg["seeds"][0] == 2


def _frame(rows):
    import pandas as pd

    flat = []
    for r in rows:
        item = {k: v for k, v in r.items() if k != "metrics"}
        item.update(r["metrics"])
        flat.append(item)
    return pd.DataFrame(flat)


def test_committed_smoke_report_is_consistent():
    points = REPO / "results" / "smoke" / "points.jsonl"
    if not points.is_file():
        pytest.skip("no committed smoke reference yet")
    md = (REPO / "reports" / "smoke" / "report.md").read_text()
    assert "pareto_time.png" in md and (REPO / "reports" / "smoke" / "pareto_time.png").is_file()
    from harness.sweep import latest_rows, read_points

    keys = latest_rows(read_points(points))
    assert {r["family"] for r in keys.values()} == {"ar", "mdlm", "bd3lm", "esolm-a", "esolm-b"}


# ======================================================================================
# GPU speed sweeps: floors, paper ratios, headline plot
# ======================================================================================
def gpu_row(entry, family, schedule, length, seconds, *, nfe, tokens, steps=None, alpha_0=None, block_size=None,
            group=None, batch_size=1, device="cuda", device_name="NVIDIA H100 80GB HBM3", commit="824a2d1"):
    """A speed-only row shaped like results/paper_speed/points.jsonl."""
    fields = {}
    if steps is not None:
        fields["steps"] = steps
    if alpha_0 is not None:
        fields["alpha_0"] = alpha_0
    if block_size is not None:
        fields["first_hitting"] = True
    return {"sweep": "gpu", "key": f"{entry}/{schedule}/L{length}/s0", "config_hash": "0" * 16, "model_entry": entry,
            "family": family, "model": family, "model_options": {"block_size": block_size} if block_size else {},
            "init": "random", "checkpoint": None, "parameters": 162233856, "train_step": None, "schedule": schedule,
            "schedule_group": group or schedule, "schedule_fields": fields, "alpha_0": alpha_0,
            "alpha_0_train": 0.25 if family == "esolm-b" else None, "length": length, "seed": 0,
            "num_samples": batch_size, "batch_size": batch_size,
            "metrics": {"nfe": float(nfe), "nfe_per_batch": [nfe], "nfe_per_sample": float(nfe) / batch_size,
                        "tokens_computed_per_sample": float(tokens), "seconds_per_sample": seconds,
                        "tokens_per_second": length / seconds, "seconds_per_batch": seconds * batch_size,
                        "telemetry_note": None},
            "device": device, "device_name": device_name, "dtype": "bf16", "git_commit": commit, "torch": "2.11.0",
            "python": "3.12.3", "timestamp": "2026-11-23T04:28:35+00:00", "matmul_parameters": 123635712,
            "weight_bytes": 247271424}


def gpu_rows(**kw):
    """L = 1024 and 2048: AR, MDLM T = L/8 and T = L (mdlm-TL), BD3-LM L' = 4 / 16, Eso-LM (B);
    at L = 2048 BD3-LM L' = 16 and Eso-LM T = L are missing."""
    rows = []
    for L in (1024, 2048):
        k = L // 1024
        rows += [gpu_row("ar", "ar", "default", L, 1.0 * k, nfe=L - 1, tokens=L - 1, **kw),
                 gpu_row("mdlm", "mdlm", f"T={L // 8}", L, 10.0 * k, nfe=L // 8, tokens=L // 8 * L, steps=L // 8,
                         group="T=L/8", **kw),
                 gpu_row("mdlm-TL", "mdlm", f"T={L}", L, 60.0 * k, nfe=L, tokens=L * L, steps=L, group="T=L", **kw),
                 gpu_row("bd3lm-4", "bd3lm", "fh=True", L, 2.0 * k, nfe=L + L // 4, tokens=5 * L, block_size=4, **kw),
                 gpu_row("esolm-b", "esolm-b", f"T={L // 8},a0=1", L, 0.5 * k, nfe=L // 8, tokens=2 * L,
                         steps=L // 8, alpha_0=1.0, group="T=L/8,a0=1", **kw),
                 gpu_row("esolm-b", "esolm-b", "T=128,a0=0.25", L, 1.5 * k, nfe=800, tokens=2 * L, steps=128,
                         alpha_0=0.25, **kw)]
        if L == 1024:
            rows += [gpu_row("bd3lm-16", "bd3lm", "fh=True", L, 3.0, nfe=L + 64, tokens=17 * L, block_size=16, **kw),
                     gpu_row("esolm-b", "esolm-b", f"T={L},a0=1", L, 0.8, nfe=L, tokens=2 * L, steps=L, alpha_0=1.0,
                             group="T=L,a0=1", **kw)]
    return rows


def write_gpu_results(tmp_path: Path, rows, ceilings=None) -> Path:
    out = tmp_path / "results" / "gpu"
    out.mkdir(parents=True)
    for r in rows:
        append_row(out / "points.jsonl", r)
    if ceilings is not None:
        (out / "ceilings.json").write_text(json.dumps(ceilings))
    return out


def test_floor_arithmetic():
    # read: 100 forwards x 1 GB / 1 TB/s = 0.1 s per batch; compute: 2 x 5e8 x 2000 x 4 / 1e14 = 0.08 s
    assert math.isclose(rp.floor_seconds(100, 2000, 4, 1e9, 5e8, 1e14, 1e12), 0.1 / 4, rel_tol=1e-12)
    # twice the tokens: compute-bound, 0.16 s per batch
    assert math.isclose(rp.floor_seconds(100, 4000, 4, 1e9, 5e8, 1e14, 1e12), 0.16 / 4, rel_tol=1e-12)
    # attention arithmetic adds to the matmuls': 1e12 FLOPs per sample x 4 / 1e14 = 0.04 s more
    assert math.isclose(rp.floor_seconds(100, 4000, 4, 1e9, 5e8, 1e14, 1e12, 0.0, 1e12), 0.2 / 4, rel_tol=1e-12)


def floors_with_and_without(tmp_path, row: dict, counter: str) -> tuple[float, float]:
    """The floors of ``row`` and of a copy made before ``counter`` existed, under 100
    TFLOP/s and 1 TB/s ceilings."""
    old = json.loads(json.dumps(row))
    del old["metrics"][counter]
    old["key"] = row["key"].replace("/L", "-old/L")
    results = write_gpu_results(tmp_path, [row, old], {"matmul_flops": 1e14, "copy_bytes_per_s": 1e12, "source": "t"})
    df = rp.load_frame(results)
    rp.add_floors(df, results)
    return df["floor_seconds_per_sample"][0], df["floor_seconds_per_sample"][1]


def test_floor_counts_kv_cache_reads_where_rows_carry_them(tmp_path):
    row = gpu_row("ar", "ar", "default", 1024, 0.5, nfe=100, tokens=2000, batch_size=4)
    row.update(weight_bytes=1e9, matmul_parameters=5e8, kv_bytes_per_key=1e6)
    row["metrics"]["key_reads_per_sample"] = 12500.0  # 12.5 GB per sample: 50 GB more per batch
    counted, older = floors_with_and_without(tmp_path, row, "key_reads_per_sample")
    assert math.isclose(counted, (100 * 1e9 + 4 * 12500 * 1e6) / 1e12 / 4, rel_tol=1e-12)
    assert math.isclose(older, 100 * 1e9 / 1e12 / 4, rel_tol=1e-12)  # no counter: none


def test_floor_counts_attention_arithmetic_where_rows_carry_it(tmp_path):
    row = gpu_row("mdlm", "mdlm", "T=8", 1024, 0.5, nfe=8, tokens=8192, batch_size=4)
    row.update(weight_bytes=1e9, matmul_parameters=5e8, attention_flops_per_pair=4 * 768 * 12)
    row["metrics"]["attention_pairs_per_sample"] = 8 * 1024 ** 2  # 8 full forwards, L x L pairs each
    counted, older = floors_with_and_without(tmp_path, row, "attention_pairs_per_sample")
    matmuls, attention = 2 * 5e8 * 8192, 4 * 768 * 12 * 8 * 1024 ** 2
    assert math.isclose(counted, (matmuls + attention) / 1e14, rel_tol=1e-12)
    assert math.isclose(older, matmuls / 1e14, rel_tol=1e-12)  # no counter: none


def test_floor_columns_and_ceiling_sources(tmp_path):
    rows = [gpu_row("ar", "ar", "default", 1024, 0.5, nfe=100, tokens=2000, batch_size=4)]
    rows[0].update(weight_bytes=1e9, matmul_parameters=5e8)
    ceil = {"matmul_flops": 1e14, "copy_bytes_per_s": 1e12, "source": "hand-made test ceilings"}
    results = write_gpu_results(tmp_path, rows, ceil)
    (results / "gpu_bench.json").write_text(json.dumps({"ceilings": {"matmul_flops": 1.0, "copy_bytes_per_s": 1.0}}))
    md = rp.write_report(results, out_dir=tmp_path / "r").read_text()
    assert "| floor_s | x floor |" in md and "| 0.5000 | 0.0250 | 20.0× |" in md  # ceilings.json wins
    assert "hand-made test ceilings" in md and "query-key pairs the attention masks allow" in md
    assert "Measured on NVIDIA H100 80GB HBM3, batch size 4, bf16, commit 824a2d1." in md
    (results / "ceilings.json").unlink()  # then gpu_bench.json
    md = rp.write_report(results, out_dir=tmp_path / "r").read_text()
    assert "gpu_bench.json" in md and "| 0.5000 | 2.000e+12 |" in md
    (results / "gpu_bench.json").unlink()  # then the built-in H100 figures (PERF_H100)
    df = rp.load_frame(results)
    used = rp.add_floors(df, results)
    assert used == [rp.PERF_H100]
    assert math.isclose(df["floor_seconds_per_sample"][0], max(100 * 1e9 / 2.9e12, 2 * 5e8 * 2000 * 4 / 759e12) / 4)


def test_speed_ratios_headline_and_csv(tmp_path):
    results = write_gpu_results(tmp_path, gpu_rows())
    md = rp.write_report(results, out_dir=tmp_path / "r").read_text()
    png = (tmp_path / "r" / "speed_headline.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert "![seconds per sample vs L, paper settings](speed_headline.png)" in md
    section = md.split("## Speed ratios")[1].split("\n## ")[0]
    lines = section.splitlines()
    header = next(l for l in lines if l.startswith("| length"))
    assert header == ("| length | MDLM / Eso-LM T=L/8 | MDLM / Eso-LM T=L | BD3-LM L'=4 / Eso-LM T=L | "
                      "BD3-LM L'=16 / Eso-LM T=L |")
    # L = 1024: MDLM 10 s / Eso 0.5 s = 20; mdlm-TL 60 / 0.8 = 75; BD3-LM 2 / 0.8 = 2.5 and 3 / 0.8 = 3.75
    assert "| L = 1024 | 20.0× | 75.0× | 2.5× | 3.8× |" in lines
    # L = 2048: Eso-LM T = L and BD3-LM L' = 16 missing
    assert "| L = 2048 | 20.0× | — | — | — |" in lines
    assert "| paper (Eso-LM (B), L up to 8192) | 14–65× | 14–65× | 3–4× | 3–4× |" in lines
    assert "| L = 1024 | 10.0000 | 0.5000 | 60.0000 | 0.8000 | 2.0000 | 3.0000 |" in lines
    assert "| L = 2048 | 20.0000 | 1.0000 | 120.0000 | — | 4.0000 | — |" in lines
    assert "Measured on NVIDIA H100 80GB HBM3, batch size 1, bf16, commit 824a2d1." in section
    import csv

    table = list(csv.DictReader((tmp_path / "r" / "speed_ratios.csv").open()))
    assert [r["length"] for r in table] == ["1024", "2048"]
    assert float(table[0]["MDLM / Eso-LM T=L/8"]) == 20.0 and table[1]["MDLM / Eso-LM T=L"] == ""


def test_speed_ratios_need_eso_lm(tmp_path):
    rows = [r for r in gpu_rows() if r["family"] != "esolm-b"]
    md = rp.write_report(write_gpu_results(tmp_path, rows), out_dir=tmp_path / "r").read_text()
    assert "## Speed ratios" not in md and not (tmp_path / "r" / "speed_ratios.csv").exists()
    assert (tmp_path / "r" / "speed_headline.png").is_file() and "x floor" in md


def test_cpu_rows_get_no_floor_ratios_or_headline(tmp_path):
    rows = gpu_rows(device="cpu", device_name="x86_64 CPU (2 threads)")
    md = rp.write_report(write_gpu_results(tmp_path, rows), out_dir=tmp_path / "r").read_text()
    assert "floor_s" not in md and "x floor" not in md and "Floor (" not in md and "## Speed ratios" not in md and "speed_headline" not in md
    assert not (tmp_path / "r" / "speed_headline.png").exists()
    assert not (tmp_path / "r" / "speed_ratios.csv").exists()
    assert not (tmp_path / "r" / "speed_ratios_at_floor.csv").exists() and "at the floors" not in md
    assert (tmp_path / "r" / "speed_vs_length.png").is_file()


def test_default_report_folder_follows_the_results_folder(tmp_path, monkeypatch):
    """A re-scored copy (results/demo_smollm2, same sweep name) gets its own report folder."""
    results = write_results(tmp_path, [row("ar", "ar", "default", 100.0, 0.01, 63)])
    copy = results.with_name("demo_smollm2")
    shutil.copytree(results, copy)
    monkeypatch.chdir(tmp_path)
    assert rp.write_report(results).resolve() == (tmp_path / "reports/demo/report.md").resolve()
    assert rp.write_report(copy).resolve() == (tmp_path / "reports/demo_smollm2/report.md").resolve()
    assert (tmp_path / "reports" / "demo" / "report.md").is_file()


def test_default_report_folder_sits_beside_the_results_root():
    """make smoke writes out/results/smoke; its report must not overwrite the committed reports/smoke."""
    assert rp.default_report_dir(Path("results/smoke")) == Path("reports/smoke")
    assert rp.default_report_dir(Path("out/results/smoke")) == Path("out/reports/smoke")
    assert rp.default_report_dir(Path("/tmp/candidate/smoke")) == Path("/tmp/candidate/reports/smoke")
    assert rp.default_report_dir(Path("smoke")) == Path("reports/smoke")


def test_a_report_of_other_results_is_never_replaced_without_force(tmp_path, monkeypatch, capsys):
    from harness.cli import main
    from harness.report.write import SOURCE_FILE, ReportExists

    mine = write_results(tmp_path, demo_rows())
    other = tmp_path / "elsewhere" / "demo"
    shutil.copytree(mine, other)
    out = tmp_path / "reports" / "demo"
    rp.write_report(mine, out_dir=out)
    assert (out / SOURCE_FILE).read_text() == "../../results/demo\n"  # relative: survives a moved checkout
    before = (out / "report.md").read_text()
    rp.write_report(mine, out_dir=out)  # the same results: replaced freely
    with pytest.raises(ReportExists, match="holds the report of .*results/demo, not of .*elsewhere/demo; pass "
                                           "--out DIR for a new folder or --force"):
        rp.write_report(other, out_dir=out)
    assert (out / "report.md").read_text() == before
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(other), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.count("\n") == 0 and "--force" in err
    # the new user's case: results not under results/ go beside them, not to ./reports
    main(["report", "elsewhere/demo"])
    assert (tmp_path / "elsewhere" / "reports" / "demo" / "report.md").is_file()
    assert (out / "report.md").read_text() == before
    main(["report", str(other), "--out", str(out), "--force"])
    assert (out / SOURCE_FILE).read_text() == "../../elsewhere/demo\n"
    # a report from before source.txt: its protocol table names the results (relative to the cwd)
    (out / SOURCE_FILE).unlink()
    with pytest.raises(ReportExists):
        rp.write_report(mine, out_dir=out)
    rp.write_report(other, out_dir=out)


def test_report_out_naming_a_file_is_one_line(tmp_path, capsys):
    """--out EXISTING_FILE used to end in a FileExistsError traceback."""
    from harness.cli import main

    mine = write_results(tmp_path, demo_rows())
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(mine), "--out", str(tmp_path / "notes.txt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "notes.txt is a file, not a folder" in err[0], err
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_sweep_keeps_its_results_when_the_report_folder_is_taken(tmp_path, capsys):
    from harness.report.write import SOURCE_FILE
    from harness.sweep import run_sweep

    taken = tmp_path / "reports" / "t"
    taken.mkdir(parents=True)
    (taken / SOURCE_FILE).write_text("../../somewhere/else\n")
    cfg = tmp_path / "t.yaml"
    cfg.write_text(json.dumps({
        "name": "t", "lengths": [16], "num_samples": 2, "batch_size": 2, "metrics": ["entropy"], "device": "cpu",
        "models": [{"name": "ar", "init": "random", "train": {
            "model": "ar", "backbone": {"preset": "tiny"}, "data": {"seq_len": 16, "bpe_vocab_size": 300}}}]}))
    results = run_sweep(cfg, results_root=tmp_path / "results", progress=False)
    assert len((results / "points.jsonl").read_text().splitlines()) == 1
    assert "report not written: " in capsys.readouterr().err and not (taken / "report.md").exists()


def test_speed_ratios_at_the_floors(tmp_path):
    """The ratios again with each point's floor in place of its time: MDLM T = 128 at L = 1024
    is compute-bound (2 x 5e8 x 131072 / 1e14 = 1.31 s), Eso-LM (B) T = 128 read-bound
    (128 x 1e9 / 1e12 = 0.128 s): 10.24x."""
    rows = gpu_rows()
    for r in rows:
        r.update(weight_bytes=1e9, matmul_parameters=5e8)
    results = write_gpu_results(tmp_path / "b", rows, {"matmul_flops": 1e14, "copy_bytes_per_s": 1e12, "source": "t"})
    md = rp.write_report(results, out_dir=tmp_path / "b" / "r").read_text()
    section = md.split("### The same ratios at the floors")[1].split("\n## ")[0]
    assert "| L = 1024 | 10.2× |" in section and "| L = 1024 | 1.3107 | 0.1280 |" in section
    import csv

    table = list(csv.DictReader((tmp_path / "b" / "r" / "speed_ratios_at_floor.csv").open()))
    assert math.isclose(float(table[0]["MDLM / Eso-LM T=L/8"]), 2 * 5e8 * 131072 / 1e14 / 0.128, rel_tol=1e-12)


def test_rows_of_two_sweeps_in_one_file_are_refused(tmp_path):
    rows = [row("ar", "ar", "default", 100.0, 0.01, 63)]
    other = json.loads(json.dumps(rows[0]))
    other["sweep"] = "other"
    results = write_results(tmp_path, rows + [other])
    with pytest.raises(ValueError, match=r"rows of sweeps \['demo', 'other'\]"):
        rp.load_frame(results)


def test_plot_points_of_one_entry_differ_by_schedule_and_none_hides_another():
    """A one-model sweep drew every point alike, and a point could sit unseen under another."""
    import pandas as pd

    from harness.report.plots import _close, schedule_markers

    agg = pd.DataFrame({"model_entry": ["m", "m", "m", "n"], "schedule": ["T=8", "T=32", "T=8", "T=8"]})
    markers = schedule_markers(agg)
    assert len({markers[("m", "T=8")], markers[("m", "T=32")]}) == 2 and len(markers) == 3
    xs, ys = pd.Series([8.0, 100.0]), pd.Series([100.0, 1000.0])
    assert _close((8.0, 1100.0), (8.0, 1110.0), xs, ys) and not _close((8.0, 1100.0), (9.0, 1100.0), xs, ys)
