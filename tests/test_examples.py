"""The worked examples run, at their tiny default size, and show what they claim."""

from examples.reinforce_esolm import reinforce, reward


def test_reward_counts_samples_holding_the_target():
    import torch

    from examples.reinforce_esolm import TARGET
    tokens = torch.tensor([[0, 1, 2], [0, TARGET, 1], [TARGET, TARGET, 3]])
    assert reward(tokens).tolist() == [0.0, 1.0, 1.0]


def test_reinforce_on_single_pass_log_probs_raises_the_reward():
    """From a fixed seed, REINFORCE through Eso-LM (B)'s one-pass sample_log_prob lifts the
    share of samples holding the target token from rare to most (seed 0: 0.06 -> 1.0)."""
    lines = []
    rewards = reinforce(rl_steps=8, batch=16, pretrain_steps=60, seed=0, log=lines.append)
    assert len(rewards) == len(lines) == 8 and all("1 pass for 16 samples" in line for line in lines)
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert first < 0.4 and last > first + 0.4, rewards
