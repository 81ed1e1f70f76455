"""The README's commands work as written right after the quick start (`make smoke`).

`make smoke` itself is far too slow for CI, so this builds, in a temporary folder, the world
it leaves behind: a checkpoint at runs/smoke/<entry>/ for every entry of configs/smoke.yaml
(tiny random weights, but each entry's own training config, model options and finished step
count, so a re-run sweep trains nothing), the committed results/smoke/ as the sweep's output
out/results/smoke/, and the repository's configs/ and results/smoke/. Every `esolm ...` and
`esolm-lm-eval ...` line of the README's ```bash blocks then runs there, in README order and
unchanged except for `--device cpu` where the command takes a device, in-process through
harness.cli.main. The README's tolerance file (its ```yaml block headed `# out/tolerances.yaml`)
is written where its compare command reads it, and its Python line is executed.

A line is skipped only when SKIPPED names it with the reason; a skip that no longer matches a
README line fails, so the list cannot go stale.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

# The README's command lines that are not run here, and why.
SKIPPED = {
    "esolm sweep configs/cpu_speed.yaml --results out/results --set name=cpu_speed_compiled --set step_mode=compiled":
        "a full CPU sweep of 42 points (about 3 min); --set is covered by tests/test_sweep.py",
    "esolm rescore out/results/smoke --evaluator smollm2 --mauve":
        "SmolLM2-135M and MAUVE take minutes on a CPU; the ar: line above runs the same path",
    "esolm import /path/to/mdlm-owt --model mdlm --out runs/mdlm-owt --hf-dataset /path/to/openwebtext --protocol owt":
        "placeholder paths: needs the released checkpoint and OpenWebText (tests/test_official.py imports "
        "small checkpoints in both formats)",
    "esolm import /path/to/Eso-LM-B-alpha-0_25 --model esolm-b --alpha-0 0.25 --out runs/esolm-b-a025":
        "placeholder path: needs the released checkpoint",
    "esolm import /path/to/esolmb.ckpt --model esolm-b --out runs/esolmb-ckpt":
        "placeholder path: needs the released checkpoint",
    "esolm eval runs/mdlm-owt --hf-dataset /new/path/to/openwebtext":
        "placeholder paths: the run imported above (tests/test_test_ppl.py moves a dataset and runs this flag)",
    "esolm sweep configs/paper_checkpoints.yaml --set paths.released=/data/released --set paths.openwebtext=/data/owt "
    "--set paths.gpt2_large=/data/gpt2-large":
        "needs the released checkpoints, OpenWebText and GPT-2 Large (tests/test_sweep_paths.py runs it up to the "
        "list of missing files)",
    "esolm sweep configs/paper_latency.yaml": "needs a CUDA GPU (the papers' trunk, L up to 8192)",
    "esolm sweep configs/paper_speed.yaml": "needs a CUDA GPU (the papers' trunk, L up to 8192)",
    "esolm sweep configs/paper_throughput.yaml": "needs a CUDA GPU",
    "esolm sweep configs/paper_quality.yaml --entries ar,mdlm": "needs a CUDA GPU (trains the 'medium' trunk)",
    "RAY_ADDRESS=HEAD:6379 esolm sweep configs/paper_quality.yaml --set backend=ray":
        "needs a Ray cluster and a CUDA GPU",
}
PROGRAMS = ("esolm", "esolm-lm-eval")


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.S | re.M)


def readme_commands(text: str) -> list[str]:
    """Every command line of the bash blocks (continuations joined, comments dropped) that
    calls esolm, as one normalised string."""
    commands = []
    for block in code_blocks(text, "bash"):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            words = shlex.split(line, comments=True)
            program = next((w for w in words if "=" not in w), None)  # after any VAR=value
            if program in PROGRAMS:
                commands.append(shlex.join(words))
            elif program is not None and program.startswith("esolm"):
                raise AssertionError(f"README line calls an unknown program: {line}")
    return commands


COMMANDS = readme_commands(README.read_text())
TO_RUN = [c for c in COMMANDS if c not in SKIPPED]


def test_the_readme_lists_the_commands_this_test_knows():
    assert len(TO_RUN) >= 15, COMMANDS  # the extraction is not silently empty
    assert not sorted(set(SKIPPED) - set(COMMANDS)), "SKIPPED names lines the README no longer has"
    assert not [c for c in TO_RUN if "/path/to" in c or "=" in c.split()[0]], "placeholders must be skipped"
    for sub in ("train", "eval", "sample", "sweep", "report", "compare", "export", "rescore", "lm-eval-task",
                "bench-likelihood", "ceilings"):
        assert any(c.startswith(f"esolm {sub} ") for c in TO_RUN), f"the README runs no esolm {sub}"
    assert any(c.startswith("esolm-lm-eval ") for c in TO_RUN)


def build_smoke_world(root: Path) -> None:
    """What `make smoke` leaves in the repository, with tiny random weights."""
    from harness.train import save_checkpoint, tokenizer_files  # what training writes checkpoints with
    from harness.data import ByteBPETokenizer, load_bundled_corpus
    from harness.models import SpecialTokens, build_model
    from harness.nn.transformer import BackboneConfig
    from harness.sweep.schema import entry_train_config, load_sweep_config

    shutil.copytree(REPO / "configs", root / "configs")
    shutil.copytree(REPO / "results" / "smoke", root / "results" / "smoke")
    shutil.copytree(REPO / "results" / "smoke", root / "out" / "results" / "smoke")
    cfg = load_sweep_config(REPO / "configs" / "smoke.yaml")
    docs = load_bundled_corpus()  # as tests/test_evaluators.py's make_checkpoint: a small quick BPE
    tok = ByteBPETokenizer.train([d.text[:5000] for d in docs[::8]], vocab_size=300)
    for entry in cfg.models:
        train_cfg = entry_train_config(cfg, entry)  # the entry's model, options, data and steps
        torch.manual_seed(0)
        backbone = BackboneConfig.from_preset(train_cfg.backbone.preset, vocab_size=tok.vocab_size,
                                              max_len=train_cfg.data.seq_len)
        model = build_model(train_cfg.model, backbone, SpecialTokens(tok.bos_id, tok.eos_id, tok.mask_id),
                            **train_cfg.model_args)
        run_dir = root / train_cfg.run_dir()  # runs/smoke/<entry> (configs/smoke.yaml's runs_dir and name)
        run_dir.mkdir(parents=True)
        save_checkpoint(run_dir / "checkpoint.pt", model=model, model_name=train_cfg.model,
                        tokenizer_blobs=tokenizer_files(tok), config=train_cfg.model_dump(),
                        step=train_cfg.train.steps)  # finished: a sweep re-run trains nothing
    text = README.read_text()
    for block in code_blocks(text, "yaml"):  # the tolerance file the compare line reads
        name = re.match(r"# (\S+\.yaml)\n", block)
        if name:
            (root / name.group(1)).parent.mkdir(parents=True, exist_ok=True)
            (root / name.group(1)).write_text(block)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("after_make_smoke")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ESOLM_CACHE", str(root / ".cache"))  # split caches stay in the test's folder
        build_smoke_world(root)
        assert (root / "runs" / "smoke" / "ar" / "checkpoint.pt").is_file()
        assert (root / "out" / "tolerances.yaml").is_file(), "the README shows no '# out/tolerances.yaml' block"
        yield root


def takes_device(words: list[str]) -> bool:
    from harness.cli import build_parser

    if words[0] == "esolm-lm-eval":
        return True  # lm_eval's own --device
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[words[1]]
    return any("--device" in a.option_strings for a in sub._actions)


def run(words: list[str], monkeypatch) -> int:
    """The command in this process; its exit code."""
    try:
        if words[0] == "esolm-lm-eval":
            from harness.lm_eval_adapter import main as lm_eval_main

            monkeypatch.setattr(sys, "argv", list(words))
            lm_eval_main()
        else:
            from harness.cli import main

            main(words[1:])
    except SystemExit as exit_:
        return 0 if exit_.code is None else exit_.code if isinstance(exit_.code, int) else 1
    return 0


@pytest.mark.parametrize("command", TO_RUN, ids=lambda c: c[:60])
def test_readme_command_runs_after_make_smoke(command, world, monkeypatch, capsys):
    monkeypatch.chdir(world)
    monkeypatch.setenv("ESOLM_CACHE", str(world / ".cache"))
    words = shlex.split(command)
    if "--device" not in words and takes_device(words):
        words += ["--device", "cpu"]
    torch.set_num_threads(1)
    code = run(words, monkeypatch)
    out, err = capsys.readouterr()
    assert code == 0, f"{shlex.join(words)} exited {code}\n{out[-2000:]}\n{err[-2000:]}"


def test_readme_python_loads_a_smoke_checkpoint(world, monkeypatch):
    from harness.models import LanguageModel

    lines = [line for block in code_blocks(README.read_text(), "python") for line in block.splitlines()
             if "load_checkpoint" in line]
    assert len(lines) == 1, lines
    monkeypatch.chdir(world)
    scope: dict = {}
    exec(lines[0], scope)
    assert isinstance(scope["model"], LanguageModel) and scope["model"].name == "esolm-b"
