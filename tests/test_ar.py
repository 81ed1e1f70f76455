"""AR baseline: exact NLL, KV-cached sampling, float64 nucleus sampling."""

import math

import torch

from harness.models import resolve_model_class
from harness.sampling import sample_tokens, top_p_filter
from harness.schedules import SamplingSchedule
from tests.helpers import SPECIAL, VOCAB, random_batch, tiny_model


def test_kv_cached_sampling_equals_full_recompute():
    model = tiny_model("ar", max_len=24)
    for top_p in (1.0, 0.9):
        schedule = SamplingSchedule(top_p=top_p)
        cached = model.sample(4, 24, schedule, torch.Generator().manual_seed(3))
        full = model.sample(4, 24, schedule, torch.Generator().manual_seed(3), use_cache=False)
        assert torch.equal(cached.tokens, full.tokens)
        assert cached.nfe == full.nfe == 23
        # Cached: exactly one new query position per step and row.
        assert cached.tokens_computed == 4 * 23
        assert full.tokens_computed == 4 * sum(range(1, 24))
        # Step i attends to cache slots [0, i); the uncached reference reads no cache.
        assert cached.key_reads == 4 * sum(range(1, 24)) and full.key_reads == 0
        assert (cached.tokens[:, 0] == SPECIAL.bos).all()
        assert (cached.tokens != SPECIAL.mask).all()


def test_equal_logits_give_log_v_per_token_exactly():
    """With the head zeroed every real token has logit 0 and [MASK] is excluded (SUBS),
    so each of the L−1 predicted tokens costs exactly log(V_real)."""
    model = tiny_model("ar")
    with torch.no_grad():
        model.net.head.weight.zero_()
    x = random_batch(3, 16)
    result = model.nll(x)
    assert result.exact and result.estimator == "exact" and result.tokens == 15
    expected = torch.full((3,), 15 * math.log(VOCAB - 1), dtype=torch.float64)
    torch.testing.assert_close(result.nats, expected, rtol=0, atol=1e-12)
    assert torch.equal(model.nll(x, draws=4).nats, result.nats)  # exact: draws change nothing


def test_loss_is_mean_token_nll_and_training_lowers_it():
    model = tiny_model("ar", dtype=torch.float32, scale=0.02)
    model.train()
    x = random_batch(8, 16)
    x[:, 1::2] = 7  # a learnable pattern
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model.loss(x).item()
    torch.testing.assert_close(model.loss(x), model.nll(x).nats.mean() / 15)
    for _ in range(60):
        opt.zero_grad()
        model.loss(x).backward()
        opt.step()
    assert model.loss(x).item() < first - 0.5


def test_top_p_keeps_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64))
    kept = torch.isfinite(top_p_filter(logits, 0.79))
    assert kept.tolist() == [[True, True, False, False]]
    kept = torch.isfinite(top_p_filter(logits, 0.81))
    assert kept.tolist() == [[True, True, True, False]]
    g = torch.Generator().manual_seed(0)
    draws = sample_tokens(logits.expand(20000, 4), g, top_p=0.79)
    assert set(draws.tolist()) == {0, 1}
    assert abs((draws == 0).double().mean().item() - 0.5 / 0.8) < 0.02


def test_registry_resolves_dotted_paths_and_names_the_fix():
    assert resolve_model_class("ar") is resolve_model_class("baselines.ar:AR")
    for bad, fragment in [("nope", "unknown model"), ("os.path:join", "not a harness"), ("no.such:Thing", "cannot load")]:
        try:
            resolve_model_class(bad)
        except ValueError as err:
            assert fragment in str(err)
        else:
            raise AssertionError(bad)
