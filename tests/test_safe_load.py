"""No checkpoint load runs code; a checkpoint that does not describe its own weights is refused
in one line (ValueError, exit 2 at the CLI)."""

import pickle
from pathlib import Path

import pytest
import torch
from torch.torch_version import TorchVersion

from harness.checkpoints.own_format import load_checkpoint, read_state, save_checkpoint, tokenizer_files
from harness.cli import main
from tests.helpers import tiny_model


class Trap:
    """Unpickling calls open(marker, "w"): the marker file appears only if the pickle was run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def trap_files(tmp_path: Path) -> tuple[Path, list[Path]]:
    """The same trap as a torch zip file and as a bare pickle, under the names loaders look for."""
    marker = tmp_path / "MARKER"
    payload = {"format": 1, "model_name": "ar", "state_dict": {"x": torch.zeros(2)}, "trap": Trap(marker)}
    files = []
    for kind in ("zip", "pickle"):
        for name in ("checkpoint.pt", "model.ckpt", "pytorch_model.bin"):
            path = tmp_path / kind / name
            path.parent.mkdir(exist_ok=True)
            if kind == "zip":
                torch.save(payload, path)
            else:
                path.write_bytes(pickle.dumps(payload, protocol=2))
            files.append(path)
    return marker, files


@pytest.fixture(scope="module")
def gpt2_blobs():
    from harness.data import GPT2Tokenizer

    return tokenizer_files(GPT2Tokenizer())


def save_tiny(path: Path, blobs, name: str = "ar") -> Path:
    model = tiny_model(name, dtype=torch.float32)
    save_checkpoint(path / "checkpoint.pt", model=model, model_name=name, tokenizer_blobs=blobs,
                    config={"model": name, "data": {"seq_len": 16}}, step=1)
    return path / "checkpoint.pt"


def run_cli(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("esolm: error: ") and "\n" not in err
    return err


def test_trap_pickles_never_run_through_any_load_path(tmp_path, capsys):
    from harness.evaluators import get_evaluator

    marker, files = trap_files(tmp_path)
    pickle.loads(pickle.dumps(Trap(tmp_path / "ran"))).close()  # the trap is real: plain pickle runs it
    assert (tmp_path / "ran").exists()
    for path in [f for f in files if f.name == "checkpoint.pt"]:
        for load in (read_state, load_checkpoint, lambda p: read_state(p, mmap=path.parent.name == "zip"),
                     lambda p: get_evaluator(f"ar:{p}", device="cpu")):
            with pytest.raises(ValueError, match="nothing in it was run|cannot be read"):
                load(path)
        for command in ("eval", "sample"):
            run_cli([command, str(path.parent), "--device", "cpu"], capsys)
    assert not marker.exists()


def test_train_resume_does_not_run_a_trap_checkpoint(tmp_path):
    from harness.config import TrainConfig
    from harness.train import train

    marker, files = trap_files(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(files[0].read_bytes())
    cfg = TrainConfig(name="t", model="ar", out_dir=str(run))
    with pytest.raises(ValueError, match="nothing in it was run"):
        train(cfg, resume=True, progress=False)
    assert not marker.exists()


def test_saved_checkpoints_hold_only_tensors_and_plain_values(tmp_path, gpt2_blobs):
    path = save_tiny(tmp_path, gpt2_blobs)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    loaded = load_checkpoint(path)
    assert loaded.model.name == "ar" and type(loaded.meta["torch"]) is str


def test_checkpoint_written_before_the_rule_still_loads(tmp_path, gpt2_blobs):
    """Older checkpoints kept torch's version as TorchVersion (a str subclass): allowed, nothing else."""
    path = save_tiny(tmp_path, gpt2_blobs)
    state = torch.load(path, weights_only=True)
    state["meta"]["torch"] = TorchVersion("2.4.0")
    del state["weights_model"]
    torch.save(state, path)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == ["torch.torch_version.TorchVersion"]
    assert load_checkpoint(path).meta["torch"] == "2.4.0"


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("model_name"), "lacks \\['model_name'\\]"),
    (lambda s: s["backbone"].update(d_model=32), "do not fit the backbone"),
    (lambda s: s["backbone"].update(n_layers=3), "missing \\['net.blocks.2"),
    (lambda s: s["backbone"].update(adaln=False), "do not fit the backbone"),
    (lambda s: s["backbone"].update(bogus=1), "bad backbone"),
    (lambda s: s.update(model_name="mdlm"), "labelled 'mdlm' but its weights were saved by model 'ar'"),
])
def test_a_checkpoint_that_does_not_describe_its_weights_is_refused_in_one_line(tmp_path, gpt2_blobs, capsys,
                                                                                 edit, message):
    path = save_tiny(tmp_path, gpt2_blobs)
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path)
    assert "Traceback" not in run_cli(["sample", str(path), "--device", "cpu"], capsys)


def test_trap_pickles_never_run_through_the_import_path(tmp_path, capsys):
    """The same traps as an official .ckpt (read with inert stand-ins) and as a Hugging Face
    folder's pytorch_model.bin (tensors only): refused in one line, never run."""
    marker, files = trap_files(tmp_path)
    for path in files:
        src = path
        if path.name == "pytorch_model.bin":
            src = tmp_path / f"hf-{path.parent.name}"
            src.mkdir()
            (src / "config.json").write_text('{"model_type": "mdlm", "n_heads": 4, "model_length": 16}')
            (src / "pytorch_model.bin").write_bytes(path.read_bytes())
        err = run_cli(["import", str(src), "--model", "mdlm", "--out", str(tmp_path / "out")], capsys)
        assert any(why in err for why in ("nothing in it was run", "not an official DiT", "cannot be read", "read safely")), err
        assert not (tmp_path / "out" / "checkpoint.pt").exists()
    assert not marker.exists()
