"""Sampling from a given prefix (``sample(..., prefix=...)``, ``schedule.given_bos``): the
prefix stays, the cached samplers equal full recomputation and the fixed-shape steps, and
Eso-LM's conditionals after a given prefix are the ones it computes when it decodes the
prefix itself."""

import pytest
import torch

from baselines.mdlm import ancestral_denoise, plan_reveals
from harness.schedules import LogLinear, SamplingSchedule
from tests.helpers import SPECIAL, random_batch, tiny_model
from tests.test_mdlm import EPS, GIVEN, table_denoiser

CASES = [
    ("ar", {}, SamplingSchedule()),
    ("mdlm", {}, SamplingSchedule(steps=7)),
    ("bd3lm", {"block_size": 4}, SamplingSchedule(first_hitting=True)),
    ("bd3lm", {"block_size": 4}, SamplingSchedule(steps=3)),
    *[(name, {"alpha_0": 0.5}, SamplingSchedule(steps=5, alpha_0=a))
      for name in ("esolm-a", "esolm-b") for a in (0.0, 0.25, 1.0)],
    ("esolm-b", {"alpha_0": 0.5}, SamplingSchedule(blocks=3, alpha_0=0.75)),
]
L = 24


def prefix_of(n: int, P: int) -> torch.Tensor:
    return random_batch(n, P, seed=9)


@pytest.mark.parametrize("P", [1, 6])  # 6 fills BD3-LM's first block and half its second
@pytest.mark.parametrize("name,options,schedule", CASES)
def test_prefix_is_kept_and_the_fast_paths_agree(name, options, schedule, P):
    model = tiny_model(name, max_len=L, **options)
    prefix = prefix_of(3, P)
    gen = lambda **kw: model.sample(3, L, schedule, torch.Generator().manual_seed(5), prefix=prefix, **kw)
    cached, full = gen(), gen(use_cache=False)
    assert torch.equal(cached.tokens[:, :P], prefix) and (cached.tokens != SPECIAL.mask).all()
    assert torch.equal(cached.tokens, full.tokens)
    model.step_mode = "static"
    assert torch.equal(gen().tokens, cached.tokens)
    if name.startswith("esolm"):  # the given positions take no step of either phase
        free = L - P
        n_diff = cached.extra["diffusion_positions"]
        if schedule.diffusion_split() == "fixed":
            assert n_diff == round((schedule.alpha_0 or 0) * free)
        assert sum(cached.extra["reveal_counts"]) == n_diff and (schedule.alpha_0 != 1.0 or n_diff == free)
        assert cached.nfe == cached.extra["diffusion_steps"] + free - n_diff
        assert cached.extra["sequential_steps"] == free - n_diff
    if name == "mdlm":
        assert cached.nfe <= schedule.steps


@pytest.mark.parametrize("name,options,schedule", CASES)
def test_given_bos_is_the_one_token_prefix(name, options, schedule):
    model = tiny_model(name, max_len=L, **options)
    bos = model.sample(2, L, schedule.model_copy(update={"given_bos": True}), torch.Generator().manual_seed(3))
    same = model.sample(2, L, schedule, torch.Generator().manual_seed(3), prefix=torch.tensor([SPECIAL.bos]))
    assert (bos.tokens[:, 0] == SPECIAL.bos).all() and torch.equal(bos.tokens, same.tokens)
    assert schedule.model_copy(update={"given_bos": True}).label().endswith("bos=True")


def test_bad_prefixes_are_clear_errors():
    model = tiny_model("mdlm", max_len=L)
    for prefix, match in ((torch.zeros(2, L, dtype=torch.long), "0 < P < length"),
                          (torch.zeros(3, 2, dtype=torch.long), r"\(2, P\)"),
                          (torch.tensor([SPECIAL.mask]), r"\[MASK\]")):
        with pytest.raises(ValueError, match=match):
            model.sample(2, L, SamplingSchedule(steps=4), prefix=prefix)


@pytest.mark.parametrize("steps,first_hitting", [(1, False), (3, False), (None, True)])
def test_ancestral_sampler_after_a_given_token_draws_its_conditional(steps, first_hitting):
    """At L = 2 with x0 given, x1 comes from p(x1 | x0) whatever the schedule (the hand-set
    denoiser of test_mdlm), within 5 standard errors of 40,000 draws, and x0 never moves."""
    n = 40_000
    z = torch.full((n, 2), 3, dtype=torch.long)
    z[:, 0] = torch.arange(n) % 3
    g = torch.Generator().manual_seed(2)
    plan = plan_reveals(n, 2, noise=LogLinear(EPS), steps=steps, first_hitting=first_hitting, generator=g,
                        device=None, given=1)[0]
    ancestral_denoise(z, table_denoiser(z), plan, mask_id=3, generator=g, top_p=1.0, every_row=False)
    assert torch.equal(z[:, 0], torch.arange(n) % 3)
    for v in range(3):
        rows = z[z[:, 0] == v, 1]
        freq = torch.bincount(rows, minlength=3).double() / rows.numel()
        band = 5 * (GIVEN[1][v] * (1 - GIVEN[1][v]) / rows.numel()).sqrt()
        assert ((freq - GIVEN[1][v]).abs() < band).all(), (v, freq)


@pytest.mark.parametrize("name", ["esolm-a", "esolm-b"])
@pytest.mark.parametrize("P,n_free_diff", [(1, 0), (3, 0), (3, 4)])
def test_eso_lm_conditionals_after_a_given_prefix(name, P, n_free_diff):
    """Decoding with the prefix given computes, for every later position, the conditional the
    cached sampler computes when it decodes the prefix itself (forced to the same tokens) in
    the same order with the same clean set before the sequential phase."""
    model = tiny_model(name, max_len=16)
    n, length = 3, 12
    x = random_batch(n, length, seed=4)
    rest = P + model.draw_order(n, length - P, n_free_diff, torch.Generator().manual_seed(0))
    order = torch.cat([torch.arange(P).expand(n, P), rest], 1)
    truth = x.gather(1, order)

    def forced(record):
        def pick(logits, start, stop, rows):
            record[rows, start:stop] = logits.log_softmax(-1).gather(-1, truth[rows, start:stop, None])[..., 0]
            return truth[rows, start:stop]
        return pick

    decoded, given = torch.zeros(n, length, dtype=torch.float64), torch.full((n, length), float("nan"),
                                                                             dtype=torch.float64)
    model.decode(order, P + n_free_diff, [1] * length, forced(decoded))
    model.decode(order, P + n_free_diff, [1] * (length - P), forced(given), prefix=truth[:, :P])
    assert given[:, :P].isnan().all()
    torch.testing.assert_close(given[:, P:], decoded[:, P:], rtol=1e-10, atol=1e-10)
