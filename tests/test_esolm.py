"""Eso-LM (A) and (B): orders, KV-cached sampling == full recompute, the AR and MDM limits,
work counters, the NELBO, and the exact single-order likelihood."""

import importlib.util
import math

import pytest
import torch

from baselines.ar import AR
from harness.esolm import EsoLMA, EsoLMB, sort_positions
from harness.models import SpecialTokens, build_model
from harness.nn.transformer import BackboneConfig
from harness.schedules import LogLinear, SamplingSchedule
from tests.helpers import SPECIAL, VOCAB, random_batch, tiny_model

VARIANTS = ["esolm-a", "esolm-b"]


def schedule(alpha_0, kind, **kw):
    if alpha_0 == 0:
        return SamplingSchedule(alpha_0=0.0, **kw)
    return SamplingSchedule(alpha_0=alpha_0, **{kind[0]: kind[1]}, **kw)


# --- orders ----------------------------------------------------------------------------
def test_sort_positions_puts_first_group_shuffled_then_rest_left_to_right():
    g = torch.Generator().manual_seed(0)
    first = torch.rand(64, 10, generator=g) < 0.4
    perm, inv = sort_positions(first, g)
    x = torch.arange(100, 110).expand(64, 10)
    for b in range(64):
        n = int(first[b].sum())
        assert sorted(perm[b, :n].tolist()) == torch.nonzero(first[b]).flatten().tolist()
        assert perm[b, n:].tolist() == torch.nonzero(~first[b]).flatten().tolist()
    # inverse scatters sorted values back to their original positions
    assert torch.equal(x.gather(1, perm).gather(1, inv), x)
    # the first group really is shuffled (not left to right) in some rows
    assert any(perm[b, : int(first[b].sum())].diff().lt(0).any() for b in range(64))
    # shuffle_rest shuffles the second group too
    perm2, _ = sort_positions(first, g, shuffle_rest=True)
    assert any(perm2[b, int(first[b].sum()):].diff().lt(0).any() for b in range(64))


def test_draw_order_and_reveal_counts():
    model = tiny_model("esolm-b", max_len=16)
    g = torch.Generator().manual_seed(1)
    order = model.draw_order(32, 16, 6, g)
    assert (order.sort(1).values == torch.arange(16)).all()  # a permutation per row
    assert (order[:, 6:].diff(dim=1) > 0).all()  # sequential positions left to right
    assert torch.equal(model.draw_order(3, 16, 0, g), torch.arange(16).expand(3, 16))  # alpha_0 = 0: AR order
    for steps in (1, 3, 40):
        # the fixed split: exactly round(alpha_0 · free) diffusion positions
        counts = model.reveal_counts(20, SamplingSchedule(steps=steps, split="fixed"), 0.5, g)
        assert sum(counts) == 10 and len(counts) <= min(steps, 10) and all(k > 0 for k in counts)
        counts = model.reveal_counts(20, SamplingSchedule(steps=steps), 0.5, g)  # binomial: random
        assert sum(counts) <= 20 and len(counts) <= steps and all(k > 0 for k in counts)
    assert [sum(model.reveal_counts(7, SamplingSchedule(steps=4, split="fixed"), a, g)) for a in (0.3, 0.5, 1.0)] \
        == [2, 4, 7]  # round(2.1), round(3.5) (half to even), 7
    assert model.reveal_counts(20, SamplingSchedule(blocks=3), 0.5, g) == [4, 3, 3]
    assert model.reveal_counts(4, SamplingSchedule(blocks=5), 0.5, g) == [1, 1]  # empty chunks skipped
    # Each diffusion position's step is uniform over the T steps (log-linear schedule, any
    # alpha_0): with 2 positions and T = 3 they share a step with probability 3 · (1/3)² = 1/3.
    fixed = SamplingSchedule(steps=3, split="fixed")
    shared = sum(len(model.reveal_counts(4, fixed, 0.5, g)) == 1 for _ in range(3000))
    assert abs(shared / 3000 - 1 / 3) < 0.03


def official_draw(L, alpha_0, T, eps, rng):
    """The papers' count, written out independently: T sequential binomials over the
    still-masked positions (all L at first) with p = (alpha_s − alpha_t)/(1 − alpha_t)."""
    alpha = lambda t: alpha_0 * (1 - (1 - eps) * t)  # noqa: E731
    remaining, counts = L, []
    for k in range(T):
        t, s = 1 - k / T, 1 - (k + 1) / T
        n = int(rng.binomial(remaining, (alpha(s) - alpha(t)) / (1 - alpha(t))))
        if n:
            counts.append(n)
            remaining -= n
    return counts


@pytest.mark.parametrize("alpha_0,T,eps", [(0.25, 16, 1e-3), (0.5, 4, 1e-3), (0.0625, 128, 0.2)])
def test_binomial_split_matches_the_papers_draw(alpha_0, T, eps):
    """Mean and spread of the number of diffusion positions (and of non-empty steps) match the
    papers' sequential binomials and the closed form Binomial(L, 1 − (1 − alpha_0)/(1 − alpha_0·eps)).
    Tolerances: 4 standard errors of the mean; variances within 12 % (about 5 standard errors
    of a variance estimate from 4000 draws)."""
    np = pytest.importorskip("numpy")
    model = tiny_model("esolm-b", max_len=64, eps=eps)
    L, n = 64, 4000
    g, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    ours = [model.reveal_counts(L, SamplingSchedule(steps=T), alpha_0, g) for _ in range(n)]
    theirs = [official_draw(L, alpha_0, T, eps, rng) for _ in range(n)]
    q = 1 - (1 - alpha_0) / (1 - alpha_0 * eps)
    mean, var = L * q, L * q * (1 - q)
    for draws in (ours, theirs):
        totals = torch.tensor([sum(c) for c in draws], dtype=torch.float64)
        assert abs(totals.mean().item() - mean) < 4 * math.sqrt(var / n), (totals.mean().item(), mean)
        assert totals.var().item() == pytest.approx(var, rel=0.12)
    steps_ours = torch.tensor([len(c) for c in ours], dtype=torch.float64)
    steps_theirs = torch.tensor([len(c) for c in theirs], dtype=torch.float64)
    se = math.sqrt((steps_ours.var() + steps_theirs.var()).item() / n)
    assert abs(steps_ours.mean().item() - steps_theirs.mean().item()) < 4 * se + 1e-12
    assert steps_ours.var().item() == pytest.approx(steps_theirs.var().item(), rel=0.15, abs=0.02)


def test_binomial_split_limits_and_sampler_record():
    model = tiny_model("esolm-b", max_len=16)
    g = torch.Generator().manual_seed(0)
    assert sum(model.reveal_counts(12, SamplingSchedule(steps=5), 1.0, g)) == 12  # alpha_0 = 1: all diffusion
    assert model.reveal_counts(12, SamplingSchedule(steps=5), 0.0, g) == []  # alpha_0 = 0: AR
    # alpha_0 = 1: both splits fill every position with the same law, and draw the same counts
    for seed in range(20):
        binomial, fixed = (model.reveal_counts(12, SamplingSchedule(steps=7, split=split), 1.0,
                                               torch.Generator().manual_seed(seed)) for split in ("binomial", "fixed"))
        assert binomial == fixed
    same = [model.sample(2, 16, SamplingSchedule(alpha_0=1.0, steps=5, split=split), torch.Generator().manual_seed(4))
            for split in ("binomial", "fixed")]
    assert torch.equal(same[0].tokens, same[1].tokens) and same[0].nfe == same[1].nfe  # the same samples
    sizes = set()
    for seed in range(8):
        gen = model.sample(3, 16, SamplingSchedule(alpha_0=0.5, steps=4), torch.Generator().manual_seed(seed))
        sizes.add(gen.extra["diffusion_positions"])
        assert gen.extra["split"] == "binomial" and sum(gen.extra["reveal_counts"]) == gen.extra["diffusion_positions"]
        assert gen.extra["sequential_steps"] == 16 - gen.extra["diffusion_positions"]
    assert len(sizes) > 1  # the split varies from draw to draw
    gen = model.sample(3, 16, SamplingSchedule(alpha_0=0.5, steps=4, split="fixed"), g)
    assert gen.extra["split"] == "fixed" and gen.extra["diffusion_positions"] == 8
    # given_bos: the draw is over the 15 free positions (binomial) or round(0.5 · 15) of them (fixed)
    gen = model.sample(2, 16, SamplingSchedule(alpha_0=0.5, steps=4, split="fixed", given_bos=True), g)
    assert gen.extra["diffusion_positions"] == 8 and gen.extra["sequential_steps"] == 7
    gen = model.sample(2, 16, SamplingSchedule(alpha_0=1.0, steps=4, given_bos=True), g)
    assert gen.extra["diffusion_positions"] == 15 and (gen.tokens[:, 0] == SPECIAL.bos).all()


@pytest.mark.parametrize("alpha_0,eps,T", [(1.0, 1e-3, 7), (0.25, 1e-3, 16), (0.5, 0.2, 5)])
def test_reveal_probability_of_the_log_linear_schedule_is_one_over_remaining_steps(alpha_0, eps, T):
    """Why reveal_counts may draw each position's step uniformly: the conditional reveal
    probability (alpha_s − alpha_t) / (alpha_0 − alpha_t) on the grid is exactly 1/(T − k)."""
    noise = LogLinear(eps, alpha_0)
    for k in range(T):
        alpha_t, alpha_s = noise.alpha(1 - k / T), noise.alpha(1 - (k + 1) / T)
        assert (alpha_s - alpha_t) / (alpha_0 - alpha_t) == pytest.approx(1 / (T - k), rel=1e-12)


# --- KV-cached sampler == full-recompute reference ----------------------------------------
@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("alpha_0", [0.0, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("kind", [("steps", 5), ("blocks", 3)])
def test_cached_sampler_equals_full_recompute(name, alpha_0, kind):
    model = tiny_model(name, max_len=16)
    L, n = 14, 3
    sched = schedule(alpha_0, kind, top_p=0.9 if kind[0] == "blocks" else 1.0)
    cached = model.sample(n, L, sched, torch.Generator().manual_seed(5))
    full = model.sample(n, L, sched, torch.Generator().manual_seed(5), use_cache=False)
    assert torch.equal(cached.tokens, full.tokens)
    assert (cached.tokens != SPECIAL.mask).all()
    n_diff = cached.extra["diffusion_positions"]
    if kind[0] == "blocks":
        assert n_diff == round(alpha_0 * L)
    counts = cached.extra["reveal_counts"]
    assert sum(counts) == n_diff and cached.extra["sequential_steps"] == L - n_diff
    assert cached.nfe == full.nfe == len(counts) + L - n_diff
    assert len(set(cached.tokens.tolist()[0])) > 1  # weights far from uniform, still varied
    steps = counts + [1] * (L - n_diff)
    if name == "esolm-b":
        # Every position is computed once as a [MASK] query and once more as a clean key,
        # except those revealed at the last step.
        assert cached.tokens_computed == n * (2 * L - steps[-1])
    else:
        # (A): the diffusion phase recomputes all clean tokens; the sequential phase is cached.
        revealed = [sum(counts[:i]) for i in range(len(counts))]
        diffusion = sum(r + k for r, k in zip(revealed, counts))
        sequential = (n_diff + 1 + 2 * (L - n_diff - 1)) if L > n_diff else 0
        assert cached.tokens_computed == n * (diffusion + sequential)
    # The reference recomputes the whole sorted sequence every step.
    assert full.tokens_computed == n * L * (len(counts) + 2 * (L - n_diff))
    # A cached window ending at sorted index stop reads cache slots [0, stop); (A)'s diffusion
    # phase runs without a cache.
    stops = [sum(steps[: i + 1]) for i in range(len(steps))]
    cached_stops = stops if name == "esolm-b" else stops[len(counts):]
    assert cached.key_reads == n * sum(cached_stops) and full.key_reads == 0


def test_different_rows_get_different_orders_and_tokens():
    model = tiny_model("esolm-b", max_len=16)
    gen = model.sample(6, 16, SamplingSchedule(alpha_0=0.5, steps=4), torch.Generator().manual_seed(0))
    assert len({tuple(r) for r in gen.tokens.tolist()}) == 6


def test_schedule_validation():
    model = tiny_model("esolm-b", max_len=16)
    with pytest.raises(ValueError, match=r"not \['steps', 'blocks'\]"):
        model.sample(1, 8, SamplingSchedule(alpha_0=0.5, steps=2, blocks=2))
    with pytest.raises(ValueError, match="needs schedule 'steps', 'blocks' or 'stride'"):
        model.sample(1, 8, SamplingSchedule(alpha_0=0.5))
    with pytest.raises(ValueError, match="'split': 'binomial' needs 'steps'"):
        model.sample(1, 8, SamplingSchedule(alpha_0=0.5, blocks=2, split="binomial"))
    with pytest.raises(ValueError, match="first_hitting"):
        model.sample(1, 8, SamplingSchedule(steps=2, first_hitting=True))
    with pytest.raises(ValueError, match="max_len"):
        model.sample(1, 17, SamplingSchedule(steps=2))
    # default alpha_0: the training one (0.25)
    gen = model.sample(2, 8, SamplingSchedule(steps=2, split="fixed"), torch.Generator().manual_seed(0))
    assert gen.extra["alpha_0"] == 0.25 and gen.extra["diffusion_positions"] == 2
    with pytest.raises(ValueError, match="batch_split"):
        tiny_model("esolm-b", batch_split=1.0)


# --- alpha_0 = 0 is AR, alpha_0 = 1 is an MDM -------------------------------------------
def ar_conditionals(model, x):
    """−log p(x_i | x_<i) by Eso-LM's definition — a [MASK] at position i after the clean
    x_<i, causal — computed one position at a time through the AR baseline's own forward on
    the same weights.  (AR's usual loss reads x_i off the output at i − 1 instead: a
    different network computation, so AR's numbers are not comparable.)"""
    ar = AR(model.backbone_config, model.special).to(torch.float64)
    ar.load_state_dict(model.state_dict())
    nats = []
    for i in range(x.shape[1]):
        inp = torch.cat([x[:, :i], torch.full_like(x[:, :1], model.special.mask)], 1)
        logp = ar.next_token_logits(inp)[:, -1].log_softmax(-1)
        nats.append(-logp.gather(1, x[:, i:i + 1])[:, 0])
    return torch.stack(nats, 1)


@pytest.mark.parametrize("name", VARIANTS)
def test_alpha0_zero_loss_is_left_to_right_nll(name):
    model = tiny_model(name, max_len=16, alpha_0=0.0)
    x = random_batch(3, 12)
    expected = ar_conditionals(model, x)
    torch.testing.assert_close(model.loss(x), expected.sum(1).mean() / 12, rtol=1e-10, atol=1e-10)
    result = model.nll(x, draws=2)  # deterministic: every token is masked, order left to right
    torch.testing.assert_close(result.nats, expected.sum(1), rtol=1e-10, atol=1e-10)
    assert result.tokens == 12 and not result.exact and result.estimator == "nelbo(alpha_0=0, draws=2)"
    # And the exact single-order likelihood agrees (there is only one order).
    torch.testing.assert_close(model.nll_exact_order(x, orders=3).nats, expected.sum(1), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", VARIANTS)
def test_alpha0_zero_sampler_is_greedy_left_to_right(name):
    """top_p → 0 keeps only the argmax, so the sampler must match a hand-written greedy
    left-to-right decoder (BOS is generated too: NFE = L)."""
    model = tiny_model(name, max_len=16)
    L = 10
    gen = model.sample(2, L, SamplingSchedule(alpha_0=0.0, top_p=1e-9), torch.Generator().manual_seed(0))
    assert gen.nfe == L and gen.extra["diffusion_steps"] == 0
    assert gen.tokens_computed == 2 * (2 * L - 1)
    ar = AR(model.backbone_config, model.special).to(torch.float64)
    ar.load_state_dict(model.state_dict())
    x = torch.empty(2, 0, dtype=torch.long)
    for _ in range(L):
        logits = ar.next_token_logits(torch.cat([x, torch.full((2, 1), model.special.mask)], 1))[:, -1]
        x = torch.cat([x, logits.argmax(-1, keepdim=True)], 1)
    assert torch.equal(gen.tokens, x)


@pytest.mark.parametrize("name", VARIANTS)
def test_alpha0_one_has_no_sequential_step(name):
    model = tiny_model(name, max_len=16, alpha_0=1.0)
    gen = model.sample(2, 12, SamplingSchedule(steps=40), torch.Generator().manual_seed(0))
    assert gen.extra["sequential_steps"] == 0
    assert gen.nfe == gen.extra["diffusion_steps"] == len(gen.extra["reveal_counts"]) <= 12
    x = random_batch(2, 12)
    assert (model.sequential_term(x, 1.0) == 0).all()
    assert torch.isfinite(model.nll(x).nats).all()


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("alpha_0", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("batch", [1, 2, 3])
def test_loss_is_finite_and_trains_every_edge_case(name, alpha_0, batch):
    model = tiny_model(name, max_len=16, alpha_0=alpha_0, dtype=torch.float32).train()
    loss = model.loss(random_batch(batch, 12, seed=batch))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_batch_split():
    model = tiny_model("esolm-b", alpha_0=0.5, batch_split=0.5)
    assert model._split(8) == (slice(0, 4), slice(4, 8))
    assert model._split(2) == (slice(0, 1), slice(1, 2))
    assert model._split(1) == (slice(0, 1), slice(0, 1))  # one row trains both terms
    model = tiny_model("esolm-b", alpha_0=0.5, batch_split=0.1)
    assert model._split(4) == (slice(0, 1), slice(1, 4))  # never 0 rows for a live term
    assert tiny_model("esolm-b", alpha_0=0.0)._split(4) == (None, slice(0, 4))
    assert tiny_model("esolm-b", alpha_0=1.0)._split(4) == (slice(0, 4), None)


# --- work counters: the speed story ------------------------------------------------------
def test_b_computes_about_2L_per_sample_and_mdlm_about_TL():
    L, n = 32, 2
    model = tiny_model("esolm-b", max_len=L)
    gen = model.sample(n, L, SamplingSchedule(alpha_0=0.5, steps=8), torch.Generator().manual_seed(0))
    assert gen.tokens_computed <= n * 2 * L
    assert gen.nfe == gen.extra["diffusion_steps"] + gen.extra["sequential_steps"] and gen.extra["diffusion_steps"] <= 8
    if importlib.util.find_spec("baselines.mdlm") is None:
        pytest.skip("baselines/mdlm.py not written yet")
    mdlm = tiny_model("mdlm", max_len=L)
    ref = mdlm.sample(n, L, SamplingSchedule(steps=L), torch.Generator().manual_seed(0))
    # MDLM runs all L positions at each of its ≈ (1 − 1/e)·T non-empty steps (T = L).
    assert ref.tokens_computed >= 0.4 * n * L * L > 5 * gen.tokens_computed


# --- NELBO ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", VARIANTS)
def test_nelbo_of_uniform_model_is_L_log_V(name):
    """Zero head: every real token has probability 1/V (V = 49 non-[MASK] ids), so each
    masked token costs log V.  Diffusion term: given t, E[#masked] = L(1 − alpha_t) times
    the weight alpha_0(1 − eps)/(1 − alpha_t) gives L·alpha_0(1 − eps)·log V for every t;
    sequential term: L(1 − alpha_0)·log V.  Total L·log V·(1 − eps·alpha_0) — the eps·alpha_0
    share is the prior's (tokens still clean at t = 1), which the NELBO leaves out."""
    L, V, eps = 16, VOCAB - 1, 1e-3
    x = random_batch(256, L)
    for alpha_0 in (0.0, 0.25, 0.5, 1.0):
        model = tiny_model(name, max_len=L, alpha_0=alpha_0, eps=eps)
        with torch.no_grad():
            model.net.head.weight.zero_()
        nats = model.nll(x, draws=4, generator=torch.Generator().manual_seed(1)).nats
        expected = L * math.log(V) * (1 - eps * alpha_0)
        stderr = nats.std() / math.sqrt(len(nats))
        assert abs(nats.mean().item() - expected) < 4 * stderr + 1e-9, (alpha_0, nats.mean().item(), expected)
        if alpha_0 == 0:
            torch.testing.assert_close(nats, torch.full_like(nats, expected))


def toy_batch(n, L, generator):
    """A repetitive toy language: BOS then a period-3 cycle of 3 tokens from a random phase."""
    phase = torch.randint(0, 3, (n, 1), generator=generator)
    x = 5 + (phase + torch.arange(L)) % 3
    x[:, 0] = SPECIAL.bos
    return x


@pytest.mark.parametrize("name", VARIANTS)
def test_nelbo_decreases_with_training(name):
    torch.manual_seed(0)
    model = tiny_model(name, max_len=16, alpha_0=0.5, dtype=torch.float32, scale=0.02).train()
    g = torch.Generator().manual_seed(0)
    held_out = toy_batch(32, 16, g)

    def nelbo():
        model.eval()
        value = model.nll(held_out, draws=4, generator=torch.Generator().manual_seed(2)).nats.mean().item() / 16
        model.train()
        return value

    before = nelbo()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        opt.zero_grad()
        model.loss(toy_batch(16, 16, g)).backward()
        opt.step()
    after = nelbo()
    assert after < 0.5 * before, (before, after)


# --- exact likelihood under one order ------------------------------------------------------
@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("alpha_0", [0.0, 0.5, 1.0])
def test_exact_order_likelihood_matches_cached_decoding(name, alpha_0):
    """The single-pass (B) / per-position (A) order likelihood equals the sum of the
    conditionals the cached SAMPLER computes when it is forced to reveal the true tokens
    one per step in the same order."""
    model = tiny_model(name, max_len=16)
    L = 12
    x = random_batch(3, L, seed=4)
    n_diff = round(alpha_0 * L)
    order = model.draw_order(3, L, n_diff, torch.Generator().manual_seed(0))
    exact = model.order_log_prob(x, order, n_diff)
    truth = x.gather(1, order)
    total = torch.zeros(3, dtype=torch.float64)

    def force(logits, start, stop, rows):
        total[rows] += logits.log_softmax(-1).gather(-1, truth[rows, start:stop, None]).sum((1, 2))
        return truth[rows, start:stop]

    model.decode(order, n_diff, [1] * L, force, use_cache=True)
    torch.testing.assert_close(exact, total, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cls", [EsoLMA, EsoLMB])
def test_exact_order_likelihood_is_normalised(cls):
    """Summed over every sequence of a 4-token vocabulary at L = 4, p(x | order) is 1."""
    special = SpecialTokens(bos=0, eos=0, mask=4)
    torch.manual_seed(0)
    model = cls(BackboneConfig.from_preset("tiny", vocab_size=5, max_len=4), special).to(torch.float64).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    xs = torch.cartesian_prod(*[torch.arange(4)] * 4)
    order = model.draw_order(1, 4, 2, torch.Generator().manual_seed(3)).expand(len(xs), 4)
    logp = model.order_log_prob(xs, order, 2)
    torch.testing.assert_close(logp.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
    assert logp.exp().max() < 0.5  # and not trivially concentrated


@pytest.mark.parametrize("name", VARIANTS)
def test_importance_weighted_order_estimate(name):
    model = tiny_model(name, max_len=16, alpha_0=0.5)
    x = random_batch(4, 12, seed=7)
    K = 4
    iw = model.nll_exact_order(x, orders=K, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    singles = [model.nll_exact_order(x, orders=1, generator=g) for _ in range(K)]
    nats = torch.stack([s.nats for s in singles])
    assert singles[0].exact and singles[0].estimator == "exact-order(alpha_0=0.5)"
    assert not iw.exact and iw.estimator == "iw(4, alpha_0=0.5)" and iw.tokens == 12
    torch.testing.assert_close(iw.nats, -(torch.logsumexp(-nats, 0) - math.log(K)))
    assert (iw.nats <= nats.mean(0) + 1e-12).all()  # Jensen
    assert (nats.std(0) > 0).all()  # the orders differ


def test_registry_builds_both_variants():
    cfg = BackboneConfig.from_preset("tiny", vocab_size=VOCAB, max_len=16)
    a = build_model("esolm-a", cfg, SPECIAL, alpha_0=0.5)
    b = build_model("esolm-b", cfg, SPECIAL)
    assert isinstance(a, EsoLMA) and isinstance(b, EsoLMB)
    assert a.options() == dict(alpha_0=0.5, batch_split=0.5, eps=1e-3)
    with pytest.raises(ValueError, match="alpha_0"):
        build_model("esolm-b", cfg, SPECIAL, alpha_0=1.5)


# --- the official strided schedule (subcontext_len) ----------------------------------------
def test_strided_order_reveals_the_official_sets():
    model = tiny_model("esolm-b", max_len=16)
    order, counts = model.strided_order(12, SamplingSchedule(stride=4), 0.5)
    # sets {r, r + 4, r + 8}: the first alpha_0 · S = 2 are the diffusion steps, the rest left to right
    assert order.tolist() == [0, 4, 8, 1, 5, 9, 2, 3, 6, 7, 10, 11] and counts == [3, 3]
    order, counts = model.strided_order(12, SamplingSchedule(stride=3), 1.0)
    assert order.tolist() == [0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11] and counts == [4, 4, 4]
    assert model.strided_order(12, SamplingSchedule(stride=4), 0.0)[0].tolist() == list(range(12))
    seen = set()
    for seed in range(10):
        order, counts = model.strided_order(12, SamplingSchedule(stride=4, shuffle=True), 0.75,
                                            torch.Generator().manual_seed(seed))
        sets = [order[3 * i: 3 * i + 3].tolist() for i in range(3)]
        assert counts == [3, 3, 3] and len({s[0] % 4 for s in sets}) == 3
        assert all(sorted(s) == [s[0] % 4 + 4 * j for j in range(3)] for s in sets)  # a whole residue class
        rest = order[9:].tolist()
        assert rest == sorted(rest) and sorted(order.tolist()) == list(range(12))
        seen.add(tuple(order.tolist()))
    assert len(seen) > 5  # shuffled within and between sets
    with pytest.raises(ValueError, match="'stride': 5 does not divide the 12"):
        model.strided_order(12, SamplingSchedule(stride=5), 0.4)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("alpha_0,shuffle", [(0.25, False), (0.5, True), (1.0, False)])
def test_strided_sampler_shares_one_order_and_equals_full_recompute(name, alpha_0, shuffle):
    model = tiny_model(name, max_len=16)
    sched = SamplingSchedule(alpha_0=alpha_0, stride=4, shuffle=shuffle)
    cached = model.sample(3, 12, sched, torch.Generator().manual_seed(2))
    full = model.sample(3, 12, sched, torch.Generator().manual_seed(2), use_cache=False)
    assert torch.equal(cached.tokens, full.tokens) and (cached.tokens != SPECIAL.mask).all()
    m = round(alpha_0 * 4)
    assert cached.extra["reveal_counts"] == [3] * m and cached.extra["split"] == "fixed"
    assert cached.nfe == m + 12 - 3 * m
    # one order for the batch: a row's diffusion positions are the same residue classes as row 0's
    orders = []
    model.decode = (lambda decode: lambda order, *a, **k: orders.append(order) or decode(order, *a, **k))(model.decode)
    model.sample(3, 12, sched, torch.Generator().manual_seed(2))
    assert (orders[0] == orders[0][:1]).all()
