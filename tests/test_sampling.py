"""harness.sampling: the nucleus filter against an argsort reference, and the step modes a
sweep times before it runs."""

import pytest
import torch

from harness.sampling import sample_tokens, top_p_filter
from harness.schedules import SamplingSchedule
from harness.sweep.step_modes import trial_modes


def reference_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Sort descending, drop a token once the mass strictly before it reaches top_p, scatter back."""
    order = logits.argsort(dim=-1, descending=True, stable=True)
    probs = logits.gather(-1, order).softmax(-1)
    drop = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, (probs.cumsum(-1) - probs) >= top_p)
    return logits.masked_fill(drop, float("-inf"))


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.999])
def test_top_p_filter_keeps_the_reference_set(top_p):
    g = torch.Generator().manual_seed(0)
    for vocab, rows, scale in ((2, 3, 1.0), (50, 7, 4.0), (2049, 8, 0.5), (3000, 2, 8.0)):
        logits = (torch.randn(rows, vocab, generator=g, dtype=torch.float64) * scale)
        logits[:, 0] = float("-inf")  # SUBS's [MASK]
        assert torch.equal(top_p_filter(logits, top_p), reference_top_p(logits, top_p))
        batched = logits.reshape(1, rows, vocab).expand(2, rows, vocab)
        assert torch.equal(top_p_filter(batched, top_p)[1], reference_top_p(logits, top_p))


def test_top_p_filter_keeps_every_token_tied_with_the_last_kept_one():
    logits = torch.tensor([[3.0, 1.0, 1.0, 1.0, -2.0]], dtype=torch.float64)
    # sorted probs ~ [.708, .096, .096, .096, .005]: the first 1.0 is kept (.708 before it), the
    # next one not (.804 >= .75), so a sort keeps one of the three tied 1.0s, chosen by its order
    assert torch.isfinite(reference_top_p(logits, 0.75)).sum() == 2
    assert torch.isfinite(top_p_filter(logits, 0.75)).tolist() == [[True, True, True, True, False]]


def test_top_p_filter_passes_gradients_to_the_kept_logits():
    logits = torch.tensor([[2.0, 1.0, -3.0]], dtype=torch.float64, requires_grad=True)
    top_p_filter(logits, 0.8).logsumexp(-1).sum().backward()
    assert logits.grad[0, 2] == 0 and (logits.grad[0, :2] > 0).all()


def test_sample_tokens_never_draws_outside_the_nucleus():
    logits = torch.tensor([[4.0, 3.9, 0.0, -1.0]]).expand(4000, 4)
    draws = sample_tokens(logits, torch.Generator().manual_seed(0), top_p=0.9)
    assert set(draws.tolist()) == {0, 1}


def test_auto_times_only_the_modes_that_give_the_eager_tokens(monkeypatch):
    monkeypatch.delenv("ESOLM_STEP_MODE", raising=False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert trial_modes("auto", cuda) == ("graph", "dynamic")
    assert trial_modes("auto", cpu) == ()  # dynamic alone: nothing to time
    assert trial_modes("fastest", cpu) == ("dynamic", "static", "compiled")
    assert trial_modes("fastest", cuda) == ("graph", "dynamic", "compiled")
    assert trial_modes("static", cuda) == ()
    assert trial_modes("auto", cuda, same_work=False) == ()  # MDLM/BD3-LM at batch > 1: graph, untimed
    assert trial_modes("fastest", cuda, same_work=False) == ("graph", "dynamic", "compiled")
    monkeypatch.setenv("ESOLM_STEP_MODE", "dynamic")
    assert trial_modes("auto", cuda) == ()  # the environment forces a mode


def test_only_mdlm_and_bd3lm_count_other_work_in_fixed_shape_steps():
    """Why auto does not time MDLM/BD3-LM at a batch above 1: their fixed-shape steps count
    every row, the eager ones only the rows that reveal (same tokens, other counters)."""
    from tests.helpers import tiny_model

    for name, options, schedule, counts in (("mdlm", {}, SamplingSchedule(steps=64), True),
                                            ("bd3lm", {"block_size": 4}, SamplingSchedule(steps=3), True),
                                            ("ar", {}, SamplingSchedule(), False),
                                            ("esolm-b", {"alpha_0": 0.5}, SamplingSchedule(alpha_0=0.5, steps=7), False)):
        model = tiny_model(name, max_len=32, **options)
        gens = {}
        for mode in ("dynamic", "static"):
            model.step_mode = mode
            gens[mode] = model.sample(3, 32, schedule, torch.Generator().manual_seed(5))
        assert torch.equal(gens["dynamic"].tokens, gens["static"].tokens)
        differs = gens["dynamic"].tokens_computed != gens["static"].tokens_computed
        assert model.fixed_steps_count_every_row == counts == differs, name
