"""MDLM: NELBO values we can derive exactly, the bound on a known distribution, the
sampler's output distribution in closed form, the cached sampler against full
recomputation, honest work counters, and the float64 tail."""

import math

import pytest
import torch
from torch import nn

import harness.sampling as sampling_module
from baselines.mdlm import MDLM
from harness.unmasking.ancestral import ancestral_denoise, plan_reveals
from harness.models import SpecialTokens
from harness.nn.transformer import BackboneConfig
from harness.sampling import top_p_filter
from harness.schedules import LogLinear, SamplingSchedule
from tests.helpers import CountForwards, SPECIAL, VOCAB, random_batch, tiny_model

EPS = 1e-3


@pytest.mark.parametrize("eps", [EPS, 0.5])  # 0.5: a weight without its (1 − eps) would be 2× off, far outside 4 SE
def test_equal_logits_nelbo_has_its_exact_expectation(eps):
    """Zero head ⇒ every masked position costs exactly log V (V = 49 real tokens; [MASK] is
    excluded by SUBS).  One draw per sequence is X = (1/t)·K·log V with K | t ~ Bin(L, (1−eps)t),
    so E[X | t] = (1−eps)·L·log V for every t: E[X] = (1−eps)·L·log V, and
    Var X = E[Var(X | t)] = L·log²V·(ln(1/eps) − (1−eps)²) for t ~ U[eps, 1].  The sample mean
    over N sequences must sit within 4 standard errors; the per-token loss likewise
    ((1−eps)·log V; antithetic t only lowers its variance, so the iid bound is conservative)."""
    model = tiny_model("mdlm", max_len=16, dtype=torch.float32, eps=eps)
    with torch.no_grad():
        model.net.head.weight.zero_()
    log_v, L, N = math.log(VOCAB - 1), 16, 4000
    x = random_batch(N, L, seed=1)
    g = torch.Generator().manual_seed(0)

    zt = model.corrupt(x[:8], torch.full((8,), 0.5), g)
    ce = model.token_ce(x[:8], zt)
    masked = zt == SPECIAL.mask
    assert masked.any() and (~masked).any()
    torch.testing.assert_close(ce[masked], torch.full_like(ce[masked], log_v), rtol=1e-6, atol=1e-6)
    assert (ce[~masked] == 0).all()  # clean positions carry over: zero loss

    result = model.nll(x, generator=g)
    assert not result.exact and result.estimator == "nelbo(draws=1)" and result.tokens == L
    mean = (1 - eps) * L * log_v
    se = math.sqrt(L * log_v**2 * (math.log(1 / eps) - (1 - eps) ** 2) / N)
    assert abs(result.nats.mean().item() - mean) < 4 * se, (result.nats.mean().item(), mean, se)

    loss = model.loss(x, generator=g).item()
    assert abs(loss - (1 - eps) * log_v) < 4 * se / L


def test_nelbo_bounds_the_entropy_of_a_known_distribution():
    """Train on fresh samples of a known distribution p* over length-2 sequences (6 tokens),
    then compute the model's NELBO exactly by enumerating every mask pattern.

    With A(x) = −log p_θ(x0|MM) − log p_θ(x1|MM) and B(x) = −log p_θ(x0|M x1) − log p_θ(x1|x0 M),
    one draw's expectation is, for masking probability m = (1−eps)t and weight 1/t,
        E[· | t] = (1/t)·(m²·A + m(1−m)·B),   t ~ U[eps, 1]  ⇒
        E = (1−eps)²(1+eps)/2 · A + (1−eps)(1 − (1−eps)(1+eps)/2) · B.
    (a) ``nll`` agrees with this closed form within Monte-Carlo error (weights, masking rate
        and the eps terms as implemented).
    (b) As eps → 0 it becomes (A + B)/2: the mean, over the two generation orders, of
        −log q_order(x), where q_order(x) = p_θ(x_a|MM)·p_θ(x_b|·) is a normalised distribution
        (SUBS never puts mass on [MASK]).  By Gibbs' inequality E_p*[−log q] ≥ H(p*) for any q,
        so E_p*[(A+B)/2] ≥ H(p*) — exactly, no Monte Carlo.  Both coefficients above are
        ≥ (1−eps)(1−eps²)/2, so the implemented expectation is ≥ (1−eps)(1−eps²)·H(p*).
    (c) Training brought the bound within 0.1 nats of H(p*), so (b) is not vacuous: a denoiser
        that saw its own target (a leaky mask) would be pushed below H and fail.
    """
    torch.manual_seed(0)
    cfg = BackboneConfig.from_preset("tiny", vocab_size=7, max_len=2)
    model = MDLM(cfg, SpecialTokens(bos=0, eos=0, mask=6))
    # Symmetric p*(a, b) = p*(b, a): with rotary positions only, an all-[MASK] input gives both
    # positions the same prediction, so equal marginals keep p* representable (for (c)).
    w = torch.tensor([3.0, 2.5, 2.0, 1.5, 1.0, 0.5], dtype=torch.float64)
    p_star = w[:, None] * w[None, :]
    for a in range(6):
        p_star[a, (a + 1) % 6] *= 6
        p_star[(a + 1) % 6, a] *= 6
    p_star /= p_star.sum()
    entropy = -(p_star * p_star.log()).sum().item()
    cells = torch.cartesian_prod(torch.arange(6), torch.arange(6))  # row a*6+b = (a, b)

    g = torch.Generator().manual_seed(1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(200):
        batch = cells[torch.multinomial(p_star.flatten(), 256, replacement=True, generator=g)]
        opt.zero_grad()
        model.loss(batch, generator=g).backward()
        opt.step()

    model.eval().double()
    with torch.no_grad():
        M = 6
        both = model.token_ce(cells, torch.full_like(cells, M)).double()
        only0 = model.token_ce(cells, cells.clone().index_fill_(1, torch.tensor([0]), M)).double()[:, 0]
        only1 = model.token_ce(cells, cells.clone().index_fill_(1, torch.tensor([1]), M)).double()[:, 1]
    A, B = both.sum(1), only0 + only1
    c_a = (1 - EPS) ** 2 * (1 + EPS) / 2
    c_b = (1 - EPS) * (1 - (1 - EPS) * (1 + EPS) / 2)
    expected = c_a * A + c_b * B

    # (a) Monte Carlo against the closed form, per sequence.
    reps, draws = 400, 8
    est = model.nll(cells.repeat(reps, 1), draws=draws, generator=g).nats.view(reps, 36)
    z = (est.mean(0) - expected) / (est.std(0) / math.sqrt(reps))
    assert z.abs().max() < 5, z

    # (b) exact bounds under p*;  (c) not vacuous.
    weights = p_star.flatten()
    ideal = (weights * (A + B) / 2).sum().item()
    assert ideal >= entropy
    assert (weights * expected).sum().item() >= (1 - EPS) * (1 - EPS**2) * entropy
    assert ideal - entropy < 0.1, (ideal, entropy)


# A stand-in denoiser at L = 2 over 3 tokens ([MASK] = 3) whose conditionals are set by
# hand: p(x_i | other masked) = MARGINAL[i], p(x_i | other = v) = GIVEN[i][v].  They need
# not come from one joint distribution: the test is about the sampler's mechanics.
MARGINAL = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]], dtype=torch.float64)
GIVEN = torch.tensor([[[0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.8, 0.1, 0.1]],   # x0 given x1 = v
                      [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]],  # x1 given x0 = v
                     dtype=torch.float64)


def table_denoiser(z: torch.Tensor):
    def denoiser(rows):
        window = z if rows is None else z[rows]
        columns = []
        for i in (0, 1):
            other = window[:, 1 - i]
            probs = torch.where((other == 3)[:, None], MARGINAL[i], GIVEN[i][other.clamp_max(2)])
            columns.append(probs.log())
        return torch.nn.functional.pad(torch.stack(columns, 1), (0, 1))  # + the [MASK] column
    return denoiser


def pair_distribution(same_step: float) -> torch.Tensor:
    """q(x0, x1) of a sampler that reveals both positions at one step with probability
    ``same_step`` (each from its all-[MASK] marginal) and otherwise one first, in a uniformly
    random order, then the other given it."""
    both = MARGINAL[0][:, None] * MARGINAL[1][None, :]
    first0 = MARGINAL[0][:, None] * GIVEN[1]
    first1 = MARGINAL[1][None, :] * GIVEN[0].T
    return same_step * both + (1 - same_step) / 2 * (first0 + first1)


@pytest.mark.parametrize("steps,first_hitting", [(1, False), (2, False), (5, False), (None, True)])
def test_ancestral_sampler_draws_the_closed_form_pair_distribution(steps, first_hitting):
    """With the log-linear schedule a position is first revealed at step k with probability
    (alpha_s - alpha_t)/(1 - alpha_1) = 1/T for every k (eps cancels), so two positions share a
    step with probability 1/T; first hitting never reveals two at once.  40,000 samples at
    L = 2 must match pair_distribution(1/T) in every cell within 5 standard errors, and the
    alternatives (all at once, one at a time) must be far outside that band, so the test can
    tell a wrong reveal schedule or a stale conditional from the right one."""
    n = 40_000
    same = 0.0 if first_hitting else 1 / steps
    z = torch.full((n, 2), 3, dtype=torch.long)
    g = torch.Generator().manual_seed(7)
    plan = plan_reveals(n, 2, noise=LogLinear(EPS), steps=steps, first_hitting=first_hitting, generator=g,
                        device=None)[0]
    ancestral_denoise(z, table_denoiser(z), plan, mask_id=3, generator=g, top_p=1.0, every_row=False)
    freq = torch.bincount(z[:, 0] * 3 + z[:, 1], minlength=9).double().view(3, 3) / n
    expected = pair_distribution(same)
    band = 5 * (expected * (1 - expected) / n).sqrt()
    assert ((freq - expected).abs() < band).all(), (freq, expected)
    for wrong in {0.0, 1.0, 0.5} - {same}:
        assert ((pair_distribution(wrong) - expected).abs() > 3 * band).any()


def test_ancestral_sampler_gives_the_same_tokens_whichever_rows_it_runs():
    """Running every row at every step, every row at steps where any reveals (fixed-shape
    steps), or only the revealing rows consumes the generator identically."""
    outs = []
    for every_row, all_rows in [(False, False), (True, False), (False, True)]:
        z = torch.full((64, 2), 3, dtype=torch.long)
        g = torch.Generator().manual_seed(3)
        plan = plan_reveals(64, 2, noise=LogLinear(EPS), steps=4, first_hitting=False, generator=g, device=None)[0]
        ancestral_denoise(z, table_denoiser(z), plan, mask_id=3, generator=g, top_p=1.0, every_row=every_row,
                          all_rows=all_rows)
        outs.append(z)
    assert (outs[0] != 3).all() and all(torch.equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_cached_sampler_equals_full_recompute_and_counts_honestly(top_p):
    """use_cache runs a row only when it reveals a token; use_cache=False runs every row at every
    step.  Same generator ⇒ same tokens.  The counters are checked against a hook on the trunk:
    nfe = forwards run, tokens_computed = Σ rows·L, nfe_per_sample ≤ min(T, L) (the last grid
    step, s = 0, is the final fill — no extra forward), even for T > L."""
    model = tiny_model("mdlm", max_len=16)
    n, L = 5, 16
    for steps in (1, 3, 16, 50):
        schedule = SamplingSchedule(steps=steps, top_p=top_p)
        counter = CountForwards(model.net)
        cached = model.sample(n, L, schedule, torch.Generator().manual_seed(steps))
        counter.handle.remove()
        full = model.sample(n, L, schedule, torch.Generator().manual_seed(steps), use_cache=False)
        assert torch.equal(cached.tokens, full.tokens)
        assert (cached.tokens != SPECIAL.mask).all()

        assert cached.nfe == counter.calls <= steps
        assert cached.tokens_computed == counter.tokens == sum(r * L for r, _ in counter.shapes)
        assert all(width == L for _, width in counter.shapes)
        assert cached.tokens_computed == cached.nfe_per_sample.sum().item() * L
        assert cached.nfe_per_sample.max().item() <= min(steps, L)
        assert full.nfe == steps and full.tokens_computed == steps * n * L
        assert (full.nfe_per_sample == steps).all()
    with pytest.raises(ValueError, match="first_hitting"):
        model.sample(2, L, SamplingSchedule(steps=4, first_hitting=True))
    with pytest.raises(ValueError, match="steps"):
        model.sample(2, L, SamplingSchedule())


class FixedLogits(nn.Module):
    """Stands in for the trunk: the same categorical at every position."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.head = nn.Linear(1, 1)  # LanguageModel.device looks here
        self.register_buffer("logits", logits)

    def forward(self, tokens, positions, mask, cache=None, commit=0):
        return self.logits.expand(tokens.shape[0], tokens.shape[1], -1)


def sample_tokens_float32(logits, generator, top_p=1.0, rows=None, noise_out=None):
    """The bug under test: Gumbel noise from float32 uniforms, capped at −log(−log(1 − 2⁻²⁴)) ≈ 16.6."""
    logits = top_p_filter(logits.float(), top_p)
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)
    return (logits - torch.log(-torch.log(u.clamp_min(torch.finfo(torch.float32).tiny)))).argmax(dim=-1)


def poisson_cdf(k: int, lam: float) -> float:
    return sum(math.exp(-lam + i * math.log(lam) - math.lgamma(i + 1)) for i in range(k + 1))


def test_chunked_draws_exclude_mask_in_every_chunk(monkeypatch):
    """A step's draws are taken in chunks of positions (bounded memory); [MASK] must get no
    mass in any chunk, and chunking must not change the tokens drawn."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 8, VOCAB, dtype=torch.float64, generator=g)
    logits[..., SPECIAL.mask] = 50.0  # [MASK] would win every draw it is allowed into
    rows, cols = torch.arange(3).repeat_interleave(8), torch.arange(8).repeat(3)

    def draw():  # as the MDLM sampler draws a step's revealed positions
        drawer = sampling_module.Drawer(VOCAB, torch.Generator().manual_seed(0), 1.0, SPECIAL.mask)
        drawer.push(logits[rows, cols], rows)
        return drawer.finish()

    whole = draw()
    monkeypatch.setattr(sampling_module, "SAMPLE_CHUNK_ELEMENTS", 5 * VOCAB)  # 5 positions per chunk: 5 chunks
    chunked = draw()
    assert (whole != SPECIAL.mask).all() and (chunked != SPECIAL.mask).all()
    assert torch.equal(chunked, whole)


def test_sampler_keeps_the_float64_tail(monkeypatch, all_threads):
    """4094 tail tokens of probability 2e-8 each (tail mass 8.2e-5) behind one head token.

    A tail token wins a Gumbel-max iff its noise exceeds the head's by log(p_head/p) ≈ 17.7.
    With float64 noise the tail count over N draws is Poisson(N·mass).  float32 noise is capped
    at 16.6, which leaves the tail only when the head's own noise is unusually low: the tail
    rate drops by exp(−2⁻²⁴/p) ≈ 0.05 (with E = e^{−g_head} ~ Exp(1), the win probability
    p·E[(E − 2⁻²⁴/p)₊] = p·exp(−2⁻²⁴/p)).  λ = 10 expected tail draws: float64 must not be
    significantly low or high (Poisson tails ≥ 0.5%); the float32 variant, expected ≈ 0.5,
    lands in the rejected low tail — the test would fail for float32.  ~5·10⁸ noise draws each.
    """
    V, p_tail = 4096, 2e-8
    probs = torch.full((V,), p_tail, dtype=torch.float64)
    probs[V - 1] = 0.0  # [MASK]
    probs[0] = 1 - probs[1:].sum()
    cfg = BackboneConfig.from_preset("tiny", vocab_size=V, max_len=16)
    model = MDLM(cfg, SpecialTokens(bos=0, eos=0, mask=V - 1))
    model.net = FixedLogits(probs.log().float())
    n, L = 7680, 16
    lam = n * L * probs[1:].sum().item()

    def tail_count() -> int:
        out = model.sample(n, L, SamplingSchedule(steps=1), torch.Generator().manual_seed(0))
        assert out.nfe == 1 and (out.tokens != V - 1).all()
        return int((out.tokens != 0).sum())

    k64 = tail_count()
    assert poisson_cdf(k64, lam) >= 5e-3 and 1 - poisson_cdf(k64 - 1, lam) >= 5e-3, (k64, lam)

    monkeypatch.setattr(sampling_module, "sample_tokens", sample_tokens_float32)  # what the Drawer calls
    k32 = tail_count()
    assert poisson_cdf(k32, lam) < 5e-3, (k32, lam)


def test_first_hitting_is_one_token_per_forward_and_needs_no_cache():
    """MDLM first hitting: NFE = the positions to generate, exactly (L, or L − 1 from BOS), each
    forward runs every row over all L positions, and the cached and uncached runs draw the
    same tokens."""
    model, L, n = tiny_model("mdlm", max_len=12), 12, 3
    for given_bos, nfe in [(False, L), (True, L - 1)]:
        schedule = SamplingSchedule(first_hitting=True, given_bos=given_bos)
        gen = model.sample(n, L, schedule, torch.Generator().manual_seed(1))
        assert (gen.tokens != SPECIAL.mask).all()
        assert gen.nfe == nfe and gen.nfe_per_sample.tolist() == [nfe] * n
        assert gen.tokens_computed == n * L * nfe
        drawn = gen.step[gen.step >= 0].view(n, nfe)  # every step reveals exactly one position per row
        assert all(sorted(row) == list(range(nfe)) for row in drawn.tolist())
        uncached = model.sample(n, L, schedule, torch.Generator().manual_seed(1), use_cache=False)
        assert torch.equal(uncached.tokens, gen.tokens)
    with pytest.raises(ValueError, match="'first_hitting' reveals one position per step.*'steps'"):
        MDLM.check_schedule(SamplingSchedule(first_hitting=True, steps=8))


def test_first_hitting_reveals_positions_as_the_ancestral_sampler_does_as_T_grows():
    """Which position step k reveals: under first hitting, and under the ancestral sampler at
    T = 1000 (its order of first reveals; rows with a tie left out), both are uniform over the
    L = 4 positions at every k (each cell within a chi-square bound of p = 0.001 with 3
    degrees of freedom, 2,000 rows, fixed seeds), and the two agree with each other by the
    same bound; the ancestral sampler at T = 1 (all at once) fails it."""
    model, L, n, bound = tiny_model("mdlm", max_len=4), 4, 2000, 16.27

    def revealed_at(schedule, seed):
        step = model.sample(n, L, schedule, torch.Generator().manual_seed(seed)).step
        distinct = torch.tensor([torch.unique(row).numel() == L for row in step])
        order = step[distinct].argsort(dim=1)  # order[:, k]: the position revealed k-th
        return torch.stack([torch.bincount(order[:, k], minlength=L) for k in range(L)]).double()

    def chi2(counts, expected):
        return ((counts - expected) ** 2 / expected).sum(-1)

    first = revealed_at(SamplingSchedule(first_hitting=True), 0)
    ancestral = revealed_at(SamplingSchedule(steps=1000), 1)
    assert first.sum(-1).eq(n).all() and ancestral.sum() > 0.98 * n * L
    for counts in (first, ancestral):
        assert (chi2(counts, counts.sum(-1, keepdim=True) / L) < bound).all(), counts
    pooled = (first + ancestral) / (first.sum(-1, keepdim=True) + ancestral.sum(-1, keepdim=True))
    two_sample = chi2(first, pooled * first.sum(-1, keepdim=True)) + chi2(ancestral, pooled * ancestral.sum(-1, keepdim=True))
    assert (two_sample < bound).all(), two_sample
    one_step = model.sample(n, L, SamplingSchedule(steps=1), torch.Generator().manual_seed(2)).step
    assert (one_step == 0).all()  # no order at all: the test above would see every row tied
