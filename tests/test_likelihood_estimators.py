"""harness.likelihood: every estimator is finite, differentiable and matches finite
differences; ``exact`` is the sampler's own log-probability; ``elbo_mc`` is the models' NELBO
and sits below the importance-weighted reference; ``coupled`` scores each token once per
pair; ``mean_field`` is one forward; the streaming backward equals the one-graph one."""

import math

import pytest
import torch

from harness.likelihood import ESTIMATORS, backward, estimate
from harness.likelihood import denoisers
from harness.likelihood.denoisers import exact_parts
from harness.sampling import record_log_probs
from harness.schedules import SamplingSchedule
from tests.helpers import CountForwards, random_batch, tiny_model

L, N = 16, 3
FAMILIES = [
    ("mdlm", {}, SamplingSchedule(steps=6)),
    ("bd3lm", {"block_size": 4}, SamplingSchedule(first_hitting=True)),
    ("esolm-b", {"alpha_0": 1.0}, SamplingSchedule(steps=5)),
    ("esolm-a", {"alpha_0": 1.0}, SamplingSchedule(steps=4)),
]
IDS = [f[0] for f in FAMILIES]
SETTINGS = {"trajectory": {"shrink": 2}, "elbo_mc": {"draws": 3}, "coupled": {"pairs": 2}, "eubo": {"draws": 3}, "iw": {"orders": 5, "chunk": 2}}
PROMPT = torch.tensor([48, 3, 4, 5])


def drawn(name, options, schedule, prefix=PROMPT, seed=0):
    model = tiny_model(name, max_len=L, **options)
    with record_log_probs(N) as recorded:
        gen = model.sample(N, L, schedule, torch.Generator().manual_seed(seed), prefix=prefix)
    return model, gen, recorded


def run(model, gen, estimator, seed=1, **kw):
    return estimate(model, gen, estimator, generator=torch.Generator().manual_seed(seed),
                    **{**SETTINGS.get(estimator, {}), **kw})


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("name,options,schedule", FAMILIES, ids=IDS)
def test_every_estimator_is_finite_counts_its_forwards_and_matches_finite_differences(name, options, schedule,
                                                                                       estimator):
    model, gen, _ = drawn(name, options, schedule)
    calls = CountForwards(model.net)
    est = run(model, gen, estimator)
    assert est.log_prob.shape == (N,) and torch.isfinite(est.log_prob).all() and (est.log_prob < 0).all()
    assert (est.forwards, est.tokens_computed) == (calls.calls, calls.tokens)
    # the derivative of Σ log π along a random direction of the head, against a central
    # difference under the same noise
    weight = model.net.head.weight
    grad = torch.autograd.grad(est.log_prob.sum(), weight)[0]
    v = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0), dtype=weight.dtype)
    h = 1e-6
    with torch.no_grad():
        weight += h * v
        up = run(model, gen, estimator).log_prob.sum()
        weight -= 2 * h * v
        down = run(model, gen, estimator).log_prob.sum()
        weight += h * v
    slope = (grad * v).sum()
    assert slope.abs() > 0.1
    torch.testing.assert_close(slope, (up - down) / (2 * h), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name,options,schedule", FAMILIES + [("ar", {}, SamplingSchedule())], ids=IDS + ["ar"])
def test_exact_is_the_log_probs_the_sampler_drew_with_and_its_passes_add_up_to_it(name, options, schedule):
    model, gen, recorded = drawn(name, options, schedule)
    with torch.no_grad():
        est = estimate(model, gen, "exact")
        parts = sum(part.fn() for part in exact_parts(model, gen))
    torch.testing.assert_close(est.log_prob, recorded, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(parts, recorded, rtol=1e-10, atol=1e-10)
    assert est.kind == "exact" and est.forwards == model.sample_log_prob(gen).passes


@pytest.mark.parametrize("name,options,schedule", FAMILIES, ids=IDS)
def test_trajectory_with_shrink_one_is_exact_and_shrink_merges_passes(name, options, schedule):
    model, gen, recorded = drawn(name, options, schedule)
    with torch.no_grad():
        one = estimate(model, gen, "trajectory", shrink=1)
        exact = estimate(model, gen, "exact")
        two = estimate(model, gen, "trajectory", shrink=2)
    torch.testing.assert_close(one.log_prob, recorded, rtol=1e-10, atol=1e-10)
    assert one.forwards == exact.forwards and one.kind == "exact" and two.kind == "approximation"
    if name in ("mdlm", "bd3lm"):  # one pass per merged step
        assert two.forwards == -(-exact.forwards // 2)
    assert not torch.allclose(two.log_prob, exact.log_prob)


def test_bare_tokens_need_a_generation_for_exact_except_for_ar():
    model = tiny_model("mdlm", max_len=L)
    with pytest.raises(ValueError, match="pass the Generation"):
        estimate(model, random_batch(N, L), "exact")
    ar = tiny_model("ar", max_len=L)
    x = random_batch(N, L)
    with torch.no_grad():
        torch.testing.assert_close(estimate(ar, x, "exact").log_prob, -ar.nll(x).nats)
    with pytest.raises(ValueError, match="AR's log p.y. is exact"):
        estimate(ar, x, "elbo_mc")
    with pytest.raises(ValueError, match="estimator: unknown 'nope'"):
        estimate(model, x, "nope")


@pytest.mark.parametrize("name,options", [("mdlm", {}), ("bd3lm", {"block_size": 4}), ("esolm-b", {"alpha_0": 0.5}),
                                          ("esolm-a", {"alpha_0": 1.0})])
def test_elbo_mc_is_the_models_own_nelbo_draw_for_draw(name, options):
    """Same seed, same draws in the same order: −elbo_mc equals model.nll to float rounding."""
    model = tiny_model(name, max_len=L, **options)
    x = random_batch(N, L)
    with torch.no_grad():
        mine = estimate(model, x, "elbo_mc", prompt=0, draws=4, generator=torch.Generator().manual_seed(3))
        theirs = model.nll(x, draws=4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(-mine.log_prob, theirs.nats, rtol=1e-9, atol=1e-9)


def test_elbo_mc_mean_matches_nll_over_fresh_draws_and_iw_over_orders_for_one_order():
    """Independent seeds: the two means agree within their standard errors; and iw with one
    order is Eso-LM's exact single-order likelihood (nll_exact_order)."""
    model = tiny_model("mdlm", max_len=8)
    x = random_batch(1, 8)
    with torch.no_grad():
        a = torch.stack([estimate(model, x, "elbo_mc", prompt=0, sampling="iid",
                                  generator=torch.Generator().manual_seed(s)).log_prob[0] for s in range(300)])
        b = torch.stack([-model.nll(x, generator=torch.Generator().manual_seed(10_000 + s)).nats[0]
                         for s in range(300)])
    se = math.sqrt(a.var() / 300 + b.var() / 300)
    assert abs(a.mean() - b.mean()) < 4 * se, (a.mean(), b.mean(), se)
    eso = tiny_model("esolm-b", max_len=L, alpha_0=0.5)
    x = random_batch(N, L)
    with torch.no_grad():
        one = estimate(eso, x, "iw", prompt=0, orders=1, generator=torch.Generator().manual_seed(2))
        ref = eso.nll_exact_order(x, orders=1, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(-one.log_prob, ref.nats, rtol=1e-9, atol=1e-9)
    assert one.kind == "exact"


def test_elbo_lies_below_the_importance_weighted_reference_on_a_trained_model():
    """A tiny MDLM trained on a two-pattern toy language: the ELBO (mean over draws) is below
    IW with 1000 orders by more than their standard errors, and IW tightens with K."""
    torch.manual_seed(0)
    model = tiny_model("mdlm", max_len=8, dtype=torch.float32, scale=0.02).train()
    g = torch.Generator().manual_seed(0)
    base = torch.tensor([[48, 1, 2, 3, 4, 5, 6, 7], [48, 7, 6, 5, 4, 3, 2, 1]])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        batch = base[torch.randint(0, 2, (32,), generator=g)].clone()
        flip = torch.rand(batch.shape, generator=g) < 0.1
        batch[flip] = torch.randint(0, 8, (int(flip.sum()),), generator=g)
        opt.zero_grad()
        model.loss(batch, generator=g).backward()
        opt.step()
    model = model.double().eval()
    R = 2000  # the ELBO: R independent 4-draw estimates of each sequence, batched (rows draw their own noise)
    with torch.no_grad():
        elbo = estimate(model, base.repeat(R, 1), "elbo_mc", prompt=0, draws=4,
                        generator=torch.Generator().manual_seed(1)).log_prob.view(R, 2)
        iw = {k: torch.stack([estimate(model, base, "iw", prompt=0, orders=k, chunk=1000,
                                       generator=torch.Generator().manual_seed(100 + s)).log_prob for s in range(4)])
              for k in (1, 1000)}
    elbo_mean, elbo_se = elbo.mean(0), elbo.std(0) / math.sqrt(R)
    ref_mean, ref_se = iw[1000].mean(0), iw[1000].std(0) / 2
    assert (elbo_mean + 3 * (elbo_se + ref_se) < ref_mean).all(), (elbo_mean, ref_mean, elbo_se, ref_se)
    assert (iw[1].mean(0) < ref_mean).all()


def test_coupled_scores_each_free_token_exactly_once_per_pair(monkeypatch):
    model, gen, _ = drawn("mdlm", {}, SamplingSchedule(steps=6))
    seen = []
    real = denoisers.masked_log_probs

    def spy(model, x, masked, hide=None, generator=None):
        seen.append(masked.clone())
        return real(model, x, masked, hide, generator)
    monkeypatch.setattr("harness.likelihood.estimators.masked_log_probs", spy)
    est = run(model, gen, "coupled", pairs=3)
    assert len(seen) == 6 and est.forwards == 6
    free = gen.step >= 0
    for first, second in zip(seen[::2], seen[1::2]):
        assert torch.equal(first.int() + second.int(), free.int())  # a partition of the completion


@pytest.mark.parametrize("name,options", [("mdlm", {}), ("bd3lm", {"block_size": 4, "ignore_bos": False})])
def test_mean_field_without_a_prompt_is_one_forward_on_all_masks(name, options):
    model = tiny_model(name, max_len=L, **options)
    x = random_batch(N, L)
    with torch.no_grad():
        est = estimate(model, x, "mean_field", prompt=0, generator=torch.Generator().manual_seed(0))
        z = torch.full_like(x, model.special.mask)
        if name == "bd3lm":  # every block all-[MASK], and so is the context half
            from harness.nn import masks
            logits = model.net(torch.cat([z, z], 1), torch.arange(L).repeat(2), masks.block_diffusion(L, 4))[:, :L]
        else:
            from harness.nn import masks
            logits = model.net(z, torch.arange(L), masks.bidirectional(L))
        by_hand = logits.double().masked_fill(torch.arange(logits.shape[-1]) == model.special.mask, -math.inf)
        by_hand = by_hand.log_softmax(-1).gather(-1, x[..., None])[..., 0].sum(1)
    assert est.forwards == 1
    torch.testing.assert_close(est.log_prob, by_hand, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("estimator", ["exact", "elbo_mc", "coupled", "mean_field"])
@pytest.mark.parametrize("name,options,schedule", FAMILIES, ids=IDS)
def test_streaming_backward_gives_the_one_graph_gradient(name, options, schedule, estimator):
    model, gen, _ = drawn(name, options, schedule)
    weights = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    grads = []
    for chunk in (None, 1, 2):
        model.zero_grad()
        est = backward(model, gen, estimator, weights, chunk=chunk, generator=torch.Generator().manual_seed(1),
                       **SETTINGS.get(estimator, {}))
        grads.append([p.grad.clone() for p in model.parameters()])
        with torch.no_grad():
            torch.testing.assert_close(est.log_prob, run(model, gen, estimator).log_prob, rtol=1e-10, atol=1e-10)
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_bad_settings_name_the_field():
    model, gen, _ = drawn("esolm-b", {"alpha_0": 1.0}, SamplingSchedule(steps=5))
    for estimator, kw, match in [("elbo_mc", {"draws": 0}, "draws must be >= 1"),
                                 ("elbo_mc", {"draws": 3, "sampling": "antithetic"}, "even number"),
                                 ("elbo_mc", {"sampling": "sobol"}, "sampling: use"),
                                 ("eubo", {"beta": 0.5}, "beta must be >= 1"),
                                 ("mean_field", {"prompt_mask": 1.0}, "prompt_mask must be in"),
                                 ("iw", {"orders": 0}, "orders must be >= 1")]:
        with pytest.raises(ValueError, match=match):
            estimate(model, gen, estimator, **kw)
    eso = tiny_model("esolm-b", max_len=L, alpha_0=0.5)
    with pytest.raises(ValueError, match="coupled: esolm-b trained at alpha_0 = 0.5"):
        estimate(eso, random_batch(N, L), "coupled")
