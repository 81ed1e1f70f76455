"""A model of one's own is first-class through one file: its class declares its facts, and
``model: package.module:Class`` runs it through a sweep point and its report, ``esolm sample``
and lm-eval, with nothing else in the harness touched."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap

import pytest
import yaml

from harness.cli import main

TOY = textwrap.dedent('''
    """A toy model: AR's network and sampler under another name, with facts of its own."""
    from baselines.ar import AR


    class ToyAR(AR):
        name = "toy-ar"
        display_name = "Toy AR"
        color = "#8c564b"
        schedule_fields = ()  # reads no schedule field

        def cache_capacity(self, length):
            return length + 1  # one scratch slot, only to show the memory estimate asks the class
''')


@pytest.fixture()
def toy(tmp_path, monkeypatch):
    """toy_plugin.py in a folder on PYTHONPATH, as a user's package would be."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "toy_plugin.py").write_text(TOY)
    monkeypatch.setenv("PYTHONPATH", str(folder))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "toy_plugin", raising=False)
    yield "toy_plugin:ToyAR"
    sys.modules.pop("toy_plugin", None)


def test_a_plugin_model_runs_a_sweep_point_its_report_sample_and_lm_eval(toy, tmp_path, capsys):
    from harness.memory import cache_row_bytes, unsplit_batch_cost
    from harness.models import resolve_model_class

    config = {
        "name": "toy", "lengths": [16], "num_samples": 2, "batch_size": 2, "seeds": [0], "metrics": ["entropy", "speed"],
        "runs_dir": str(tmp_path / "runs"), "device": "cpu", "speed": {"warmup": 0, "repeats": 1},
        "train_defaults": {"backbone": {"preset": "tiny"}, "data": {"seq_len": 16, "bpe_vocab_size": 300},
                           "train": {"steps": 2, "batch_size": 4, "warmup_steps": 1, "eval_every": 2,
                                     "eval_batches": 1, "ckpt_every": 2, "device": "cpu"}},
        "models": [{"name": "toy", "train": {"model": toy}}],
    }
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(config))
    main(["sweep", str(tmp_path / "toy.yaml"), "--results", str(tmp_path / "results"),
          "--reports", str(tmp_path / "reports"), "--quiet"])
    [row] = [json.loads(line) for line in (tmp_path / "results" / "toy" / "points.jsonl").read_text().splitlines()]
    assert row["model"] == toy and row["family"] == "custom" and row["metrics"]["nfe_per_sample"] == 15
    report = (tmp_path / "reports" / "toy" / "report.md").read_text()
    assert "| toy | custom | default |" in report

    run = tmp_path / "runs" / "toy" / "toy"
    capsys.readouterr()
    main(["sample", str(run), "--n", "2", "--length", "12", "--device", "cpu"])
    out = capsys.readouterr().out
    assert out.count("--- sample ") == 2 and "per sample: NFE 11," in out
    with pytest.raises(SystemExit) as exit_info:  # its facts: it reads no schedule field
        main(["sample", str(run), "--steps", "4", "--device", "cpu"])
    assert exit_info.value.code == 2
    assert "--steps does not apply to toy-ar; it takes no schedule flags" in capsys.readouterr().err

    from harness.checkpoints.own_format import load_checkpoint
    from harness.models import build_model

    toy_model = load_checkpoint(run).model  # the memory estimate asks the class for its cache size
    assert isinstance(toy_model, resolve_model_class(toy))
    ar = build_model("ar", toy_model.backbone_config, toy_model.special)
    extra = unsplit_batch_cost(toy_model, 16, None)[0] - unsplit_batch_cost(ar, 16, None)[0]
    assert extra == cache_row_bytes(toy_model.backbone_config, 1, 4)

    if importlib.util.find_spec("lm_eval") is None:
        pytest.skip("lm-eval not installed")
    from types import SimpleNamespace

    from harness.lm_eval_adapter import EsoLMHarnessLM

    lm = EsoLMHarnessLM(checkpoint=str(run), device="cpu")
    [text] = lm.generate_until([SimpleNamespace(args=("It is a truth", {"until": [], "max_gen_toks": 4}))])
    assert isinstance(text, str)
    [(ll, _)] = lm.loglikelihood([SimpleNamespace(args=("It is", " a truth"))])
    assert ll < 0
