"""Training loop and CLI: deterministic resume, checkpoints, one-line errors (exit 2)."""

import importlib.util
import json
import random
import subprocess
import sys

import pytest
import torch
import yaml

from harness.checkpoints.own_format import load_checkpoint, read_state
from harness.cli import main
from harness.config import ConfigError, load_train_config
from harness.train import train

WORDS = "the cat sat on a mat while dogs ran past every small house near old river banks".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Twelve small text documents (enough for train/valid/test splits)."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    paths = []
    for i in range(12):
        path = root / f"doc{i:02d}.txt"
        path.write_text(" ".join(rng.choice(WORDS) for _ in range(1500)) + ".")
        paths.append(str(path))
    return paths


def write_config(tmp_path, corpus, steps=6, model="ar", **train_overrides):
    cfg = {
        "name": "t",
        "model": model,
        "backbone": {"preset": "tiny"},
        "data": {"corpus": corpus, "tokenizer": "bpe", "bpe_vocab_size": 300, "seq_len": 16},
        "train": {"steps": steps, "batch_size": 4, "lr": 1e-3, "warmup_steps": 2, "ema": 0.9, "eval_every": 3,
                  "eval_batches": 1, "ckpt_every": 3, **train_overrides},
        "out_dir": str(tmp_path / "run"),
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("model", ["ar", "mdlm"])  # mdlm: its loss draws noise, so the RNG state must resume too
def test_interrupted_training_resumes_to_identical_weights(tmp_path, corpus, monkeypatch, model):
    monkeypatch.setenv("ESOLM_CACHE", str(tmp_path / "cache"))
    straight = load_train_config(write_config(tmp_path / "a", corpus, model=model))
    train(straight, progress=False)

    # Same run, stopped after 3 steps (its checkpoint), then resumed to 6.
    halted = load_train_config(write_config(tmp_path / "b", corpus, model=model))
    halted.train.steps = 3
    train(halted, progress=False)
    assert read_state(halted.run_dir())["step"] == 3
    halted.train.steps = 6
    with pytest.raises(ConfigError, match="--resume"):
        train(halted, progress=False)
    train(halted, resume=True, progress=False)

    a, b = read_state(straight.run_dir()), read_state(halted.run_dir())
    assert a["step"] == b["step"] == 6
    for key in a["model_state"]:
        assert torch.equal(a["model_state"][key], b["model_state"][key]), key
        assert torch.equal(a["ema_state"][key], b["ema_state"][key]), key
    log = [json.loads(line) for line in (halted.run_dir() / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [3, 6]

    loaded = load_checkpoint(straight.run_dir())
    assert loaded.meta["step"] == 6 and loaded.meta["weights"] == "ema"
    assert loaded.tokenizer.decode(loaded.tokenizer.encode("the cat sat")) == "the cat sat"
    other = "mdlm" if model == "ar" else "ar"
    with pytest.raises(ValueError, match=f"holds model '{model}', not '{other}'"):
        load_checkpoint(straight.run_dir(), expect_model=other)


def test_a_killed_run_resumes_without_leftovers_or_repeated_log_records(tmp_path, corpus, monkeypatch):
    """Killed after logging step 4 with its last checkpoint at step 3 and a half-written
    checkpoint file: the resume removes the temporary file and logs step 4 once."""
    import harness.train as train_module

    monkeypatch.setenv("ESOLM_CACHE", str(tmp_path / "cache"))
    cfg = load_train_config(write_config(tmp_path, corpus, eval_every=2, ckpt_every=3))
    real = train_module.batch_indices

    def killed_at_step_5(step, *args):
        if step == 4:
            raise KeyboardInterrupt
        return real(step, *args)

    monkeypatch.setattr(train_module, "batch_indices", killed_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    monkeypatch.setattr(train_module, "batch_indices", real)
    assert read_state(cfg.run_dir())["step"] == 3
    (cfg.run_dir() / "tmpk1ll3d.tmp").write_bytes(b"half a checkpoint")
    train(cfg, resume=True, progress=False)
    log = [json.loads(line) for line in (cfg.run_dir() / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4, 6]
    assert not list(cfg.run_dir().glob("*.tmp"))


def test_one_process_trains_a_run_folder_at_a_time(tmp_path, corpus, monkeypatch):
    import os

    from harness.train import lock_run

    monkeypatch.setenv("ESOLM_CACHE", str(tmp_path / "cache"))
    cfg = load_train_config(write_config(tmp_path, corpus, steps=2))
    held = lock_run(cfg.run_dir(), wait=False)  # as another `esolm train` of the same folder would
    with pytest.raises(ConfigError, match=f"is being trained by pid {os.getpid()}"):
        train(cfg, progress=False)
    assert not (cfg.run_dir() / "checkpoint.pt").exists()
    held.close()
    train(cfg, progress=False)
    assert read_state(cfg.run_dir())["step"] == 2


@pytest.mark.parametrize("mutate, fragment", [
    (lambda c, d: c.update(name="../../escaped"), "field 'name'"),
    (lambda c, d: c["data"].update(corpus=[str(d / "empty.txt")]), "empty.txt is empty"),
    (lambda c, d: c["data"].update(corpus=[str(d / "short.txt")]),
     "the validation split of {d}/short.txt packs into 0 sequences of data.seq_len 64"),
])
def test_unusable_names_and_corpora_are_refused_before_training(tmp_path, corpus, capsys, mutate, fragment):
    """These used to write outside runs/, or train with a NaN validation loss, or blame
    train.batch_size for an empty corpus."""
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text(" ".join(WORDS * 30))
    path = write_config(tmp_path, corpus)
    cfg = yaml.safe_load(path.read_text())
    cfg["data"]["seq_len"] = 64
    mutate(cfg, tmp_path)
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(path), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and fragment.format(d=tmp_path) in err[0], err
    assert not (tmp_path.parent.parent / "escaped").exists()


def test_compiled_training_matches_eager_and_resumes_either_way(tmp_path, corpus, monkeypatch):
    """train.compile fuses the trunk with torch.compile: the same checkpoint keys, losses and
    weights equal to eager's to float tolerance; a run may switch it on or off when resumed."""
    monkeypatch.setenv("ESOLM_CACHE", str(tmp_path / "cache"))
    eager = load_train_config(write_config(tmp_path / "a", corpus))
    compiled = load_train_config(write_config(tmp_path / "b", corpus, compile=True))
    compiled.train.steps = 3
    train(eager, progress=False)
    train(compiled, progress=False)
    compiled.train.steps, compiled.train.compile = 6, False  # resumed eagerly
    train(compiled, resume=True, progress=False)
    a, b = read_state(eager.run_dir()), read_state(compiled.run_dir())
    assert list(a["model_state"]) == list(b["model_state"])
    for key in a["model_state"]:
        torch.testing.assert_close(b["model_state"][key], a["model_state"][key], rtol=1e-4, atol=1e-5)
    logs = [[json.loads(line) for line in (c.run_dir() / "log.jsonl").read_text().splitlines()]
            for c in (eager, compiled)]
    assert [r["step"] for r in logs[1]] == [3, 6]
    for ra, rb in zip(*logs):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-4)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("mutate, fragment", [
    (lambda c: c["train"].update(stpes=3), "field 'train.stpes': unknown key"),
    (lambda c: c["train"].update(lr="fast"), "field 'train.lr'"),
    (lambda c: c.pop("model"), "field 'model': required field is missing"),
    (lambda c: c["backbone"].update(preset="huge"), "unknown preset 'huge'"),
    (lambda c: c["backbone"].update(max_len=8), "data.seq_len 16 exceeds backbone.max_len 8"),
    (lambda c: c.update(model="nonsense"), "unknown model 'nonsense'"),
    (lambda c: c["data"].update(corpus=["/no/such/file.txt"]), "/no/such/file.txt"),
    (lambda c: c["train"].update(seed=2**70), "field 'train.seed': Input should be less than or equal to 4294967295"),
])
def test_bad_configs_give_one_line_errors(tmp_path, corpus, mutate, fragment):
    path = write_config(tmp_path, corpus)
    cfg = yaml.safe_load(path.read_text())
    mutate(cfg)
    path.write_text(yaml.safe_dump(cfg))
    result = run_cli("train", str(path), "--quiet")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("esolm: error:") and fragment in lines[0], result.stderr


def test_missing_config_and_checkpoint_errors(tmp_path):
    result = run_cli("train", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "not found" in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(tmp_path / "missing-run")])
    assert exit_info.value.code == 2


def test_torchrun_ddp_on_cpu(tmp_path, corpus, monkeypatch):
    """Two processes through torchrun (gloo on CPU), each on its half of every batch: DDP
    averages their gradients, so rank 0's checkpoint holds the weights of one process
    training on the whole batches (to float tolerance)."""
    path = write_config(tmp_path, corpus, steps=4)
    env = {**__import__("os").environ, "ESOLM_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", "29517", "-m", "harness.cli", "train", str(path), "--quiet"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    ddp = read_state(tmp_path / "run")
    assert ddp["step"] == 4
    monkeypatch.setenv("ESOLM_CACHE", str(tmp_path / "cache"))
    single = load_train_config(path)
    single.out_dir = str(tmp_path / "single")
    train(single, progress=False)
    one = read_state(tmp_path / "single")
    for key, value in one["model_state"].items():
        torch.testing.assert_close(ddp["model_state"][key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_sample_command_continues_a_prompt(tmp_path, capsys):
    """`esolm sample --prompt` gives [BOS] + the prompt as the prefix of every sample (here a
    diffusion model, which otherwise generates position 0); a prompt too long is one line."""
    from harness.cli import main
    from tests.test_evaluators import make_checkpoint

    make_checkpoint(tmp_path / "m", "mdlm", max_len=32)
    main(["sample", str(tmp_path / "m"), "--n", "2", "--length", "24", "--steps", "4", "--prompt", "It is a truth",
          "--device", "cpu"])
    out = capsys.readouterr().out
    samples = [block.split("\n", 1)[1] for block in out.split("--- sample ")[1:]]
    from harness.checkpoints.own_format import load_checkpoint

    tok = load_checkpoint(tmp_path / "m").tokenizer
    start = tok.decode([tok.bos_id]) + "It is a truth"
    assert len(samples) == 2 and all(s.startswith(start) for s in samples), out
    with pytest.raises(SystemExit) as err:
        main(["sample", str(tmp_path / "m"), "--length", "4", "--steps", "2", "--prompt", "It is a truth " * 3,
              "--device", "cpu"])
    assert err.value.code == 2 and "--prompt" in capsys.readouterr().err


def test_resume_ignores_the_run_name_but_not_the_recipe(tmp_path, corpus):
    """A renamed config (e.g. a sweep variant) pointing at an existing run resumes it as is;
    a changed recipe is refused, naming what may change."""
    from harness.config import ConfigError, TrainConfig, read_yaml
    from harness.train import train

    cfg = TrainConfig.model_validate(read_yaml(write_config(tmp_path, corpus, steps=2)))
    path = train(cfg, progress=False)
    stamp = path.stat().st_mtime_ns
    assert train(cfg.model_copy(update={"name": "renamed"}), resume=True, progress=False) == path
    assert path.stat().st_mtime_ns == stamp  # finished: returned as is, not retrained
    other = cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": 5e-4})})
    with pytest.raises(ConfigError, match="only name, out_dir"):
        train(other, resume=True, progress=False)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from tests.test_evaluators import make_checkpoint

    root = tmp_path_factory.mktemp("ck")
    for name in ("ar", "mdlm", "esolm-b", "bd3lm"):
        make_checkpoint(root / name, name, max_len=16)
    return root


@pytest.mark.parametrize("name, label", [("mdlm", "T=16"), ("bd3lm", "fh=True"), ("esolm-b", "T=16"),
                                         ("ar", "default")])
def test_sample_needs_no_schedule_flags_and_reports_work_per_sample_and_per_batch(checkpoints, capsys, name, label):
    """Diffusion models sample with the documented default (T = L; BD3-LM first hitting), and the
    work line gives NFE and tokens computed per sample beside the labelled batch totals."""
    from harness.checkpoints.own_format import load_checkpoint
    from harness.schedules import SamplingSchedule

    main(["sample", str(checkpoints / name), "--n", "3", "--length", "16", "--prompt", "It was", "--device", "cpu"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    loaded = load_checkpoint(checkpoints / name, device="cpu")
    prefix = torch.tensor([loaded.tokenizer.bos_id] + list(loaded.tokenizer.encode("It was")))
    schedule = SamplingSchedule(**{"T=16": {"steps": 16}, "fh=True": {"first_hitting": True}, "default": {}}[label])
    gen = loaded.model.sample(3, 16, schedule, torch.Generator().manual_seed(0), prefix=prefix)
    nfe = gen.nfe_per_sample.double().mean().item() if gen.nfe_per_sample is not None else gen.nfe
    assert last == (f"--- schedule {label}; per sample: NFE {nfe:g}, tokens computed {gen.tokens_computed / 3:g}; "
                    f"batch of 3 x 16 tokens: {gen.nfe} forwards, {gen.tokens_computed} tokens computed ---")


@pytest.mark.parametrize("args, fragment", [
    (["sample", "{ar}", "--steps", "4"], "--steps does not apply to ar; it takes no schedule flags"),
    (["sample", "{mdlm}", "--alpha-0", "0.5"], "--alpha-0 does not apply to mdlm; it takes --steps"),
    (["sample", "{bd3lm}", "--steps", "2", "--first-hitting"], ("bd3lm needs exactly one of --steps (T per block), --first-hitting (one token per step) or a confidence rule "
                                                                 "(--threshold, --factor, --entropy-bound)")),
    (["sample", "{esolm-b}", "--steps", "2", "--blocks", "2"], "esolm-b: give one of schedule fields --steps, --blocks or --stride"),
])
def test_sample_schedule_errors_name_the_flag(checkpoints, capsys, args, fragment):
    args = [a.format(**{n: str(checkpoints / n) for n in ("ar", "mdlm", "esolm-b", "bd3lm")}) for a in args]
    with pytest.raises(SystemExit) as exit_info:
        main(args + ["--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and fragment in err[0], err


@pytest.mark.parametrize("args, fragment", [
    (["eval", "{esolm-b}", "--alpha-0", "2"], "argument --alpha-0: must be in [0, 1]"),
    (["eval", "{ar}", "--alpha-0", "0.5"], "--alpha-0 does not apply to ar"),
    (["eval", "{mdlm}", "--alpha-0", "0.5"], "--alpha-0 does not apply to mdlm"),
    (["eval", "{mdlm}", "--draws", "0"], "argument --draws: must be at least 1, got 0"),
    (["eval", "{esolm-b}", "--iw", "2", "--draws", "2"], "--iw and --draws are two estimators"),
    (["eval", "{ar}", "--length", "0"], "length must be at least 2"),
    (["eval", "{ar}", "--max-sequences", "0"], "argument --max-sequences: must be at least 1"),
    (["sample", "{ar}", "--top-p", "1.5"], "--top-p: Input should be less than or equal to 1 (got 1.5)"),
    (["sample", "{mdlm}", "--steps", "0"], "--steps: Input should be greater than or equal to 1 (got 0)"),
    (["sample", "{esolm-b}", "--alpha-0", "1.5"], "argument --alpha-0: must be in [0, 1]"),
    (["sample", "{ar}", "--length", "0"], "argument --length: must be at least 2"),
    (["sample", "{ar}", "--n", "0"], "argument --n: must be at least 1, got 0"),
    pytest.param(["lm-eval-task", "{ar}/checkpoint.pt"], "is a file; give a folder",
                 marks=pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                          reason="lm-eval not installed (the 'eval' extra)")),
])
def test_out_of_range_options_are_one_line_errors_naming_the_flag(checkpoints, capsys, args, fragment):
    """Each of these used to run with a silent default, print a number for a meaningless
    alpha_0, or end in a traceback."""
    args = [a.format(**{n: str(checkpoints / n) for n in ("ar", "mdlm", "esolm-b")}) for a in args]
    with pytest.raises(SystemExit) as exit_info:
        main(args + (["--device", "cpu"] if args[0] in ("eval", "sample") else []))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and fragment in err[-1], err


def test_train_steps_flag_is_validated_and_a_finished_run_says_so(tmp_path, corpus, capsys):
    path = write_config(tmp_path, corpus, steps=2)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(path), "--steps", "0", "--quiet"])
    assert exit_info.value.code == 2
    assert "with --steps: field 'train.steps': Input should be greater than or equal to 1" in capsys.readouterr().err
    main(["train", str(path), "--quiet"])
    main(["train", str(path), "--resume", "--steps", "1", "--quiet"])
    assert "already at step 2 (train.steps 1); nothing to train" in capsys.readouterr().err
    assert read_state(tmp_path / "run")["step"] == 2


def test_unknown_device_is_a_one_line_error(checkpoints, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", str(checkpoints / "ar"), "--device", "tpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and "--device: unknown device 'tpu'" in err[-1]


def test_eval_shows_progress_on_stderr_and_quiet_training_names_the_model(tmp_path, corpus, capsys, monkeypatch):
    """eval ran for a minute with no output; --quiet sweeps printed 'step 3: valid loss' without
    saying which model's."""
    monkeypatch.setenv("ESOLM_CACHE", str(tmp_path / "cache"))
    main(["train", str(write_config(tmp_path, corpus, steps=3)), "--quiet"])
    captured = capsys.readouterr()
    assert "t step 3: valid loss " in captured.out
    main(["eval", str(tmp_path / "run"), "--max-sequences", "3", "--batch-size", "1", "--device", "cpu"])
    captured = capsys.readouterr()
    assert "esolm eval: ar, 3 test sequences x 16 tokens" in captured.err
    assert "test ppl" in captured.err and "3/3" in captured.err  # the bar, per batch
    assert captured.out.startswith("ar test perplexity ") and "test ppl" not in captured.out
    main(["eval", str(tmp_path / "run"), "--max-sequences", "3", "--device", "cpu", "--quiet"])
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith("ar test perplexity ")


def test_every_flag_with_a_default_shows_it_in_help():
    from harness.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0]
    for name, parser in sub.choices.items():
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if action.option_strings and action.default is not None and action.default is not False \
                    and action.dest != "help":
                line = parser.formatter_class(name)._get_help_string(action) % {"default": action.default}
                assert "default" in line and " ".join(line.split()) in text, (name, action.dest, line)
