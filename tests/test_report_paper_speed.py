"""The report's "Against the paper's timings": the join of rows to the Eso-LM paper's timing
figures (each figure by its own protocol only), ratios from one run only, and the section in
report.md."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from harness import report as rp
from harness.report import paper_speed as ps
from harness.schedules import SamplingSchedule
from harness.sweep import append_row

REPO = Path(__file__).resolve().parents[1]
H100, H200 = "NVIDIA H100 80GB HBM3", "NVIDIA H200"
TRUNK = 4 * 768 * 12  # attention FLOPs per query-key pair of the paper's 12 x 768 trunk


def point(entry, family, fields, length, batch, seconds, nfe, *, run="run-a", block=None, alpha_0=None,
          device_name=H100, batch_nfe=None, seed=0, flops=TRUNK, sweep="paper_demo"):
    """A speed-only row shaped like results/paper_speed/points.jsonl (``seconds``: per batch)."""
    schedule = SamplingSchedule(**fields).label()
    options = {"block_size": block, "clip": None, "eps": 0.001} if block else \
        {"alpha_0": 0.25, "batch_split": 0.5, "eps": 0.001} if family == "esolm-b" else {"eps": 0.001}
    return {"sweep": sweep, "key": f"{entry}/{schedule}/L{length}/b{batch}/s{seed}", "config_hash": "0" * 16,
            "model_entry": entry, "family": family, "model": family, "model_options": options, "init": "random",
            "checkpoint": None, "parameters": 162233856, "train_step": None, "schedule": schedule,
            "schedule_group": schedule, "schedule_fields": dict(fields), "alpha_0": alpha_0,
            "alpha_0_train": 0.25 if family == "esolm-b" else None, "length": length, "seed": seed,
            "num_samples": batch, "batch_size": batch, "sub_batch": batch, "batch_grid": batch > 1,
            "metrics": {"nfe": float(batch_nfe or nfe), "nfe_per_batch": [batch_nfe or nfe],
                        "nfe_per_sample": float(nfe), "tokens_computed_per_sample": float(length),
                        "seconds_per_sample": seconds / batch, "tokens_per_second": length * batch / seconds,
                        "seconds_per_batch": seconds, "seconds_all": [seconds], "telemetry_note": None},
            "device": "cuda", "device_name": device_name, "dtype": "bf16", "step_mode": "graph", "run_id": run,
            "git_commit": "824a2d1", "torch": "2.11.0", "python": "3.12.3",
            "timestamp": "2026-11-23T04:28:35+00:00", "matmul_parameters": 123635712, "weight_bytes": 247271424,
            "kv_bytes_per_key": 36864, "attention_flops_per_pair": flops}


def lat(entry, family, fields, length, seconds, **kw):
    return point(entry, family, fields, length, 1, seconds, kw.pop("nfe", length), **kw)


def thr(entry, family, fields, seconds, nfe, **kw):
    return point(entry, family, {**fields, "top_p": 0.9}, 1024, 512, seconds, nfe, device_name=H200, **kw)


def figure(protocol, length, method) -> ps.Timing:
    return next(t for t in ps.TIMINGS if (t.protocol, t.length, t.method) == (protocol, length, method))


def intended() -> list[tuple[ps.Timing, dict]]:
    """Every figure with the row of our configs that runs its protocol."""
    out = []
    for L in (2048, 8192):
        out += [(figure("latency", L, "AR"), lat("ar", "ar", {}, L, 1.0)),
                (figure("latency", L, "MDLM"), lat("mdlm", "mdlm", {"first_hitting": True}, L, 1.0)),
                (figure("latency", L, "BD3-LM L' = 4"),
                 lat("bd3lm-4", "bd3lm", {"first_hitting": True}, L, 1.0, block=4)),
                (figure("latency", L, "BD3-LM L' = 16"),
                 lat("bd3lm-16", "bd3lm", {"first_hitting": True}, L, 1.0, block=16)),
                (figure("latency", L, "Eso-LM (B)"),
                 lat("esolm-b", "esolm-b", {"alpha_0": 1.0, "steps": 1000000}, L, 1.0, alpha_0=1.0))]
    out += [(figure("throughput", 1024, f"MDLM T = {T}"), thr("mdlm", "mdlm", {"steps": T}, 1.0, T))
            for T in (128, 1024, 4096)]
    out += [(figure("throughput", 1024, f"BD3-LM L' = {b}, T = 4096"),
             thr(f"bd3lm-{b}-t4096", "bd3lm", {"steps": steps}, 1.0, 1000, block=b)) for b, steps in ((4, 16), (16, 64))]
    out += [(figure("throughput", 1024, f"Eso-LM (B) α0 = {a:g}, T = {T}"),
             thr("esolm-b", "esolm-b", {"alpha_0": a, "steps": T}, 1.0, T, alpha_0=a))
            for a, T in ((1.0, 16), (1.0, 128), (1.0, 1024), (0.0625, 1024))]
    return out


def test_the_figures_are_the_papers():
    assert len(ps.TIMINGS) == 19 and len({t.key for t in ps.TIMINGS}) == 19
    assert {t.gpu for t in ps.TIMINGS if t.protocol == "latency"} == {"A6000"}
    assert {t.gpu for t in ps.TIMINGS if t.protocol == "throughput"} == {"H200"}
    assert figure("latency", 8192, "MDLM").seconds == 5438.3 and figure("latency", 2048, "AR").table == "11"
    bd3 = figure("throughput", 1024, "BD3-LM L' = 4, T = 4096")
    assert (bd3.nfe, bd3.seconds, bd3.batch, bd3.top_p, bd3.table) == (1180, 60.32, 512, 0.9, "13–15")
    # the paper's ratios as its text states them
    paper = {(n.protocol, n.length, n.method, d.method): ps.ratio_text(n.seconds / d.seconds) for n, d in ps.PAIRS}
    assert paper[("latency", 2048, "MDLM", "Eso-LM (B)")] == "13.8×"
    assert paper[("latency", 8192, "MDLM", "Eso-LM (B)")] == "66.2×"
    assert [paper[("latency", 2048, f"BD3-LM L' = {b}", "Eso-LM (B)")] for b in (16, 4)] == ["1.46×", "1.66×"]
    assert [paper[("latency", 8192, f"BD3-LM L' = {b}", "Eso-LM (B)")] for b in (16, 4)] == ["3.27×", "3.80×"]
    assert [paper[("latency", L, "Eso-LM (B)", "AR")] for L in (2048, 8192)] == ["1.10×", "1.52×"]
    # throughput: the same T where the paper has it, else the nearest NFE
    pairs = {n.method: d.method for n, d in ps.PAIRS if n.protocol == "throughput"}
    assert pairs == {"MDLM T = 128": "Eso-LM (B) α0 = 1, T = 128", "MDLM T = 1024": "Eso-LM (B) α0 = 1, T = 1024",
                     "MDLM T = 4096": "Eso-LM (B) α0 = 0.0625, T = 1024",
                     "BD3-LM L' = 4, T = 4096": "Eso-LM (B) α0 = 0.0625, T = 1024",
                     "BD3-LM L' = 16, T = 4096": "Eso-LM (B) α0 = 0.0625, T = 1024"}


def test_each_figure_is_matched_by_its_own_row_only():
    rows = intended()
    assert len(rows) == len(ps.TIMINGS) and {id(t) for t, _ in rows} == {id(t) for t in ps.TIMINGS}
    for fig, row in rows:
        assert ps.find_timing(row) is fig, fig.method
        # neutral fields (BOS given, per-row noise) and an explicit binomial split keep the match
        for extra in ({"given_bos": True}, {"row_noise": True}):
            assert ps.find_timing({**row, "schedule_fields": {**row["schedule_fields"], **extra}}) is fig
    eso = next(r for f, r in rows if f.method == "Eso-LM (B) α0 = 1, T = 16")
    assert ps.find_timing({**eso, "schedule_fields": {**eso["schedule_fields"], "split": "binomial"}}) is not None


def near_misses(fig: ps.Timing, row: dict):
    """(what differs, the row changed so): none of these is the figure's protocol."""
    fields = row["schedule_fields"]

    def with_fields(**changes):
        new = {k: v for k, v in {**fields, **changes}.items() if v is not None}
        return {**row, "schedule_fields": new}

    if fields.get("first_hitting"):
        yield "T = L, not first hitting", with_fields(first_hitting=None, steps=fig.length)
    elif "steps" in fields:
        yield "another T", with_fields(steps=fields["steps"] * 3)
    yield "another length", {**row, "length": 4096}
    yield "another batch", {**row, "batch_size": 2 if fig.batch == 1 else 256}
    yield "another top_p", with_fields(top_p=0.9 if fig.top_p == 1.0 else 0.95)
    if fig.top_p != 1.0:
        yield "nucleus off", with_fields(top_p=None)
    if fig.family == "bd3lm":
        yield "another block size", {**row, "model_options": {**row["model_options"], "block_size": 8}}
    if fig.family == "esolm-b":
        yield "another alpha_0", {**row, "alpha_0": 0.5, "schedule_fields": {**fields, "alpha_0": 0.5}}
        yield "a fixed split", with_fields(split="fixed")
        yield "Eso-LM (A)", {**row, "family": "esolm-a"}
    yield "another trunk", {**row, "attention_flops_per_pair": 4 * 64 * 2}
    yield "cache-error probes", with_fields(measure_cache_error=True)


def test_near_misses_match_no_figure():
    for fig, row in intended():
        for what, miss in near_misses(fig, row):
            assert ps.find_timing(miss) is None, f"{fig.method} L={fig.length}: {what}"
    # the other block size of the latency table is the other figure, not this one
    _, bd3_4 = next((f, r) for f, r in intended() if f.method == "BD3-LM L' = 4" and f.length == 2048)
    other = ps.find_timing({**bd3_4, "model_options": {**bd3_4["model_options"], "block_size": 16}})
    assert other is figure("latency", 2048, "BD3-LM L' = 16")
    # BD3-LM's T counts every block's steps: 16 per block at L' = 16 is T = 1024, no figure
    _, bd3_16 = next((f, r) for f, r in intended() if f.method == "BD3-LM L' = 16, T = 4096")
    assert ps.find_timing({**bd3_16, "schedule_fields": {"steps": 16, "top_p": 0.9}}) is None
    # a row from before the forward-cost fields: the trunk is unknown, so no figure
    assert ps.find_timing({k: v for k, v in bd3_16.items() if k != "attention_flops_per_pair"}) is None


def write(tmp_path: Path, rows, name="paper_demo") -> Path:
    out = tmp_path / "results" / name
    out.mkdir(parents=True)
    for r in rows:
        append_row(out / "points.jsonl", r)
    (out / "config.yaml").write_text(f"name: {name}\n")
    return out


def latency_rows():
    """Run a: everything at L = 2048, AR and Eso-LM (B) at 8192; MDLM at 8192 resumed in run b;
    plus two batch-1 points with no paper counterpart."""
    eso = {"alpha_0": 1.0, "steps": 1000000}
    return [lat("ar", "ar", {}, 2048, 2.0, nfe=2047), lat("mdlm", "mdlm", {"first_hitting": True}, 2048, 30.0),
            lat("bd3lm-4", "bd3lm", {"first_hitting": True}, 2048, 4.0, block=4, nfe=2559),
            lat("bd3lm-16", "bd3lm", {"first_hitting": True}, 2048, 3.0, block=16, nfe=2175),
            lat("esolm-b", "esolm-b", eso, 2048, 2.5, alpha_0=1.0, nfe=2048),
            lat("esolm-b", "esolm-b", {"alpha_0": 1.0, "steps": 128}, 2048, 0.25, alpha_0=1.0, nfe=128),
            lat("mdlm", "mdlm", {"steps": 256}, 2048, 1.0, nfe=256),
            lat("ar", "ar", {}, 8192, 8.0, nfe=8191), lat("esolm-b", "esolm-b", eso, 8192, 12.0, alpha_0=1.0),
            lat("mdlm-8k", "mdlm", {"first_hitting": True}, 8192, 600.0, run="run-b")]


def throughput_rows():
    a1 = {"alpha_0": 1.0}
    return [thr("mdlm", "mdlm", {"steps": 128}, 50.0, 128), thr("mdlm", "mdlm", {"steps": 1024}, 300.0, 650,
                                                                 batch_nfe=1024),
            thr("mdlm", "mdlm", {"steps": 4096}, 400.0, 900, batch_nfe=4096),
            thr("mdlm", "mdlm", {"steps": 8}, 4.0, 8),  # no paper counterpart
            thr("bd3lm-4-t4096", "bd3lm", {"steps": 16}, 50.0, 1180, block=4),
            thr("bd3lm-16-t4096", "bd3lm", {"steps": 64}, 40.0, 990, block=16),
            thr("esolm-b", "esolm-b", {**a1, "steps": 16}, 2.0, 16, alpha_0=1.0),
            thr("esolm-b", "esolm-b", {**a1, "steps": 128}, 4.0, 128, alpha_0=1.0),
            thr("esolm-b", "esolm-b", {**a1, "steps": 1024}, 20.0, 640, alpha_0=1.0),
            thr("esolm-b", "esolm-b", {"alpha_0": 0.0625, "steps": 1024}, 25.0, 1020, alpha_0=0.0625),
            thr("ar", "ar", {}, 30.0, 1023)]  # no paper counterpart


def ratios_by_pair(df) -> dict:
    return {(r["num"].protocol, r["num"].length, r["num"].method, r["run_id"]): r["ours"]
            for r in ps.ratio_rows(ps.timed_points(df))}


def test_our_ratios_come_from_one_run_only(tmp_path):
    df = rp.load_frame(write(tmp_path, latency_rows()))
    ours = ratios_by_pair(df)
    assert math.isclose(ours[("latency", 2048, "MDLM", "run-a")], 12.0)
    assert math.isclose(ours[("latency", 2048, "BD3-LM L' = 4", "run-a")], 1.6)
    assert math.isclose(ours[("latency", 8192, "Eso-LM (B)", "run-a")], 1.5)
    # MDLM at 8192 ran in run b, Eso-LM (B) in run a: no ratio, the paper's still shown
    assert ours[("latency", 8192, "MDLM", None)] is None
    assert ("latency", 8192, "MDLM", "run-a") not in ours and ("latency", 8192, "MDLM", "run-b") not in ours
    # a second run measuring both gives its own ratio beside the first
    more = [lat("ar", "ar", {}, 2048, 4.0, run="run-c", seed=1),
            lat("esolm-b", "esolm-b", {"alpha_0": 1.0, "steps": 1000000}, 2048, 6.0, alpha_0=1.0, run="run-c", seed=1)]
    df = rp.load_frame(write(tmp_path / "two", latency_rows() + more))
    ours = ratios_by_pair(df)
    assert math.isclose(ours[("latency", 2048, "Eso-LM (B)", "run-a")], 1.25)
    assert math.isclose(ours[("latency", 2048, "Eso-LM (B)", "run-c")], 1.5)
    # rows without a run id (written before the field) give no ratio
    old = [{k: v for k, v in r.items() if k != "run_id"} for r in latency_rows()]
    assert all(v is None for v in ratios_by_pair(rp.load_frame(write(tmp_path / "old", old))).values())


def test_no_section_without_a_match(tmp_path):
    rows = [r for r in latency_rows() if ps.find_timing(r) is None]
    md = rp.write_report(write(tmp_path, rows), out_dir=tmp_path / "r").read_text()
    assert "Against the paper's timings" not in md
    small = [{**r, "attention_flops_per_pair": 4 * 64 * 2} for r in latency_rows()]  # a tiny trunk: none either
    md = rp.write_report(write(tmp_path / "tiny", small), out_dir=tmp_path / "tiny" / "r").read_text()
    assert "Against the paper's timings" not in md


def section(md: str) -> list[str]:
    return md.split("## Against the paper's timings")[1].split("\n## ")[0].splitlines()


def test_report_latency_section(tmp_path):
    md = rp.write_report(write(tmp_path, latency_rows()), out_dir=tmp_path / "r").read_text()
    lines = section(md)
    assert any("### Latency (Table 11" in l for l in lines) and not any("### Throughput" in l for l in lines)
    dev = f"{H100}, bf16"
    assert f"| 2048 | ar | default | AR | 2,047 | ≈ L | 2.000 | 13.30 | 0.15× | {dev} | run-a |" in lines
    assert f"| 2048 | mdlm | fh=True | MDLM | 2,048 | ≈ L | 30.000 | 201.30 | 0.149× | {dev} | run-a |" in lines
    assert (f"| 2048 | esolm-b | T=1000000,a0=1 | Eso-LM (B) | 2,048 | ≈ L | 2.500 | 14.60 | 0.171× | {dev} "
            "| run-a |") in lines
    assert f"| 8192 | mdlm-8k | fh=True | MDLM | 8,192 | ≈ L | 600.000 | 5,438.30 | 0.11× | {dev} | run-b |" in lines
    # points at the protocol's L and batch with no paper counterpart: –
    assert f"| 2048 | mdlm | T=256 | – | 256 | – | 1.000 | – | – | {dev} | run-a |" in lines
    assert f"| 2048 | esolm-b | T=128,a0=1 | – | 128 | – | 0.250 | – | – | {dev} | run-a |" in lines
    # the ratios: the paper's (A6000) beside ours from run a, – across runs
    assert ("| latency | 2048 | MDLM / Eso-LM (B) | 13.8× (A6000) | 12.0× | mdlm (fh=True) / esolm-b "
            f"(T=1000000,a0=1) | {dev} | run-a |") in lines
    assert ("| latency | 2048 | BD3-LM L' = 16 / Eso-LM (B) | 1.46× (A6000) | 1.20× | bd3lm-16 (fh=True) / esolm-b "
            f"(T=1000000,a0=1) | {dev} | run-a |") in lines
    assert ("| latency | 2048 | Eso-LM (B) / AR | 1.10× (A6000) | 1.25× | esolm-b (T=1000000,a0=1) / ar (default) "
            f"| {dev} | run-a |") in lines
    assert "| latency | 8192 | MDLM / Eso-LM (B) | 66.2× (A6000) | – | – | – | – |" in lines
    assert ("| latency | 8192 | Eso-LM (B) / AR | 1.52× (A6000) | 1.50× | esolm-b (T=1000000,a0=1) / ar (default) "
            f"| {dev} | run-a |") in lines
    assert "A6000" in lines[2] and "H200" in lines[2]  # the intro names both of the paper's GPUs


def test_report_throughput_section(tmp_path):
    md = rp.write_report(write(tmp_path, throughput_rows()), out_dir=tmp_path / "r").read_text()
    assert "## Throughput" in md  # the existing large-batch section is still there
    lines = section(md)
    assert any("### Throughput (Tables 13–15" in l for l in lines) and not any("### Latency" in l for l in lines)
    dev = f"{H200}, bf16"
    assert f"| 1024 | mdlm | T=128,p=0.9 | MDLM T = 128 | 128 | 128 | 50.000 | 106.96 | 0.467× | {dev} | run-a |" in lines
    assert (f"| 1024 | mdlm | T=1024,p=0.9 | MDLM T = 1024 | 650 (1,024 per batch) | 657 | 300.000 | 566.19 | 0.53× "
            f"| {dev} | run-a |") in lines
    assert (f"| 1024 | bd3lm-4-t4096 | T=16,p=0.9 | BD3-LM L' = 4, T = 4096 | 1,180 | 1,180 | 50.000 | 60.32 | 0.829× "
            f"| {dev} | run-a |") in lines
    assert (f"| 1024 | esolm-b | T=1024,a0=0.0625,p=0.9 | Eso-LM (B) α0 = 0.0625, T = 1024 | 1,020 | 1,022 | 25.000 "
            f"| 36.99 | 0.676× | {dev} | run-a |") in lines
    assert f"| 1024 | mdlm | T=8,p=0.9 | – | 8 | – | 4.000 | – | – | {dev} | run-a |" in lines
    assert f"| 1024 | ar | p=0.9 | – | 1,023 | – | 30.000 | – | – | {dev} | run-a |" in lines
    rows = [l for l in lines if l.startswith("| throughput |")]
    assert len(rows) == 5
    assert ("| throughput | 1024 | MDLM T = 128 / Eso-LM (B) α0 = 1, T = 128 | 16.7× (H200) | 12.5× | mdlm "
            f"(T=128,p=0.9) / esolm-b (T=128,a0=1,p=0.9) | {dev} | run-a |") in rows
    assert ("| throughput | 1024 | MDLM T = 1024 / Eso-LM (B) α0 = 1, T = 1024 | 23.4× (H200) | 15.0× | mdlm "
            f"(T=1024,p=0.9) / esolm-b (T=1024,a0=1,p=0.9) | {dev} | run-a |") in rows
    assert ("| throughput | 1024 | MDLM T = 4096 / Eso-LM (B) α0 = 0.0625, T = 1024 | 20.3× (H200) | 16.0× | mdlm "
            f"(T=4096,p=0.9) / esolm-b (T=1024,a0=0.0625,p=0.9) | {dev} | run-a |") in rows
    assert ("| throughput | 1024 | BD3-LM L' = 4, T = 4096 / Eso-LM (B) α0 = 0.0625, T = 1024 | 1.63× (H200) | 2.00× "
            f"| bd3lm-4-t4096 (T=16,p=0.9) / esolm-b (T=1024,a0=0.0625,p=0.9) | {dev} | run-a |") in rows
    assert ("| throughput | 1024 | BD3-LM L' = 16, T = 4096 / Eso-LM (B) α0 = 0.0625, T = 1024 | 1.59× (H200) | "
            f"1.60× | bd3lm-16-t4096 (T=64,p=0.9) / esolm-b (T=1024,a0=0.0625,p=0.9) | {dev} | run-a |") in rows


@pytest.mark.parametrize("value,text", [(13.79, "13.8×"), (1.098, "1.10×"), (0.0822, "0.0822×"), (None, "–")])
def test_ratio_text(value, text):
    assert ps.ratio_text(value) == text


@pytest.mark.parametrize("config,protocol", [("paper_latency", "latency"), ("paper_throughput", "throughput")])
def test_the_committed_configs_run_every_figure_once(config, protocol):
    """Each point of configs/paper_{latency,throughput}.yaml as a row would record it: every
    figure of the protocol is matched by exactly one point."""
    from harness.nn.transformer import PRESETS
    from harness.sweep.grid import expand_points
    from harness.sweep.schema import load_sweep_config

    cfg = load_sweep_config(REPO / "configs" / f"{config}.yaml")
    entries = {e.name: e for e in cfg.models}
    matched = []
    for p in expand_points(cfg):
        entry = entries[p.entry]
        trunk = PRESETS[entry.train.backbone.preset]
        args = entry.train.model_args or {}
        row = {"family": entry.train.model, "model_options": {"block_size": args.get("block_size")},
               "alpha_0": p.schedule.get("alpha_0", args.get("alpha_0")), "schedule_fields": p.schedule,
               "length": p.length, "batch_size": p.batch_size or cfg.batch_size,
               "attention_flops_per_pair": 4 * trunk["d_model"] * trunk["n_layers"]}
        fig = ps.find_timing(row)
        if fig is not None:
            matched.append(fig)
    expected = [t for t in ps.TIMINGS if t.protocol == protocol]
    assert sorted(map(id, matched)) == sorted(map(id, expected))
