"""scripts/recount_counters.py: KV-read and attention-pair counts added to rows measured
before the counters existed equal what those rows would have recorded, from a run with a
narrower trunk (MDLM's from its own row)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import yaml

from harness import sweep as sw

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("recount_counters", REPO / "scripts" / "recount_counters.py")
recount_counters = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recount_counters)


def sweep(tmp_path: Path, name: str, preset: str) -> Path:
    """Random-init AR, MDLM, BD3-LM and Eso-LM (B) on the GPT-2 vocabulary (no training)."""
    def entry(model, schedules=None, **args):
        e = {"name": model, "init": "random", "train": {"model": model, "model_args": args}}
        return {**e, "schedules": schedules} if schedules else e

    cfg = {"name": name, "lengths": [16], "num_samples": 3, "batch_size": 2, "seeds": [0], "metrics": ["entropy"],
           "device": "cpu", "runs_dir": str(tmp_path / "runs"), "save_samples": 0,
           "train_defaults": {"backbone": {"preset": preset}, "data": {"tokenizer": "gpt2", "seq_len": 16}},
           "models": [entry("ar"), entry("mdlm", [{"steps": 4}]),
                      entry("bd3lm", [{"first_hitting": True}], block_size=4),
                      entry("esolm-b", [{"alpha_0": [1.0, 0.25], "steps": 4}], alpha_0=0.25)]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    sw.run_sweep(path, results_root=tmp_path / "results", report=False, progress=False)
    return tmp_path / "results" / name


def test_recount_restores_the_counter_from_a_narrower_trunk_and_is_idempotent(tmp_path, capsys):
    measured = sweep(tmp_path, "measured", "mini")   # 4 layers x 128: stands in for the GPU trunk
    counts = sweep(tmp_path, "counts", "tiny")       # 2 layers x 64: the cheap re-run
    original = sw.read_points(measured)
    assert len(original) == 5 and all(r["metrics"]["key_reads_per_sample"] > 0
                                      for r in original if r["family"] != "mdlm")
    assert all(r["metrics"]["attention_pairs_per_sample"] > 0 for r in original)
    older = json.loads(json.dumps(original))  # as rows made before the counters
    for row in older:
        del row["metrics"]["key_reads_per_sample"], row["kv_bytes_per_key"]
        del row["metrics"]["attention_pairs_per_sample"], row["attention_flops_per_pair"]
    older.append({**older[0], "key": "ar/default/L999/s0"})  # a point the re-run does not have
    (measured / sw.POINTS_FILE).write_text("".join(json.dumps(r) + "\n" for r in older))

    assert recount_counters.main([str(measured), str(counts)]) == 0
    rows = sw.read_points(measured)
    for before, after in zip(original, rows):
        own = {"key_reads": {"mdlm"}, "attention_pairs": {"mdlm", "ar", "bd3lm"}}  # from the row's own counters
        for counter, name in (("key_reads_per_sample", "key_reads"), ("attention_pairs_per_sample", "attention_pairs")):
            assert after["metrics"][counter] == before["metrics"][counter], (after["key"], counter)
            note = after[f"{name}_recount"]
            assert note.get("same_draw", True) and ("why" in note) == (after["family"] in own[name])
        assert after["kv_bytes_per_key"] == before["kv_bytes_per_key"] == 2 * 4 * 128 * 4  # K+V, layers, width, fp32
        assert after["attention_flops_per_pair"] == before["attention_flops_per_pair"] == 4 * 128 * 4  # d, layers
    assert "key_reads_per_sample" not in rows[-1]["metrics"]
    assert "ar/default/L999/s0: not in" in capsys.readouterr().out

    recount_counters.main([str(measured), str(counts)])  # the second run changes nothing
    assert sw.read_points(measured) == rows
