"""``esolm import`` on input it cannot honour: one line naming the field, file or flag, exit 2,
no traceback, nothing written; and two imports (or a killed one) never cost a finished checkpoint."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import harness.checkpoints.released as official
from harness.cli import main
from tests.test_official import D, official_weights, write_hf, write_lightning

REPO = Path(__file__).resolve().parents[1]


def refused_line(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and "Traceback" not in "\n".join(err), err
    assert len(err) == 1 and err[0].startswith("esolm: error: "), err
    return err[0]


def raw_config(text):
    """Replace config.json with these bytes (str: UTF-8)."""
    return lambda src: (src / "config.json").write_bytes(text.encode() if isinstance(text, str) else text)


def set_field(name, literal):
    """Set one config.json field to a JSON literal as written (1e400, NaN, ...)."""
    def edit(src):
        config = json.loads((src / "config.json").read_text())
        config[name] = "@@"
        (src / "config.json").write_text(json.dumps(config).replace('"@@"', literal))
    return edit


def weights_as(dtype=None, poison=None):
    def edit(w):
        w = {k: v.to(dtype) if dtype is not None else v.clone() for k, v in w.items()}
        if poison is not None:
            w["blocks.1.mlp.0.weight"][3, 5] = poison
        return w
    return edit


def dev_zero(src):
    (src / "config.json").unlink()
    (src / "config.json").symlink_to("/dev/zero")


# (id, model, weights edit, folder edit, extra flags, fragment of the one-line message)
CASES = [
    ("config-list", "mdlm", None, raw_config("[]"), [], "config.json must hold a JSON object, got a list"),
    ("config-number", "mdlm", None, raw_config("5"), [], "config.json must hold a JSON object, got a number"),
    ("utf16", "mdlm", None, raw_config(json.dumps({"n_heads": 4}).encode("utf-16")), [],
     "config.json is not UTF-8 text"),
    ("dev-zero", "mdlm", None, dev_zero, [], "config.json is not a regular file"),
    ("hidden-list", "mdlm", None, set_field("hidden_dim", "[16]"), [],
     "config.json field 'hidden_dim': must be a positive integer, got [16]"),
    ("hidden-zero", "mdlm", None, set_field("hidden_size", "0"), [],
     "config.json field 'hidden_size': must be a positive integer, got 0"),
    ("heads-zero", "mdlm", None, set_field("n_heads", "0"), [],
     "config.json field 'n_heads': must be a positive integer, got 0"),
    ("heads-negative", "mdlm", None, set_field("n_heads", "-2"), [], "field 'n_heads': must be a positive integer"),
    ("heads-null", "mdlm", None, set_field("n_heads", "null"), [], "field 'n_heads': must be a positive integer"),
    ("heads-true", "mdlm", lambda w: {k: v for k, v in w.items() if "inv_freq" not in k},
     set_field("n_heads", "true"), [], "field 'n_heads': must be a positive integer, got true"),
    ("blocks-string", "mdlm", None, set_field("n_blocks", '"1"'), [],
     "config.json field 'n_blocks': must be a positive integer, got \"1\""),
    ("dropout-list", "mdlm", None, set_field("dropout", "[0.1]"), [], "field 'dropout': must be a number in [0, 1)"),
    ("dropout-two", "mdlm", None, set_field("dropout", "2.0"), [],
     "field 'dropout': must be a number in [0, 1), got 2.0"),
    ("dropout-text", "mdlm", None, set_field("dropout", '"abc"'), [], "field 'dropout': must be a number in [0, 1)"),
    ("dropout-nan", "mdlm", None, set_field("dropout", "NaN"), [],
     "field 'dropout': must be a number in [0, 1), got NaN"),
    ("mask-string", "mdlm", None, set_field("mask_index", '"50257"'), [],
     "config.json field 'mask_index': must be a non-negative integer"),
    ("tc-string", "mdlm", None, set_field("time_conditioning", '"no"'), [],
     "field 'time_conditioning': must be true or false"),
    ("model-type-list", "mdlm", None, set_field("model_type", '["mdlm"]'), [], "field 'model_type': must be a string"),
    ("block-half", "bd3lm", None, set_field("block_size", "2.5"), [],
     "config.json field 'block_size': must be a positive integer, got 2.5"),
    ("block-null", "bd3lm", None, set_field("block_size", "null"), [],
     "field 'block_size': must be a positive integer"),
    ("block-huge", "bd3lm", None, set_field("block_size", "1e400"), [],
     "field 'block_size': must be a positive integer, got Infinity"),
    ("block-text", "bd3lm", None, set_field("block_size", '"x"'), [], "field 'block_size': must be a positive integer"),
    ("eps-list", "bd3lm", None, set_field("sampling_eps_min", "[0.001]"), [],
     "field 'sampling_eps_min': must be a number in [0, 1]"),
    ("eps-vector", "bd3lm", "eps-vector", None, [], "model.safetensors: sampling_eps_min must be one number"),
    ("complex", "mdlm", weights_as(torch.complex64), None, [], "is complex64; only floating-point weights import"),
    ("integer", "mdlm", weights_as(torch.int64), None, [], "is int64; only floating-point weights import"),
    ("nan", "mdlm", weights_as(poison=float("nan")), None, [], "blocks.1.mlp.0.weight has 1 NaN/inf value"),
    ("inf", "mdlm", weights_as(poison=float("-inf")), None, [], "blocks.1.mlp.0.weight has 1 NaN/inf value"),
    ("block-index", "mdlm", lambda w: {**w, "blocks.1000000000000.norm1.weight": torch.ones(D)}, None, [],
     "blocks are numbered [0, 1, 1000000000000]"),
    ("rotary-bf16-wrong", "mdlm", lambda w: {**w, "rotary_emb.inv_freq": (w["rotary_emb.inv_freq"] * 1.1).bfloat16()},
     None, [], "is not rotary base 10000"),
    ("missing-dataset", "mdlm", None, None, ["--hf-dataset", "{tmp}/missing"],
     "data.hf_dataset (--hf-dataset): no dataset folder at"),
]


@pytest.mark.parametrize("case, model, weights_edit, folder_edit, extra, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_released_input_is_one_line_and_writes_nothing(tmp_path, capsys, case, model, weights_edit, folder_edit,
                                                          extra, fragment):
    w = official_weights(adaln=True)
    if callable(weights_edit):
        w = weights_edit(w)
    src = write_hf(tmp_path / "hf", w, model)
    if weights_edit == "eps-vector":
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(src / "model.safetensors"))
        tensors["sampling_eps_min"] = torch.tensor([0.25, 0.3])
        save_file(tensors, str(src / "model.safetensors"))
    if folder_edit is not None:
        folder_edit(src)
    out = tmp_path / "out"
    line = refused_line(capsys, ["import", str(src), "--model", model, "--out", str(out),
                                 *[a.format(tmp=tmp_path) for a in extra]])
    assert fragment in line, line
    assert not out.exists()


@pytest.mark.parametrize("field, value, fragment", [
    ("model__n_heads", True, "config field 'model.n_heads': must be a positive integer, got true"),
    ("model__dropout", float("nan"), "config field 'model.dropout': must be a number in [0, 1), got NaN"),
    ("model__hidden_size", [D], "config field 'model.hidden_size': must be a positive integer"),
    ("algo__diffusion_attn_mode", ["causal"], "diffusion_attn_mode"),
])
def test_bad_lightning_config_values_name_the_field(tmp_path, capsys, field, value, fragment):
    w = {k: v for k, v in official_weights(adaln=True).items() if "inv_freq" not in k}
    src = write_lightning(tmp_path / "m.ckpt", w, "esolm-b", tmp_path / "MARKER", **{field: value})
    line = refused_line(capsys, ["import", str(src), "--model", "esolm-b", "--out", str(tmp_path / "out")])
    assert fragment in line, line
    assert not (tmp_path / "out").exists()


def test_a_bf16_release_imports_with_its_bf16_rotary_buffer(tmp_path):
    """A bf16 checkpoint's inv_freq is the float buffer rounded to bf16: it is rotary base 10000."""
    w = {k: v.bfloat16() for k, v in official_weights(adaln=True).items()}
    main(["import", str(write_hf(tmp_path / "hf", w, "mdlm")), "--model", "mdlm", "--out", str(tmp_path / "out")])
    state = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=True)
    assert state["model_state"]["net.embed.weight"].dtype == torch.bfloat16


def test_a_config_whose_pickle_shares_nodes_is_read_in_linear_time(tmp_path):
    """x = [x, x] forty times is 41 lists in the pickle but 2^40 nodes when walked as a tree."""
    x = [1]
    for _ in range(40):
        x = [x, x]
    w = official_weights(adaln=True)
    src = write_lightning(tmp_path / "m.ckpt", w, "mdlm", tmp_path / "MARKER", model__extra=x)

    def too_slow(*_):
        raise TimeoutError("the config walk did not finish in 60 s")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(60)
    try:
        main(["import", str(src), "--model", "mdlm", "--out", str(tmp_path / "out")])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert (tmp_path / "out" / "checkpoint.pt").is_file()


def test_a_second_import_into_the_same_folder_never_replaces_the_first(tmp_path, capsys, monkeypatch):
    """Two imports started together: the second one to finish is refused under the folder's
    lock, and the first one's checkpoint stays byte for byte."""
    src = write_hf(tmp_path / "hf", official_weights(adaln=True), "mdlm")
    other = write_hf(tmp_path / "hf2", official_weights(adaln=True, seed=4), "mdlm")
    out = tmp_path / "out"
    real_fold = official.fold
    calls = []

    def fold_while_another_import_runs(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # the other import passes its checks and writes while this one folds
            main(["import", str(other), "--model", "mdlm", "--out", str(out)])
        return real_fold(*args, **kwargs)

    monkeypatch.setattr(official, "fold", fold_while_another_import_runs)
    line = refused_line(capsys, ["import", str(src), "--model", "mdlm", "--out", str(out)])
    assert "already holds checkpoint.pt" in line
    first = (out / "checkpoint.pt").read_bytes()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["meta"]["imported"]["source"] == str(other.resolve())
    monkeypatch.setattr(official, "fold", real_fold)

    import fcntl

    out2 = tmp_path / "out2"
    out2.mkdir()
    with open(out2 / ".lock", "a+") as held:  # another writer holds the folder
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242")
        held.flush()
        line = refused_line(capsys, ["import", str(src), "--model", "mdlm", "--out", str(out2)])
    assert "--out" in line and "is being written by pid 4242" in line
    assert not (out2 / "checkpoint.pt").exists() and (out / "checkpoint.pt").read_bytes() == first


def test_an_import_killed_before_its_rename_leaves_no_temporary_behind(tmp_path):
    """kill -9 between writing the temporary checkpoint and renaming it: the next import into
    the folder removes the dead writer's temporary (a live writer's is kept) and finishes."""
    src = write_hf(tmp_path / "hf", official_weights(adaln=True), "mdlm")
    out = tmp_path / "out"
    script = ("import os, torch; from harness.cli import main; save = torch.save\n"
              "def save_then_die(obj, f, *a, **k):\n"
              "    save(obj, f, *a, **k)\n"
              f"    if str(f).startswith({str(out)!r}): os.kill(os.getpid(), 9)\n"
              "torch.save = save_then_die\n"
              f"main(['import', {str(src)!r}, '--model', 'mdlm', '--out', {str(out)!r}])")
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == -signal.SIGKILL, run.stderr
    left = list(out.glob("tmp*.tmp"))
    assert len(left) == 1 and left[0].stat().st_size > 1_000_000 and not (out / "checkpoint.pt").exists()
    live = out / left[0].name.replace(left[0].name.split(".")[1], str(os.getpid()), 1)
    live.write_bytes(b"being written")  # a temporary whose writer (this process) is alive
    main(["import", str(src), "--model", "mdlm", "--out", str(out)])
    assert sorted(p.name for p in out.glob("tmp*.tmp")) == [live.name]
    assert (out / "checkpoint.pt").is_file()
