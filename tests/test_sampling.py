"""harness.sampling: the nucleus filter against an argsort reference, and the step modes a
sweep times before it runs."""

import pytest
import torch

from harness.sampling import sample_tokens, top_p_filter
from harness.sweep.point import trial_modes


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
    monkeypatch.setenv("ESOLM_STEP_MODE", "dynamic")
    assert trial_modes("auto", cuda) == ()  # the environment forces a mode
