"""GRPO for diffusion LMs with any likelihood estimator (docs/likelihood.md §4).

One step, for G prompts × S samples each:
  1. sample y ~ π_old(· | prompt) (no gradients; the sampler records order and steps);
  2. reward r(prompt, y) from a verifiable :class:`Task`;
  3. group-relative advantage A = (r − mean_group r) / (std_group r + δ);
  4. for each of ``updates`` optimiser steps on the same samples:
       ρ = exp((log π_θ(y) − log π_old(y)) / n_y)            (n_y: scored tokens; ESPO's
                                                              per-token normalisation)
       loss = −mean[ min(ρ A, clip(ρ, 1 − ε, 1 + ε) A) ] + β · mean KL_k3(π_θ ‖ π_ref)
     with every log π from the chosen estimator (harness.likelihood) and, for the noisy ones,
     the same noise (mask seed) for π_θ, π_old and π_ref, as d1 and VRPO couple them.

A task is a plug-in: any object with ``prompts(n, generator) -> (n, P) LongTensor`` and
``reward(tokens, prompt_length) -> (n,) float tensor``; :func:`load_task` also takes a dotted
path ``"pkg.module:Class"``.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field

import torch

from harness.likelihood import backward, estimate

ADVANTAGE_EPS = 1e-4  # δ: a group whose rewards are all equal gets advantage 0, not 0/0


def group_advantages(rewards: torch.Tensor, group: int, normalise: bool = True) -> torch.Tensor:
    """(n,) rewards in consecutive groups of ``group`` samples -> (n,) advantages: reward
    minus its group's mean, divided by the group's standard deviation (+ δ) if ``normalise``."""
    if rewards.numel() % group:
        raise ValueError(f"group: {rewards.numel()} rewards do not split into groups of {group}")
    r = rewards.double().view(-1, group)
    a = r - r.mean(1, keepdim=True)
    if normalise:
        a = a / (r.std(1, unbiased=False, keepdim=True) + ADVANTAGE_EPS)
    return a.view(-1)


def kl_k3(log_p: torch.Tensor, log_ref: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimate of KL(π ‖ π_ref) per sample: e^{ref − p} − (ref − p) − 1 (≥ 0)."""
    d = log_ref - log_p
    return d.exp() - d - 1


def clipped_objective(log_p: torch.Tensor, log_old: torch.Tensor, advantages: torch.Tensor, tokens: torch.Tensor,
                      clip: float = 0.2, kl_coef: float = 0.0, log_ref: torch.Tensor | None = None) -> torch.Tensor:
    """The GRPO loss (to minimise) on a batch: see the module docstring.  ``tokens``: (n,)
    scored tokens per sample (the ratio's per-token normalisation)."""
    ratio = ((log_p - log_old) / tokens).exp()
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    loss = -surrogate.mean()
    if kl_coef:
        loss = loss + kl_coef * kl_k3(log_p, log_ref).mean()
    return loss


# --- tasks -------------------------------------------------------------------------------
@dataclass
class ContainsSpan:
    """Reward 1 when the completion contains ``span`` (a run of token ids), else 0; the
    prompt is ``prefix`` (e.g. BOS)."""

    span: list[int]
    prefix: list[int]

    def prompts(self, n: int, generator=None) -> torch.Tensor:
        return torch.tensor(self.prefix, dtype=torch.long).expand(n, -1).clone()

    def reward(self, tokens: torch.Tensor, prompt_length: int) -> torch.Tensor:
        y = tokens[:, prompt_length:]
        k = len(self.span)
        if y.shape[1] < k:
            return torch.zeros(y.shape[0], dtype=torch.float64)
        windows = y.unfold(1, k, 1)  # (n, positions, k)
        return (windows == torch.tensor(self.span, device=y.device)).all(-1).any(1).double().cpu()


@dataclass
class RepeatToken:
    """A counting task: the prompt is ``bos`` then a token k drawn from ``choices``; the reward is
    the share of completion tokens equal to k (1.0: the completion repeats it throughout)."""

    bos: int
    choices: list[int] = field(default_factory=lambda: list(range(1, 9)))

    def prompts(self, n: int, generator=None) -> torch.Tensor:
        pick = torch.randint(0, len(self.choices), (n,), generator=generator)
        k = torch.tensor(self.choices)[pick]
        return torch.stack([torch.full_like(k, self.bos), k], 1)

    def reward(self, tokens: torch.Tensor, prompt_length: int) -> torch.Tensor:
        k = tokens[:, prompt_length - 1: prompt_length]
        return (tokens[:, prompt_length:] == k).double().mean(1).cpu()


def load_task(spec, **options):
    """A task object as is, or ``"pkg.module:Class"`` built with ``options``."""
    if not isinstance(spec, str):
        return spec
    module, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"--task {spec!r}: give a dotted path 'pkg.module:Class'")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"--task {spec!r}: cannot import it ({err}); check the path") from None
    return cls(**options)


# --- the loop's step ---------------------------------------------------------------------
@dataclass
class GRPOConfig:
    estimator: str = "exact"
    estimator_options: dict = field(default_factory=dict)
    groups: int = 2  # prompts per step
    group_size: int = 8  # samples per prompt
    updates: int = 1  # optimiser steps per batch of samples (μ)
    clip: float = 0.2
    kl_coef: float = 0.0
    normalise: bool = True
    streaming: int | None = None  # passes per backward chunk (None: one graph)


@dataclass
class StepStats:
    reward: float
    loss: float
    forwards: int  # estimator forwards this step (old, reference and every update)
    tokens: int
    sample_nfe: int
    cpu_seconds: float


def grpo_step(model, ref, opt, task, length: int, schedule, cfg: GRPOConfig, generator: torch.Generator,
              noise_seed: int) -> StepStats:
    """One GRPO step (module docstring).  ``ref``: a frozen copy for the KL, or None."""
    start = time.process_time()
    n = cfg.groups * cfg.group_size
    prompts = task.prompts(cfg.groups, generator).repeat_interleave(cfg.group_size, 0).to(model.device)
    was_training = model.training
    model.eval()  # sampling and scoring run the network as evaluated (no dropout)
    with torch.no_grad():
        gen = model.sample(n, length, schedule, generator, prefix=prompts)
    rewards = task.reward(gen.tokens, prompts.shape[1])
    adv = group_advantages(rewards, cfg.group_size, cfg.normalise).to(model.device)
    tokens = (gen.step >= 0).sum(1).double()
    noise = lambda: torch.Generator(model.device).manual_seed(noise_seed)  # noqa: E731  (same masks for all)
    kw = dict(cfg.estimator_options)
    with torch.no_grad():
        old = estimate(model, gen, cfg.estimator, generator=noise(), **kw)
        forwards, computed = old.forwards, old.tokens_computed
        log_ref = None
        if cfg.kl_coef:
            r = estimate(ref, gen, cfg.estimator, generator=noise(), **kw)
            log_ref, forwards, computed = r.log_prob, forwards + r.forwards, computed + r.tokens_computed
    loss_value = 0.0
    for update in range(cfg.updates):
        opt.zero_grad(set_to_none=True)
        if cfg.streaming is None:
            est = estimate(model, gen, cfg.estimator, generator=noise(), **kw)
            loss = clipped_objective(est.log_prob, old.log_prob, adv, tokens, cfg.clip, cfg.kl_coef, log_ref)
            loss.backward()
        else:  # values first (the first update's are π_old's), then d loss / d log π as the weights
            if update == 0:
                values = old.log_prob
            else:
                with torch.no_grad():
                    e = estimate(model, gen, cfg.estimator, generator=noise(), **kw)
                values, forwards, computed = e.log_prob, forwards + e.forwards, computed + e.tokens_computed
            leaf = values.detach().requires_grad_(True)
            loss = clipped_objective(leaf, old.log_prob, adv, tokens, cfg.clip, cfg.kl_coef, log_ref)
            (weights,) = torch.autograd.grad(loss, leaf)
            est = backward(model, gen, cfg.estimator, weights, chunk=cfg.streaming, generator=noise(), **kw)
        forwards, computed = forwards + est.forwards, computed + est.tokens_computed
        opt.step()
        loss_value = float(loss.detach())
    model.train(was_training)
    return StepStats(float(rewards.mean()), loss_value, forwards, computed, gen.nfe, time.process_time() - start)
