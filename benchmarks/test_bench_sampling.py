"""pytest-benchmark: one sampling step and one full sample per model, and the full sample
in each step mode, at fixed tiny sizes.

Not part of the normal test run (``testpaths = ["tests"]`` and ``--benchmark-disable`` in
pyproject).  Run, save a baseline, and compare a later run against it::

    # save (writes .benchmarks/<machine>/0001_baseline.json)
    pytest benchmarks/ --benchmark-enable --benchmark-storage=file://.benchmarks --benchmark-save=baseline

    # compare against run 0001 and fail if any mean got more than 10 % slower
    pytest benchmarks/ --benchmark-enable --benchmark-storage=file://.benchmarks \\
        --benchmark-compare=0001 --benchmark-compare-fail=mean:10%

Without ``--benchmark-enable`` each benchmark body runs once, as a smoke test.

Every benchmark stores the exact work counters of its sample in ``extra_info`` (NFE,
tokens computed, and the model's extra counters).  Those are hardware-independent: on
shared 2-core CI machines gate on them (the asserts below), and treat the timings as
advisory.

What "one step" means per model (the smallest call that runs exactly one denoising
forward): AR — a length-2 sample (one cached forward of one query per row); MDLM and
Eso-LM (alpha_0 = 1) — one denoising step over all L positions; BD3-LM — one step over a
single block of L' positions.  Models whose source file does not exist yet are skipped.
"""

from __future__ import annotations

import pytest
import torch

from harness.models import SpecialTokens, build_model, resolve_model_class
from harness.nn.transformer import BackboneConfig
from harness.schedules import SamplingSchedule

VOCAB = 50
SPECIAL = SpecialTokens(bos=48, eos=48, mask=49)
BATCH = 2
LENGTH = 32
BLOCK = 4  # BD3-LM block size

# model -> (model options, (length, schedule) of one step, (length, schedule) of a full sample)
CASES = {
    "ar": ({}, (2, SamplingSchedule()), (LENGTH, SamplingSchedule())),
    "mdlm": ({}, (LENGTH, SamplingSchedule(steps=1)), (LENGTH, SamplingSchedule(steps=LENGTH))),
    "bd3lm": ({"block_size": BLOCK}, (BLOCK, SamplingSchedule(steps=1)), (LENGTH, SamplingSchedule(steps=BLOCK))),
    "esolm-a": ({}, (LENGTH, SamplingSchedule(alpha_0=1.0, steps=1)),
                (LENGTH, SamplingSchedule(alpha_0=0.25, steps=16))),
    "esolm-b": ({}, (LENGTH, SamplingSchedule(alpha_0=1.0, steps=1)),
                (LENGTH, SamplingSchedule(alpha_0=0.25, steps=16))),
}


def _model(name: str):
    try:
        resolve_model_class(name)
    except ValueError as err:
        pytest.skip(f"model {name!r} not available yet: {err}")
    options = CASES[name][0]
    torch.manual_seed(0)
    model = build_model(name, BackboneConfig.from_preset("tiny", vocab_size=VOCAB, max_len=LENGTH), SPECIAL, **options)
    return model.eval()


def _run(benchmark, model, length, schedule):
    def sample():
        return model.sample(BATCH, length, schedule, torch.Generator().manual_seed(0))

    gen = benchmark.pedantic(sample, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(model=model.name, batch=BATCH, length=length, schedule=schedule.label(),
                                nfe=gen.nfe, tokens_computed=gen.tokens_computed,
                                **{f"extra_{k}": v for k, v in gen.extra.items() if isinstance(v, (int, float, str))})
    assert gen.tokens.shape == (BATCH, length)
    return gen


@pytest.mark.parametrize("name", sorted(CASES))
def test_one_step(benchmark, name):
    model = _model(name)
    length, schedule = CASES[name][1]
    gen = _run(benchmark, model, length, schedule)
    assert gen.nfe == 1
    per_row = 1 if name == "ar" else length  # AR: one cached query; others: every position of the (block) sequence
    assert gen.tokens_computed == BATCH * per_row


@pytest.mark.parametrize("name", sorted(CASES))
def test_full_sample(benchmark, name):
    model = _model(name)
    length, schedule = CASES[name][2]
    gen = _run(benchmark, model, length, schedule)
    if name == "ar":
        assert gen.nfe == length - 1 and gen.tokens_computed == BATCH * (length - 1)
    if name == "mdlm":
        assert gen.nfe <= min(schedule.steps, length)  # per-sequence reuse caps NFE


@pytest.mark.parametrize("mode", ["dynamic", "static", "compiled"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_full_sample_by_step_mode(benchmark, name, mode):
    """The full sample above with its steps run eagerly at exact shapes, at fixed shapes, and
    fused by torch.compile (harness/nn/steps.py; compiling happens in the warm-up round).
    The mode changes the time, not the tokens."""
    model = _model(name)
    length, schedule = CASES[name][2]
    eager = model.sample(BATCH, length, schedule, torch.Generator().manual_seed(0)).tokens
    model.step_mode = mode
    gen = _run(benchmark, model, length, schedule)
    benchmark.extra_info["step_mode"] = mode
    assert torch.equal(gen.tokens, eager)
