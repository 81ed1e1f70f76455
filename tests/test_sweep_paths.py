"""Named paths in sweep configs (harness/sweep/paths.py): configs/paper_checkpoints.yaml takes
one folder of released checkpoints, one dataset and one evaluator, and a run lists exactly
the files still missing before it says anything about the device."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.config import ConfigError
from harness.sweep.paths import expand_paths
from harness.sweep.schema import load_sweep_config

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "configs" / "paper_checkpoints.yaml"


def test_paper_checkpoints_with_one_root_lists_exactly_the_missing_files(tmp_path, capsys):
    released, owt, gpt2 = tmp_path / "released", tmp_path / "owt", tmp_path / "gpt2-large"
    cfg = load_sweep_config(PAPER, [f"paths.released={released}", f"paths.openwebtext={owt}",
                                    f"paths.gpt2_large={gpt2}"])
    files = {e.name: Path(e.checkpoint.removeprefix("hf:")) for e in cfg.models}
    assert all(p.parent == released for p in files.values()) and len(files) == 7
    assert {e.import_args["data"]["hf_dataset"] for e in cfg.models} == {str(owt)}
    assert {e.import_args["data"]["protocol"] for e in cfg.models} == {"owt"}
    assert {e.name: e.import_args["data"]["framing"] for e in cfg.models}["mdlm"] == "bos_eos"
    assert cfg.evaluator == f"hf:{gpt2}"

    released.mkdir()
    present = ["mdlm", "bd3lm-8", "esolm-b-a1"]
    for name in present:
        files[name].mkdir()
    gpt2.mkdir()
    with pytest.raises(SystemExit) as err:  # the config asks for CUDA; the files are checked first
        main(["sweep", str(PAPER), "--results", str(tmp_path / "results"), "--no-report",
              "--set", f"paths.released={released}", "--set", f"paths.openwebtext={owt}",
              "--set", f"paths.gpt2_large={gpt2}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert err.value.code == 2
    listed = [line for line in lines if line.startswith("esolm: missing:")]
    missing = sorted(str(p) for name, p in files.items() if name not in present) + [str(owt)]
    assert sorted(line.split("'")[-2] for line in listed) == sorted(missing)  # each missing path once
    assert "(and 6 more)" in next(line for line in listed if str(owt) in line)
    assert "cuda" not in " ".join(lines).lower() and "paths.released" in lines[-1]
    assert not (tmp_path / "results").exists()


def test_unknown_path_names_and_import_defaults():
    data = {"paths": {"root": "/data"}, "import_defaults": {"data": {"protocol": "owt", "framing": "raw"}},
            "models": [{"name": "a", "checkpoint": "hf:${root}/a", "import_args": {"data": {"framing": "bos_eos"}}},
                       {"name": "b", "train": {"model": "ar"}}]}
    out = expand_paths(data, "cfg.yaml")
    assert out["models"][0] == {"name": "a", "checkpoint": "hf:/data/a",
                                "import_args": {"data": {"protocol": "owt", "framing": "bos_eos"}}}
    assert "import_args" not in out["models"][1]  # trained entries import nothing
    assert data["models"][0]["checkpoint"] == "hf:${root}/a"  # the raw config is not changed
    data["models"][0]["checkpoint"] = "${rot}/a"
    with pytest.raises(ConfigError, match=r"field 'models\.0\.checkpoint': \$\{rot\} is not in paths \(root\)"):
        expand_paths(data, "cfg.yaml")
    with pytest.raises(ConfigError, match="field 'paths'"):
        expand_paths({"paths": ["/data"]}, "cfg.yaml")


def test_a_config_without_paths_reads_as_before(tmp_path):
    cfg = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    assert expand_paths(cfg, "smoke.yaml") == cfg
