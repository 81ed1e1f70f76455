"""The field's decoders beside the exact caches (harness/unmasking/): each reduces exactly to a
known sampler at its limit, the cache-exactness probe reads 0 for exact caches and more for
the approximate ones, the counters equal what the forwards' masks allow, and a row's tokens do
not depend on the batch it ran in."""

import pytest
import torch

from harness.models import build_model
from harness.nn.transformer import BackboneConfig
from harness.schedules import LogLinear, RowNoise, SamplingSchedule
from harness.unmasking.confidence import reveal_counts, step_statistics
from harness.unmasking.probe import twin_run
from harness.unmasking.remdm import cap_schedule, remdm_plan
from tests.helpers import SPECIAL, VOCAB, tiny_model

S = SamplingSchedule
L = 16


def test_reveal_counts_follow_each_rule_exactly():
    """Sorted confidences [0.95, 0.8, 0.6, 0.3] (4 masked) and entropies [0.2, 0.5, 1.0, 2.0]."""
    conf = torch.tensor([[0.95, 0.8, 0.6, 0.3]], dtype=torch.float64)
    ent = torch.tensor([[0.2, 0.5, 1.0, 2.0]], dtype=torch.float64)
    four = torch.tensor([4])
    count = lambda rule, value, masked=four: int(reveal_counts(conf, ent, masked, rule, value))  # noqa: E731
    assert count("threshold", 0.7) == 2 and count("threshold", 0.99) == 1 and count("threshold", 0.3) == 4
    # factor f: the i-th (1-based) needs conf >= 1 - f/(i + 1): f = 1 -> 2nd needs 0.667, 3rd 0.75;
    # f = 3 -> 4th needs 0.4 (0.3 fails); f = 4 -> 0.2
    assert count("factor", 1.0) == 2 and count("factor", 0.1) == 1 and count("factor", 3.0) == 3 \
        and count("factor", 4.0) == 4
    # EB: cumulative entropies 0.2, 0.7, 1.7, 3.7
    assert count("entropy_bound", 0.7) == 2 and count("entropy_bound", 0.1) == 1 and count("entropy_bound", 5) == 4
    assert count("threshold", 0.3, torch.tensor([3])) == 3  # never more than are masked


def trained_mdlm(steps: int = 150) -> torch.nn.Module:
    """A tiny MDLM trained on a learnable pattern (each row counts up from a random start), so its
    predictions are confident and depend on their context: what the approximate caches get wrong."""
    torch.manual_seed(0)
    cfg = BackboneConfig.from_preset("tiny", vocab_size=VOCAB, max_len=L)
    model = build_model("mdlm", cfg, SPECIAL)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        start = torch.randint(0, 40, (64, 1), generator=g)
        x = (start + torch.arange(L)) % 48
        opt.zero_grad()
        model.loss(x, generator=g).backward()
        opt.step()
    return model.double().eval()


@pytest.fixture(scope="module")
def trained():
    return trained_mdlm()


@pytest.mark.parametrize("name,options", [("mdlm", {}), ("bd3lm", {"block_size": 8, "ignore_bos": False})])
def test_threshold_one_reveals_one_token_per_step_in_confidence_order(name, options):
    """τ = 1 with at-least-one: every step reveals exactly the most confident masked position of
    its window, which a replay of the states (positions of earlier steps clean) confirms."""
    model = tiny_model(name, max_len=L, **options)
    n = 3
    gen = model.sample(n, L, S(threshold=1.0), torch.Generator().manual_seed(1))
    window = options.get("block_size", L)
    assert (gen.tokens != SPECIAL.mask).all()
    writes = L // window - 1 if name == "bd3lm" else 0  # BD3-LM writes each finished block but the last
    assert (gen.nfe_per_sample == L + writes).all()  # one position per denoising forward
    for b in range(L // window):
        lo, hi = b * window, (b + 1) * window
        steps = gen.step[:, lo:hi]
        assert all(len(set(row.tolist())) == window for row in steps)  # one position per step
        for k in sorted(set(steps.flatten().tolist())):
            state = torch.where(gen.step < k, gen.tokens, SPECIAL.mask)
            if name == "bd3lm":  # the model sees the clean earlier blocks and this block's state
                state = torch.where(torch.arange(L) < lo, gen.tokens, state)
                z = torch.cat([state, gen.tokens], 1)
                from harness.nn import masks
                logits = model.net(z, torch.arange(L).repeat(2), masks.block_diffusion(L, window))[:, lo:hi]
            else:
                from harness.nn import masks
                logits = model.net(state, torch.arange(L), masks.bidirectional(L))[:, lo:hi]
            masked = state[:, lo:hi] == SPECIAL.mask
            conf, _ = step_statistics(logits, masked, SPECIAL.mask, 1.0)
            drawn = steps == k
            for r in range(n):
                if drawn[r].any():
                    assert int(drawn[r].nonzero()) == int(conf[r].argmax())


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("rule", [{"steps": 5}, {"threshold": 0.3}, {"entropy_bound": 3.0}])
def test_refresh_every_step_is_the_uncached_block_sampler(cache, rule):
    """refresh = 1 rebuilds the cache at every step, so every step is the full forward: the
    tokens are the uncached block sampler's, token for token, and so is the work."""
    model = tiny_model("mdlm", max_len=L)
    plain = model.sample(4, L, S(block_length=4, **rule), torch.Generator().manual_seed(2))
    cached = model.sample(4, L, S(block_length=4, cache=cache, refresh=1, **rule), torch.Generator().manual_seed(2))
    assert torch.equal(cached.tokens, plain.tokens) and (plain.tokens != SPECIAL.mask).all()
    assert cached.tokens_computed == plain.tokens_computed and cached.nfe == plain.nfe
    stale = model.sample(4, L, S(block_length=4, cache=cache, **rule), torch.Generator().manual_seed(2))
    assert stale.tokens_computed < plain.tokens_computed  # the cache does save work


def test_remdm_with_eta_zero_is_the_ancestral_sampler():
    model = tiny_model("mdlm", max_len=L)
    for steps in (3, 16, 40):
        plain = model.sample(5, L, S(steps=steps), torch.Generator().manual_seed(steps))
        remdm = model.sample(5, L, S(steps=steps, remdm_eta=0.0), torch.Generator().manual_seed(steps))
        assert torch.equal(remdm.tokens, plain.tokens) and remdm.nfe == plain.nfe
        assert remdm.tokens_computed == plain.tokens_computed
    again = model.sample(5, L, S(steps=16, remdm_eta=0.5), torch.Generator().manual_seed(16))
    assert (again.tokens != SPECIAL.mask).all() and not torch.equal(again.tokens, plain.tokens)


def test_remdm_plan_keeps_the_forward_marginals_and_remasks_at_the_cap():
    """ReMDM's cap schedule is built so that a position is masked after step k with the forward
    probability 1 − alpha_s, remasking or not; and a clean position is masked again with
    probability sigma_k = min(eta, (1 − alpha_s)/alpha_t).  Both within 5 standard errors over
    20,000 rows x 8 positions; the plain sampler (no remasking) has the same marginals but never
    remasks, so the second check is what tells them apart."""
    noise, T, eta, n, W = LogLinear(1e-3), 8, 0.3, 20_000, 8
    plan = remdm_plan(n, W, noise=noise, steps=T, eta=eta, generator=torch.Generator().manual_seed(0), device=None)
    sigma, _ = cap_schedule(noise, T, eta)
    masked = torch.ones(n, W, dtype=torch.bool)
    offset = 0
    for k, due in enumerate(plan.due):
        total = sum(due)
        rows, cols = plan.rows[offset:offset + total], plan.cols[offset:offset + total]
        offset += total
        assert masked[rows, cols].all()  # only masked positions are revealed
        clean_before = ~masked
        masked[rows, cols] = False
        back_rows, back_cols = plan.remask[k]
        assert clean_before[back_rows, back_cols].all()  # only positions clean before the step are remasked
        masked[back_rows, back_cols] = True
        p = 1 - noise.alpha(1 - (k + 1) / T)
        se = (p * (1 - p) / (n * W)) ** 0.5
        assert abs(masked.double().mean().item() - p) < 5 * se + 1e-12, (k, masked.double().mean().item(), p)
        clean = int(clean_before.sum())
        if clean > 1000:
            rate = back_rows.numel() / clean
            assert abs(rate - sigma[k]) < 5 * (sigma[k] * (1 - sigma[k]) / clean) ** 0.5 + 1e-12, (k, rate, sigma[k])
    assert not masked.any() and sum(plan.remask[k][0].numel() for k in range(T)) > 1000


def test_cache_error_is_zero_for_exact_caches():
    """The twin run (cached against uncached sampler, same seed) reads 0 for every exact cache:
    AR's, BD3-LM's, both phases of Eso-LM (B) and Eso-LM (A)'s sequential phase."""
    cases = [("ar", {}, S()), ("bd3lm", {"block_size": 4}, S(steps=3)), ("bd3lm", {"block_size": 4}, S(threshold=0.5)),
             ("esolm-b", {"alpha_0": 0.5}, S(alpha_0=0.5, steps=4)), ("esolm-a", {"alpha_0": 0.5}, S(alpha_0=0.0))]
    for name, options, schedule in cases:
        model = tiny_model(name, max_len=L, **options)

        def run(use_cache, model=model, schedule=schedule):
            model.sample(3, L, schedule, torch.Generator().manual_seed(4), use_cache=use_cache)

        result = twin_run(run, SPECIAL.mask)
        assert result["cache_error_draws"] > 0, name
        assert result["cache_error_max_logit"] < 1e-9 and result["cache_error_kl"] < 1e-12, (name, result)
        assert result["cache_error_flip"] == 0.0, (name, result)


def test_twin_run_leaves_a_row_out_after_its_first_changed_token():
    """Three draws of two rows.  The uncached run's row 0 is pushed to another token at draw 1
    (|Δ logit| = 10: one flip); from then on its state differs, so its draw 2 (|Δ| = 50) is not
    compared; row 1 agrees throughout.  Hence max |Δ| = 10, 1 flip in 5 compared draws."""
    from harness.sampling import sample_tokens

    V = 6

    def sample(use_cache):
        g = torch.Generator().manual_seed(0)
        for step in range(3):
            logits = torch.zeros(2, V, dtype=torch.float64)
            if step == 1:
                logits[0, 1 if use_cache else 2] = 10.0  # dominant: the draw follows it
            if step == 2 and not use_cache:
                logits[0, 0] = 50.0
            sample_tokens(logits, g)

    result = twin_run(sample)
    assert result["cache_error_draws"] == 5 and result["cache_error_flip"] == 1 / 5
    assert result["cache_error_max_logit"] == 10.0


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cache_error_is_positive_for_approximate_caches_on_a_trained_model(trained, cache):
    """The same state re-run without the cache differs once the block has revealed tokens since
    the cache was built; with refresh = 1 nothing is cached and nothing is measured."""
    gen = trained.sample(4, L, S(block_length=8, steps=8, cache=cache, measure_cache_error=True),
                         torch.Generator().manual_seed(5))
    extra = gen.extra
    assert extra["cache_error_draws"] > 0
    assert extra["cache_error_max_logit"] > 1e-3 and extra["cache_error_kl"] > 1e-6, extra
    fresh = trained.sample(4, L, S(block_length=8, steps=8, cache=cache, refresh=1, measure_cache_error=True),
                           torch.Generator().manual_seed(5))
    assert fresh.extra["cache_error_draws"] == 0
    plain = trained.sample(4, L, S(block_length=8, steps=8, cache=cache), torch.Generator().manual_seed(5))
    assert torch.equal(plain.tokens, gen.tokens)  # probing changes nothing the sampler does


def counted_forwards(model):
    """Wrap the trunk's forward and forward_static; returns the list of (rows, queries, keys, pairs)."""
    seen, forward, static = [], model.net.forward, model.net.forward_static

    def counting(tokens, positions, mask, cache=None, commit=0):
        pairs = int(mask.sum()) * (tokens.shape[0] if mask.dim() == 2 else 1)
        seen.append((tokens.shape[0], tokens.shape[1], mask.shape[-1] if cache is not None else 0, pairs))
        return forward(tokens, positions, mask, cache, commit)

    def counting_static(tokens, positions, cache, start, floor, keys):
        B, N = tokens.shape
        limit = torch.maximum(start + torch.arange(N) + 1, floor).clamp_max(keys)
        seen.append((B, N, keys, B * int(limit.sum())))
        return static(tokens, positions, cache, start, floor, keys)

    model.net.forward, model.net.forward_static = counting, counting_static
    return seen


@pytest.mark.parametrize("name,options,schedule", [
    ("mdlm", {}, S(block_length=4, steps=3)),
    ("mdlm", {}, S(block_length=4, steps=3, cache="prefix")),
    ("mdlm", {}, S(block_length=8, steps=6, cache="dual", refresh=2)),
    ("mdlm", {}, S(block_length=8, threshold=0.4, cache="dual")),
    ("mdlm", {}, S(factor=1.0, block_length=8, cache="prefix")),
    ("mdlm", {}, S(entropy_bound=2.0)),
    ("mdlm", {}, S(steps=12, remdm_eta=0.3)),
    ("bd3lm", {"block_size": 4}, S(threshold=0.4)),
    ("bd3lm", {"block_size": 4}, S(entropy_bound=2.0)),
])
def test_counters_equal_what_the_forwards_masks_allow(name, options, schedule):
    model = tiny_model(name, max_len=L, **options)
    model.step_mode = "dynamic"
    for use_cache in (True, False):
        seen = counted_forwards(model)
        gen = model.sample(3, L, schedule, torch.Generator().manual_seed(6), use_cache=use_cache)
        model.net.forward, model.net.forward_static = type(model.net).forward.__get__(model.net), \
            type(model.net).forward_static.__get__(model.net)
        assert (gen.tokens != SPECIAL.mask).all()
        assert gen.nfe == len(seen)
        assert gen.tokens_computed == sum(rows * queries for rows, queries, _, _ in seen)
        assert gen.key_reads == sum(rows * keys for rows, _, keys, _ in seen)
        assert gen.attention_pairs == sum(pairs for *_, pairs in seen) > 0
        assert int(gen.nfe_per_sample.sum()) == sum(rows for rows, *_ in seen)


BATCH_CASES = [
    ("ar", {}, S()),
    ("mdlm", {}, S(steps=7)),
    ("mdlm", {}, S(steps=7, top_p=0.9)),
    ("mdlm", {}, S(steps=10, remdm_eta=0.3)),
    ("mdlm", {}, S(block_length=8, steps=5, cache="prefix")),
    ("mdlm", {}, S(block_length=8, steps=5, cache="dual", refresh=2)),
    ("mdlm", {}, S(block_length=8, threshold=0.3, cache="dual")),
    ("mdlm", {}, S(entropy_bound=2.0)),
    ("mdlm", {}, S(factor=1.0, block_length=8)),
    ("bd3lm", {"block_size": 4}, S(steps=3)),
    ("bd3lm", {"block_size": 4}, S(first_hitting=True)),
    ("bd3lm", {"block_size": 4}, S(threshold=0.3)),
    ("esolm-a", {"alpha_0": 0.5}, S(steps=4)),  # the binomial split: its counts from the shared stream
    ("esolm-b", {"alpha_0": 0.5}, S(steps=4, split="fixed")),
    ("esolm-b", {"alpha_0": 1.0}, S(blocks=4, top_p=0.9)),
    ("esolm-b", {"alpha_0": 0.5}, S(stride=4, shuffle=True)),
]


@pytest.mark.parametrize("name,options,schedule", BATCH_CASES)
def test_a_rows_tokens_do_not_depend_on_its_batch(name, options, schedule):
    """With per-row noise (RowNoise) row i's tokens are the same in a batch of 4 as alone, and the
    same when the batch's forwards run in chunks of one row (a small memory budget)."""
    model = tiny_model(name, max_len=L, **options)
    seeds = [11, 12, 13, 14]
    batch = model.sample(4, L, schedule, RowNoise(seeds)).tokens
    assert (batch != SPECIAL.mask).all()
    for i, seed in enumerate(seeds):
        alone = model.sample(1, L, schedule, RowNoise([seed])).tokens
        assert torch.equal(alone[0], batch[i]), (schedule.label(), i)
    model.max_memory = 1  # one row per forward
    assert torch.equal(model.sample(4, L, schedule, RowNoise(seeds)).tokens, batch)
    assert not torch.equal(batch[0], batch[1])


def test_inapplicable_options_are_refused_by_name():
    mdlm, bd3lm, ar = tiny_model("mdlm", max_len=L), tiny_model("bd3lm", max_len=L, block_size=4), tiny_model("ar", max_len=L)
    cases = [(ar, S(threshold=0.9), "threshold"), (bd3lm, S(steps=2, remdm_eta=0.1), "remdm_eta"),
             (bd3lm, S(block_length=4, threshold=0.9), "block_length"),
             (mdlm, S(steps=4, cache="dual"), "block_length"), (mdlm, S(steps=4, block_length=4, refresh=2), "refresh"),
             (mdlm, S(steps=4, threshold=0.9), "drop 'steps'"), (mdlm, S(threshold=0.9, factor=1.0), "factor"),
             (mdlm, S(steps=4, block_length=5), "block_length"), (mdlm, S(remdm_eta=0.1), "steps")]
    for model, schedule, needle in cases:
        with pytest.raises(ValueError, match=needle):
            model.sample(2, L, schedule, torch.Generator().manual_seed(0))
