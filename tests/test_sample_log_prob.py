"""Scoring a model's own samples (``sample_log_prob``): the order and step partition every
sampler records, equality with the log-probabilities the sampler drew with (recorded by the
hook in harness.sampling), the number of passes, gradients, and the NELBO alternative."""

import pytest
import torch

from harness.models import Generation
from harness.sampling import record_log_probs
from harness.schedules import SamplingSchedule
from tests.helpers import CountForwards, random_batch, tiny_model

L, N = 24, 3
CASES = [
    ("ar", {}, SamplingSchedule()),
    ("ar", {}, SamplingSchedule(top_p=0.8)),
    ("mdlm", {}, SamplingSchedule(steps=7)),
    ("mdlm", {}, SamplingSchedule(steps=40, top_p=0.8)),
    ("bd3lm", {"block_size": 4, "ignore_bos": False}, SamplingSchedule(first_hitting=True)),
    ("bd3lm", {"block_size": 4, "ignore_bos": False}, SamplingSchedule(steps=3, top_p=0.8)),
    ("esolm-a", {"alpha_0": 0.5}, SamplingSchedule(steps=5, alpha_0=0.5)),
    ("esolm-a", {"alpha_0": 0.5}, SamplingSchedule(blocks=3, alpha_0=1.0, top_p=0.8)),
    ("esolm-b", {"alpha_0": 0.5}, SamplingSchedule(steps=5, alpha_0=0.5)),
    ("esolm-b", {"alpha_0": 0.5}, SamplingSchedule(steps=5, alpha_0=0.0)),
    ("esolm-b", {"alpha_0": 0.5}, SamplingSchedule(blocks=3, alpha_0=0.75, top_p=0.8)),
    ("esolm-b", {"alpha_0": 0.5}, SamplingSchedule(steps=5, alpha_0=0.5, split="fixed")),
    ("esolm-b", {"alpha_0": 0.5}, SamplingSchedule(stride=2, alpha_0=0.5, shuffle=True)),
    ("esolm-a", {"alpha_0": 0.5}, SamplingSchedule(stride=4, alpha_0=0.75)),
]
IDS = [f"{name}-{schedule.label()}" for name, _, schedule in CASES]


def sample(model, schedule, P, seed=5, **kw):
    if schedule.stride and (L - P) % schedule.stride:
        pytest.skip("the strided schedule needs the stride to divide the generated positions")
    prefix = None if P == 0 else random_batch(N, P, seed=9)
    with record_log_probs(N) as recorded:
        gen = model.sample(N, L, schedule, torch.Generator().manual_seed(seed), prefix=prefix, **kw)
    return gen, recorded


@pytest.mark.parametrize("mode", ["dynamic", "static"])
@pytest.mark.parametrize("P", [0, 1, 6])
@pytest.mark.parametrize("name,options,schedule", CASES, ids=IDS)
def test_sample_log_prob_equals_the_log_probs_drawn_with(name, options, schedule, P, mode):
    model = tiny_model(name, max_len=L, **options)
    model.step_mode = mode
    gen, recorded = sample(model, schedule, P)
    assert recorded.abs().min() > 1.0  # every row drew tokens of real probability < 1
    calls = CountForwards(model.net)
    with torch.no_grad():
        scored = model.sample_log_prob(gen, top_p=schedule.top_p)
    torch.testing.assert_close(scored.log_prob, recorded, rtol=1e-10, atol=1e-10)
    assert scored.exact and scored.estimator == "exact" and calls.calls == scored.passes
    assert scored.tokens_computed == calls.tokens
    if name in ("ar", "esolm-b"):
        assert scored.passes == 1
    elif name == "esolm-a":
        sequential = gen.extra["sequential_steps"] > 0
        assert scored.passes == gen.extra["diffusion_steps"] + sequential
    elif name == "mdlm" and mode == "dynamic":  # one pass per forward of the row that took most
        assert scored.passes == int(gen.nfe_per_sample.max()) <= schedule.steps
    elif name == "bd3lm":
        assert scored.passes <= min(schedule.steps or 4, 4)


@pytest.mark.parametrize("P", [0, 6])
@pytest.mark.parametrize("name,options,schedule", CASES, ids=IDS)
def test_every_sampler_records_its_order_and_steps(name, options, schedule, P):
    model = tiny_model(name, max_len=L, **options)
    gen, _ = sample(model, schedule, P)
    cached_again, _ = sample(model, schedule, P, use_cache=False)
    assert torch.equal(cached_again.step, gen.step) and torch.equal(cached_again.order, gen.order)
    order, step = gen.order, gen.step
    assert torch.equal(order.sort(1).values, torch.arange(L).expand(N, L))  # a permutation per row
    in_order = step.gather(1, order)
    assert (in_order.diff(dim=1) >= 0).all()  # by step, given positions first
    given = max(P, 1) if name == "ar" else P
    assert torch.equal(step < 0, (torch.arange(L) < given).expand(N, L))
    distinct = torch.tensor([len(set(row) - {-1}) for row in step.tolist()])
    if name.startswith("esolm"):  # one step per forward, shared by the rows
        assert (distinct == gen.nfe).all()
        counts = torch.bincount(step[0][step[0] >= 0]).tolist()
        assert counts[: gen.extra["diffusion_steps"]] == gen.extra["reveal_counts"]
        assert order[:, :P].equal(torch.arange(P).expand(N, P))
    elif name == "mdlm":  # a row runs exactly at the steps where it reveals something (reuse)
        assert torch.equal(distinct, gen.nfe_per_sample)
    elif name == "bd3lm":
        assert torch.equal(distinct + gen.extra["cache_writes"], gen.nfe_per_sample)
    else:
        assert torch.equal(order, torch.arange(L).expand(N, L)) and (distinct == L - given).all()


def finite_difference_check(model, gen, entries=4, h=1e-6):
    """d/dθ Σ_rows sample_log_prob at a few entries of every parameter tensor, analytic vs
    central differences (float64)."""
    g = torch.Generator().manual_seed(0)
    model.zero_grad()
    model.sample_log_prob(gen).log_prob.sum().backward()
    checked = 0
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        flat, grad = p.data.view(-1), p.grad.view(-1)
        for i in torch.randint(0, flat.numel(), (entries,), generator=g).tolist():
            old = flat[i].item()
            with torch.no_grad():
                flat[i] = old + h
                up = model.sample_log_prob(gen).log_prob.sum().item()
                flat[i] = old - h
                down = model.sample_log_prob(gen).log_prob.sum().item()
                flat[i] = old
            assert grad[i].item() == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-7), (name, i)
            checked += 1
    return checked


@pytest.mark.parametrize("name,options,schedule", [CASES[0], CASES[2], CASES[4], CASES[6], CASES[8]],
                         ids=[IDS[0], IDS[2], IDS[4], IDS[6], IDS[8]])
def test_gradient_matches_finite_differences(name, options, schedule):
    model = tiny_model(name, max_len=8, **options)
    gen = model.sample(2, 8, schedule, torch.Generator().manual_seed(1), prefix=torch.tensor([1, 2]))
    assert finite_difference_check(model, gen) >= 4 * 10  # embeddings, attention, MLP, head ...


@pytest.mark.parametrize("name,options", [("mdlm", {}), ("bd3lm", {"block_size": 4})])
def test_elbo_is_the_nelbo_and_keeps_given_positions_clean(name, options):
    model = tiny_model(name, max_len=L, **options)
    gen, _ = sample(model, SamplingSchedule(steps=4), 0)
    elbo = model.elbo_log_prob(gen, draws=3, generator=torch.Generator().manual_seed(2))
    nelbo = model.nll(gen.tokens, draws=3, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(elbo.log_prob, -nelbo.nats)
    assert not elbo.exact and elbo.estimator == "elbo(draws=3)" and elbo.passes == 3
    everything_given = Generation(gen.tokens, 0, 0, step=torch.full_like(gen.step, -1))
    assert (model.elbo_log_prob(everything_given, draws=2).log_prob == 0).all()
    model.zero_grad()
    model.elbo_log_prob(gen).log_prob.sum().backward()
    assert model.net.head.weight.grad.abs().sum() > 0


def test_step_mask_reads_like_the_sampler_windows():
    from harness.nn import masks

    assert torch.equal(masks.esolm_steps(torch.arange(6)), masks.esolm_sequential(6, 0, "B"))
    # sorted indices 0 given, 1-2 drawn at step 0, 3 at step 1
    m = masks.esolm_steps(torch.tensor([-1, 0, 0, 1])).int()
    assert m[:4].tolist() == [[1, 0, 0, 0, 0, 0, 0, 0],   # (a given z row is never scored)
                              [0, 1, 0, 0, 1, 0, 0, 0],   # step 0's first [MASK]: the prefix, itself
                              [0, 1, 1, 0, 1, 0, 0, 0],   # its second: the prefix, both [MASK]s
                              [0, 0, 0, 1, 1, 1, 1, 0]]   # step 1: every earlier clean token
    assert torch.equal(m[4:, 4:], masks.causal(4).int()) and not m[4:, :4].any()
    batch = torch.tensor([[-1, 0, 0, 1], [0, 1, 2, 3]])
    assert masks.esolm_steps(batch).shape == (2, 8, 8) and torch.equal(masks.esolm_steps(batch)[0].int(), m)


def test_bench_likelihood_command_writes_resumes_and_refuses_other_settings(tmp_path, capsys):
    import json

    from harness.cli import main

    out = tmp_path / "bench"
    args = ["bench-likelihood", "--out", str(out), "--models", "mdlm,esolm-b", "--lengths", "8",
            "--batch-sizes", "2", "--vocab", "16", "--repeats", "1", "--no-backward", "--device", "cpu", "--quiet"]
    main(args)
    rows = [json.loads(line) for line in (out / "points.jsonl").read_text().splitlines()]
    by = {(r["setup"], r["scorer"]): r for r in rows}
    assert set(by) == {("mdlm", "exact"), ("mdlm", "elbo(draws=1)"), ("esolm-b", "exact")}
    assert by["esolm-b", "exact"]["passes"] == 1 and by["mdlm", "elbo(draws=1)"]["passes"] == 1
    assert 1 <= by["mdlm", "exact"]["passes"] <= 2  # T = L/4 = 2 steps
    assert by["esolm-b", "exact"]["max_abs_diff_vs_sampler"] < 1e-4
    assert "Eso-LM (B) exact: 1 pass" in (out / "report.md").read_text()
    main(args)  # finished points are kept, not redone
    assert len((out / "points.jsonl").read_text().splitlines()) == len(rows)
    with pytest.raises(SystemExit) as exit_:
        main(args + ["--vocab", "32"])  # the last --vocab wins
    assert exit_.value.code == 2 and "other settings (vocab)" in capsys.readouterr().err
