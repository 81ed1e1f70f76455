"""The papers' figures beside rows of imported checkpoints (harness.report.paper)."""

from __future__ import annotations

import json
from pathlib import Path

from harness import report as rp
from harness.report.frame import load_frame
from harness.report.paper import FIGURES, find_figure, paper_rows
from harness.schedules import SamplingSchedule
from harness.sweep import append_row, safe_name

CONFIG = """name: paper_demo
models:
  - {name: ar, checkpoint: /data/ar-owt.ckpt, model: ar}
  - {name: mdlm, checkpoint: "hf:/data/mdlm-owt", model: mdlm}
  - {name: bd3lm-4, checkpoint: "hf:/data/bd3lm-owt-block_size4", model: bd3lm}
  - {name: bd3lm-8, checkpoint: "hf:/data/bd3lm-owt-block_size8", model: bd3lm}
  - {name: esolm-b-a1, checkpoint: "hf:/data/Eso-LM-B-alpha-1", model: esolm-b}
  - {name: mdlm-mine, checkpoint: runs/mine/mdlm/checkpoint.pt, model: mdlm}
"""


def point(entry, family, fields, *, gen_mean, test_ppl, length=1024, block_size=None, alpha_0=None,
          evaluator="gpt2-large", seed=0):
    """A row as harness/sweep/point.py writes it (the fields the report reads), framed and
    scored as the family's own repository does."""
    label = SamplingSchedule(**fields).label()
    options = {"eps": 1e-3}
    if block_size is not None:
        options.update(block_size=block_size, clip=None, ignore_bos=True, mask_rate="bd3lms")
    if alpha_0 is not None:
        options.update(alpha_0=alpha_0, batch_split=0.5)
    estimator = "exact" if family == "ar" else "nelbo(draws=1)"
    metrics = {"nfe": 1023.0, "nfe_per_sample": 1023.0, "tokens_computed_per_sample": 1023.0, "entropy": 5.6,
               "degenerate": 0, "gen_ppl": gen_mean * 0.9, "gen_ppl_mean": gen_mean, "gen_ppl_tokens": 60000,
               "evaluator": evaluator, "test_ppl": test_ppl, "test_ppl_estimator": estimator,
               "test_ppl_exact": family == "ar", "test_ppl_sequences": 1024, "test_ppl_split": "test"}
    return {"sweep": "paper_demo", "key": f"{entry}/{label}/L{length}/s{seed}", "config_hash": "0" * 16,
            "model_entry": entry, "family": family, "model": family, "model_options": options, "init": "checkpoint",
            "checkpoint": f"runs/paper_demo/{entry}/checkpoint.pt", "parameters": 169_000_000, "train_step": 0,
            "schedule": label, "schedule_group": label, "schedule_fields": fields, "alpha_0": alpha_0,
            "alpha_0_train": alpha_0, "data_protocol": "owt",
            "data_framing": "raw" if family in ("bd3lm", "esolm-a", "esolm-b") else "bos_eos",
            "length": length, "seed": seed, "num_samples": 64, "batch_size": 16,
            "metrics": metrics, "device": "cuda", "device_name": "NVIDIA H100", "dtype": "bf16", "step_mode": "graph",
            "git_commit": "abc1234", "torch": "2.13.0", "python": "3.11.7",
            "timestamp": "2026-01-01T00:00:00+00:00"}


def demo_points():
    return [
        point("ar", "ar", {"top_p": 0.9}, gen_mean=15.0, test_ppl=18.0),
        point("ar", "ar", {}, gen_mean=40.0, test_ppl=18.0),  # top_p 1: not the paper's sampler
        point("mdlm", "mdlm", {"steps": 1024, "top_p": 0.9}, gen_mean=50.0, test_ppl=23.5),
        point("mdlm", "mdlm", {"steps": 1024, "top_p": 0.9}, gen_mean=44.0, test_ppl=23.5, seed=1),
        point("mdlm", "mdlm", {"steps": 16, "top_p": 0.9}, gen_mean=110.0, test_ppl=23.5),
        point("bd3lm-4", "bd3lm", {"first_hitting": True, "top_p": 0.9}, gen_mean=27.0, test_ppl=21.0, block_size=4),
        point("bd3lm-8", "bd3lm", {"first_hitting": True, "top_p": 0.9}, gen_mean=30.0, test_ppl=22.0, block_size=8),
        point("esolm-b-a1", "esolm-b", {"steps": 1024, "top_p": 0.9}, gen_mean=60.0, test_ppl=25.0, alpha_0=1.0),
        point("mdlm-mine", "mdlm", {"steps": 1024, "top_p": 0.9}, gen_mean=47.0, test_ppl=23.0),
    ]


def write_results(tmp_path: Path, rows, config: str = CONFIG) -> Path:
    out = tmp_path / "results" / "paper_demo"
    (out / "samples").mkdir(parents=True)
    for r in rows:
        append_row(out / "points.jsonl", r)
        (out / "samples" / f"{safe_name(r['key'])}.jsonl").write_text(json.dumps({"i": 0, "text": "x"}) + "\n")
    (out / "config.yaml").write_text(config)
    return out


def by(rows, entry, metric, schedule="–"):
    [hit] = [r for r in rows if r["entry"] == entry and r["metric"] == metric and r["schedule"] == schedule]
    return hit


def test_rows_get_the_papers_figure_only_under_the_papers_protocol(tmp_path):
    results = write_results(tmp_path, demo_points())
    rows = paper_rows(load_frame(results), results)
    assert {r["entry"] for r in rows} == {"ar", "mdlm", "bd3lm-4", "bd3lm-8", "esolm-b-a1"}  # not mdlm-mine
    assert by(rows, "ar", "test_ppl")["figure"].value == 17.54
    assert by(rows, "mdlm", "test_ppl")["figure"].value == 22.98
    assert by(rows, "bd3lm-4", "test_ppl")["figure"].value == 20.73
    assert by(rows, "bd3lm-8", "test_ppl")["figure"].value == 21.68
    assert by(rows, "ar", "gen_ppl", "p=0.9")["figure"].value == 14.1
    mdlm = by(rows, "mdlm", "gen_ppl", "T=1024,p=0.9")
    assert mdlm["figure"].value == 46.8 and mdlm["measured"] == 47.0  # gen_ppl_mean, seeds averaged
    assert by(rows, "bd3lm-4", "gen_ppl", "fh=True,p=0.9")["figure"].value == 25.7
    # measured, but not under the paper's protocol (or no published figure): no figure, and why
    assert "top_p = 1" in by(rows, "ar", "gen_ppl", "default")["note"]
    assert "T = 16" in by(rows, "mdlm", "gen_ppl", "T=16,p=0.9")["note"]
    for r in (by(rows, "bd3lm-8", "gen_ppl", "fh=True,p=0.9"), by(rows, "esolm-b-a1", "test_ppl"),
              by(rows, "ar", "gen_ppl", "default"), by(rows, "mdlm", "gen_ppl", "T=16,p=0.9")):
        assert r["figure"] is None and r["note"]
    assert len([r for r in rows if r["metric"] == "test_ppl"]) == 5  # one per entry, not per schedule


def test_protocol_mismatches_get_no_figure():
    base = point("bd3lm-4", "bd3lm", {"first_hitting": True, "top_p": 0.9}, gen_mean=27.0, test_ppl=21.0,
                 block_size=4)
    flat = {**{k: v for k, v in base.items() if k != "metrics"}, **base["metrics"]}
    assert find_figure(flat, "gen_ppl")[0].value == 25.7
    assert find_figure(flat, "test_ppl")[0].value == 20.73
    cases = {
        "evaluator": ({**flat, "evaluator": "SmolLM2-135M-Instruct-Q4_1"}, "gen_ppl"),
        "L = 2048": ({**flat, "length": 2048}, "gen_ppl"),
        "first hitting": ({**flat, "schedule_fields": {"steps": 4, "top_p": 0.9}}, "gen_ppl"),
        "recorded": ({**flat, "model_options": {"block_size": 2}}, "test_ppl"),
        "estimator": ({**flat, "test_ppl_estimator": "exact"}, "test_ppl"),
        "framing bos_eos": ({**flat, "data_framing": "bos_eos"}, "test_ppl"),
        "position 0 masked": ({**flat, "model_options": {"block_size": 4, "ignore_bos": False,
                                                         "mask_rate": "bd3lms"}}, "test_ppl"),
        "(1 − eps)·t": ({**flat, "model_options": {"block_size": 4, "ignore_bos": True, "mask_rate": "mdlm"}},
                        "test_ppl"),
    }
    for why, (row, metric) in cases.items():
        fig, note = find_figure(row, metric)
        assert fig is None and why in note, (why, note)
    ar = point("ar", "ar", {"top_p": 0.9}, gen_mean=15.0, test_ppl=18.0)
    ar_flat = {**{k: v for k, v in ar.items() if k != "metrics"}, **ar["metrics"]}
    ar_flat["test_ppl_estimator"] = "nelbo(draws=1)"
    assert find_figure(ar_flat, "test_ppl")[0] is None  # the AR figure is exact, not a bound
    assert all(f.paper and f.table and f.what for f in FIGURES)


def test_report_section_only_when_a_row_matches(tmp_path):
    results = write_results(tmp_path / "a", demo_points())
    md = rp.write_report(results, out_dir=tmp_path / "a" / "report").read_text()
    assert "## Against the papers" in md
    assert "| mdlm | MDLM | gen PPL | T=1024,p=0.9 | 1024 | bos_eos | 47.00 | ≈ 46.8 | 1.00 |" in md
    assert "| ar | AR | test PPL | – | 1024 | bos_eos | 18.00 | 17.54 | 1.03 |" in md
    assert "| bd3lm-4 | BD3-LM | test PPL | – | 1024 | raw | 21.00 | ≤ 20.73 | 1.01 |" in md
    assert "(1)" in md and "Source: Arriola et al. 2025" in md
    # every imported row under another protocol (top_p 1, SmolLM2 evaluator): no section at all
    other = [point("ar", "ar", {}, gen_mean=40.0, test_ppl=18.0, evaluator="SmolLM2-135M-Instruct-Q4_1", length=64)]
    md = rp.write_report(write_results(tmp_path / "b", other), out_dir=tmp_path / "b" / "report").read_text()
    assert "Against the papers" not in md
