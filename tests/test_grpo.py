"""GRPO (harness.grpo, examples/grpo.py): the clipped objective and the advantages equal a
hand computation; the tasks score what they say; streaming the backward changes nothing;
from a fixed seed the reward rises within a few seconds of CPU."""

import math

import pytest
import torch

from examples.grpo import run
from harness.grpo import ContainsSpan, GRPOConfig, RepeatToken, clipped_objective, group_advantages, load_task


def test_clipped_objective_matches_a_hand_computation():
    log_p = torch.tensor([-1.0, -2.0], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([-1.2, -1.5], dtype=torch.float64)
    adv = torch.tensor([1.0, -0.5], dtype=torch.float64)
    tokens = torch.tensor([2.0, 1.0], dtype=torch.float64)
    ref = torch.tensor([-1.1, -2.5], dtype=torch.float64)
    loss = clipped_objective(log_p, old, adv, tokens, clip=0.2, kl_coef=0.1, log_ref=ref)
    r1 = math.exp(0.2 / 2)  # inside the clip range: the plain ratio
    r2 = 0.8  # exp(-0.5) = 0.607 with a negative advantage: the clipped branch, 0.8 · (-0.5), is the minimum
    kl = ((math.exp(-0.1) + 0.1 - 1) + (math.exp(-0.5) + 0.5 - 1)) / 2
    assert loss.item() == pytest.approx(-(r1 * 1.0 + r2 * -0.5) / 2 + 0.1 * kl, abs=1e-12)
    loss.backward()
    kl_grad = [0.1 / 2 * (1 - math.exp(d)) for d in (-0.1, -0.5)]  # d k3 / d log p = 1 - e^{ref - p}
    assert log_p.grad[0].item() == pytest.approx(-0.5 * r1 / 2 + kl_grad[0], abs=1e-12)
    assert log_p.grad[1].item() == pytest.approx(kl_grad[1], abs=1e-12)  # clipped: no policy gradient


def test_group_advantages_are_centred_and_scaled_within_each_group():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    a = group_advantages(r, 4)
    sd = math.sqrt(0.1875)
    torch.testing.assert_close(a[:4], torch.tensor([0.75, -0.25, -0.25, -0.25], dtype=torch.float64) / (sd + 1e-4))
    assert torch.equal(a[4:], torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(group_advantages(r, 4, normalise=False)[:2],
                               torch.tensor([0.75, -0.25], dtype=torch.float64))
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(r, 3)


def test_tasks_reward_what_they_say():
    task = ContainsSpan(span=[5, 6], prefix=[0])
    tokens = torch.tensor([[0, 5, 6, 1], [0, 6, 5, 1], [5, 6, 1, 1]])
    assert task.reward(tokens, 1).tolist() == [1.0, 0.0, 0.0]  # the third holds it only in its prompt
    assert task.prompts(3).tolist() == [[0]] * 3
    rep = RepeatToken(bos=0)
    assert rep.reward(torch.tensor([[0, 3, 3, 1, 3, 3]]), 2).tolist() == [0.75]
    p = rep.prompts(5, torch.Generator().manual_seed(0))
    assert p.shape == (5, 2) and (p[:, 0] == 0).all() and ((p[:, 1] >= 1) & (p[:, 1] <= 8)).all()
    assert isinstance(load_task("harness.grpo:RepeatToken", bos=0), RepeatToken)
    with pytest.raises(ValueError, match="cannot import"):
        load_task("harness.grpo:Nope")


def test_grpo_raises_the_reward_from_a_fixed_seed():
    """The CI run: Eso-LM (B), its exact one-pass log-probabilities, 8 steps of 16 samples
    (seed 0: the share of samples holding the target goes from rare to nearly all)."""
    lines = []
    rows = run("exact", steps=8, log=lines.append)
    rewards = [r["reward"] for r in rows]
    assert sum(line.startswith("step") for line in lines) == 8 and rows[-1]["estimator_forwards"] == 16  # π_old + one update per step, one pass each
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert first < 0.4 and last > first + 0.4, rewards


@pytest.mark.parametrize("estimator,options", [("exact", {}), ("elbo_mc", {"draws": 2})])
def test_a_streamed_backward_takes_the_same_steps(estimator, options):
    """Two updates per batch, PPO-clipped, with a KL: streaming the backward one pass at a time
    gives the rewards and losses of the one-graph backward (MDLM: several passes per score)."""
    kw = dict(model_name="mdlm", steps=3, updates=2, kl_coef=0.05, pretrain_steps=10, estimator_options=options,
              log=lambda line: None)
    plain, streamed = run(estimator, **kw), run(estimator, streaming=1, **kw)
    for a, b in zip(plain, streamed):
        assert a["reward"] == b["reward"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)
    assert streamed[-1]["estimator_forwards"] > plain[-1]["estimator_forwards"]  # the second update's values pass


def test_config_defaults_describe_one_on_policy_update():
    cfg = GRPOConfig()
    assert (cfg.estimator, cfg.updates, cfg.kl_coef, cfg.streaming) == ("exact", 1, 0.0, None)


def test_the_estimator_sweep_writes_its_rows_report_and_plot(tmp_path):
    from examples.grpo_sweep import report, sweep

    rows = sweep(tmp_path, ["exact", "elbo_mc-1"], seeds=2, steps=3, task="contains", groups=2, group_size=4,
                 pretrain_steps=10, threshold=0.0, log=lambda line: None)
    assert len(rows) == 2 * 2 * 3 and (tmp_path / "points.jsonl").exists()
    assert [r["step"] for r in rows[:3]] == [1, 2, 3] and all(r["cpu_seconds"] > 0 for r in rows)
    cfg = dict(seeds=2, steps=3, groups=2, group_size=4, task="contains", machine="m", torch="t")
    text = report(rows, cfg, threshold=0.0)
    assert "| exact | 2 |" in text and "| elbo_mc-1 | 2 |" in text  # π_old + one update: two forwards a step
    assert text.count("| 0/2 | — | — |") == 2  # 3 steps hold no 5-step window: no run reaches the threshold
