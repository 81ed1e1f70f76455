"""BD3-LM: the training mask, the two limits (L' = 1 is AR, L' = L is MDLM), the KV-cached
block sampler against full recomputation, and its work counters."""

import math

import pytest
import torch

from harness.nn import masks
from harness.schedules import SamplingSchedule
from tests.helpers import CountForwards, SPECIAL, random_batch, tiny_model


def test_block_diffusion_mask_by_hand():
    """L = 4, L' = 2: rows/columns are z0 z1 z2 z3 | x0 x1 x2 x3."""
    expected = torch.tensor(
        [
            # z0 z1 z2 z3 x0 x1 x2 x3
            [1, 1, 0, 0, 0, 0, 0, 0],  # z0: own block only
            [1, 1, 0, 0, 0, 0, 0, 0],  # z1
            [0, 0, 1, 1, 1, 1, 0, 0],  # z2: own block + clean x of block 0
            [0, 0, 1, 1, 1, 1, 0, 0],  # z3
            [0, 0, 0, 0, 1, 1, 0, 0],  # x0: x block-causal
            [0, 0, 0, 0, 1, 1, 0, 0],  # x1
            [0, 0, 0, 0, 1, 1, 1, 1],  # x2
            [0, 0, 0, 0, 1, 1, 1, 1],  # x3
        ],
        dtype=torch.bool,
    )
    assert torch.equal(masks.block_diffusion(4, 2), expected)


def test_block_size_one_is_autoregressive():
    """With L' = 1 the z-query at position i sees only its own token and the clean x_<i, so when
    it is [MASK] its prediction is p(x_i | x_<i): an AR model.  It is not the same *function* of
    the weights as baselines.ar.AR's next-token head (AR predicts x_i at output position i−1 from
    the token x_{i−1}; BD3 predicts it at position i from a [MASK] query), but it is exactly what
    AR's causal trunk computes on x_<i followed by a [MASK] at position i.  So on shared weights:
    (1) BD3's per-position cross-entropy of every masked position equals
        −log softmax(AR.next_token_logits([x_0..x_{i−1}, MASK]))[x_i], clean positions cost 0,
        whatever the other positions' masks (they are invisible to query i);
    (2) the loss, (1/t)·[i masked]·CE_i with P(masked | t) = t (bd3lms' rate) and position 0
        never masked (ignore_bos), averaged over all L positions, has expectation
        Σ_{i≥1} CE_i / L — within Monte-Carlo error over repeated losses.
    """
    L = 12
    bd3 = tiny_model("bd3lm", max_len=L, block_size=1)
    ar = tiny_model("ar", max_len=L)
    ar.load_state_dict(bd3.state_dict())
    x = random_batch(6, L, seed=2)
    with torch.no_grad():
        ar_ce = torch.stack(
            [
                torch.nn.functional.cross_entropy(
                    ar.next_token_logits(torch.cat([x[:, :i], torch.full_like(x[:, :1], SPECIAL.mask)], 1))[:, -1],
                    x[:, i], reduction="none",
                )
                for i in range(L)
            ],
            dim=1,
        )
        all_masked = bd3.token_ce(x, torch.full_like(x, SPECIAL.mask))
        torch.testing.assert_close(all_masked, ar_ce, rtol=1e-10, atol=1e-10)
        drop = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) < 0.5
        some = bd3.token_ce(x, x.masked_fill(drop, SPECIAL.mask))
        torch.testing.assert_close(some, ar_ce * drop, rtol=1e-10, atol=1e-10)

        g = torch.Generator().manual_seed(1)
        losses = torch.tensor([bd3.loss(x, generator=g).item() for _ in range(300)])
    target = ar_ce[:, 1:].sum(dim=1).mean().item() / L
    assert abs(losses.mean().item() - target) < 4 * losses.std().item() / math.sqrt(len(losses))


def test_block_size_l_is_mdlm():
    """L' = L: z_t sees only z_t (the x half is invisible), bidirectionally — MDLM.  Under
    MDLM's conventions (position 0 masked and scored, P[mask | t] = (1 − eps)·t) the same
    generator draws the same t (one block, antithetic over the batch) and the same masks, so
    the losses and per-sequence NELBOs agree to float precision on shared weights."""
    L = 16
    bd3 = tiny_model("bd3lm", max_len=L, block_size=L, ignore_bos=False, mask_rate="mdlm")
    mdlm = tiny_model("mdlm", max_len=L)
    mdlm.load_state_dict(bd3.state_dict())
    x = random_batch(8, L, seed=3)
    with torch.no_grad():
        for seed in range(3):
            a = bd3.loss(x, generator=torch.Generator().manual_seed(seed))
            b = mdlm.loss(x, generator=torch.Generator().manual_seed(seed))
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        a = bd3.nll(x, draws=3, generator=torch.Generator().manual_seed(7))
        b = mdlm.nll(x, draws=3, generator=torch.Generator().manual_seed(7))
        torch.testing.assert_close(a.nats, b.nats, rtol=1e-10, atol=1e-10)
        assert a.estimator == "nelbo(draws=3)" and not a.exact and a.tokens == L


def test_nll_ignores_the_clipped_training_schedule():
    """clip=(beta, omega) changes the training t-range only; the reported NELBO uses U[eps, 1]."""
    L = 16
    clipped = tiny_model("bd3lm", max_len=L, block_size=4, clip=(0.3, 0.8))
    plain = tiny_model("bd3lm", max_len=L, block_size=4)
    plain.load_state_dict(clipped.state_dict())
    x = random_batch(4, L, seed=4)
    with torch.no_grad():
        a = clipped.nll(x, draws=2, generator=torch.Generator().manual_seed(0)).nats
        b = plain.nll(x, draws=2, generator=torch.Generator().manual_seed(0)).nats
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        la = clipped.loss(x, generator=torch.Generator().manual_seed(0))
        lb = plain.loss(x, generator=torch.Generator().manual_seed(0))
    assert not torch.isclose(la, lb)
    assert clipped.options()["clip"] == [0.3, 0.8]
    with pytest.raises(ValueError, match="clip"):
        tiny_model("bd3lm", block_size=4, clip=(0.8, 0.3))


SCHEDULES = [
    SamplingSchedule(steps=1),
    SamplingSchedule(steps=3),
    SamplingSchedule(steps=9, top_p=0.8),
    SamplingSchedule(first_hitting=True),
]




def test_under_ignore_bos_position_0_is_always_bos():
    """The model never learned to predict position 0 (it is never masked in training), so the
    sampler gives it, as bd3lms' sampler does; with ignore_bos: false it is generated."""
    model = tiny_model("bd3lm", max_len=16, block_size=4)
    gen = model.sample(3, 16, SamplingSchedule(first_hitting=True), torch.Generator().manual_seed(0))
    assert (gen.tokens[:, 0] == SPECIAL.bos).all() and (gen.tokens != SPECIAL.mask).all()
    assert gen.nfe == 15 + 3  # 15 positions to reveal, one per forward, and 3 cache writes
    free = tiny_model("bd3lm", max_len=16, block_size=4, ignore_bos=False)
    gen = free.sample(64, 16, SamplingSchedule(first_hitting=True), torch.Generator().manual_seed(0))
    assert (gen.tokens[:, 0] != SPECIAL.bos).any()


@pytest.mark.parametrize("block_size", [1, 2, 4, 16])
def test_cached_sampler_equals_full_recompute_and_counts_honestly(block_size):
    """Same generator ⇒ the KV-cached sampler (current block's L' queries against the cache of
    finished blocks, only the rows that reveal something) gives exactly the tokens of full
    recomputation (all rows, whole prefix, block-causal mask, every step).

    Counters, checked against a hook on the trunk: nfe = forwards run (denoising + cache
    writes); tokens_computed = Σ rows × query positions; cached forwards run L' queries each;
    cache_writes = blocks − 1 (the last block is never attended to); first-hitting takes exactly
    L' denoising forwards per block; uncached runs every row over the prefix at every step.
    """
    n, L = 4, 16
    model = tiny_model("bd3lm", max_len=L, block_size=block_size, ignore_bos=False)  # position 0 generated too
    blocks = L // block_size
    for schedule in SCHEDULES:
        counter = CountForwards(model.net)
        cached = model.sample(n, L, schedule, torch.Generator().manual_seed(11))
        counter.handle.remove()
        full = model.sample(n, L, schedule, torch.Generator().manual_seed(11), use_cache=False)
        assert torch.equal(cached.tokens, full.tokens), schedule.label()
        assert (cached.tokens != SPECIAL.mask).all()

        assert cached.nfe == counter.calls and cached.tokens_computed == counter.tokens
        assert all(width == block_size for _, width in counter.shapes)
        assert cached.extra["cache_writes"] == blocks - 1 and full.extra["cache_writes"] == 0
        assert cached.tokens_computed == cached.nfe_per_sample.sum().item() * block_size
        steps = block_size if schedule.first_hitting else schedule.steps
        assert cached.nfe_per_sample.max().item() <= blocks * min(steps, block_size) + blocks - 1
        if schedule.first_hitting:
            assert cached.nfe == blocks * block_size + blocks - 1
            assert (cached.nfe_per_sample == cached.nfe).all()
        assert full.nfe == blocks * steps
        # Every cached forward over block b (denoising, and its cache write) reads slots [0, (b + 1) L').
        assert cached.key_reads == sum(rows * width for rows, width in counter.rows_and_keys) > 0
        if schedule.first_hitting:
            assert cached.key_reads == n * sum((block_size + (b < blocks - 1)) * (b + 1) * block_size
                                               for b in range(blocks))
        assert full.key_reads == 0
        assert full.tokens_computed == n * steps * sum((b + 1) * block_size for b in range(blocks))


def test_schedule_and_length_errors_name_the_fix():
    model = tiny_model("bd3lm", max_len=16, block_size=4)
    with pytest.raises(ValueError, match="exactly one"):
        model.sample(2, 16, SamplingSchedule(steps=4, first_hitting=True))
    with pytest.raises(ValueError, match="exactly one"):
        model.sample(2, 16, SamplingSchedule())
    with pytest.raises(ValueError, match="divisible"):
        model.sample(2, 14, SamplingSchedule(steps=2))
    with pytest.raises(ValueError, match="alpha_0"):
        model.sample(2, 16, SamplingSchedule(steps=2, alpha_0=0.5))
