"""GRPO on a tiny diffusion LM with a verifiable reward, any likelihood estimator.

    python -m examples.grpo                                   # Eso-LM (B), exact single pass
    python -m examples.grpo --estimator elbo_mc --draws 4     # the same loop on the NELBO
    python -m examples.grpo --estimator mean_field --task repeat --model mdlm

1. Pre-train a tiny model for a few seconds on a toy language (tokens 1…8 after BOS; a few
   rows hold the TARGET token 9; for ``--task repeat`` the prompt's token recurs in its row).
2. Fine-tune it by GRPO (harness.grpo): groups of samples per prompt, group-relative
   advantages, PPO-clipped ratios of log π from ``--estimator``, optional KL to a frozen copy.
   ``--checkpoint DIR`` runs it on a trained harness checkpoint instead (``--span`` words its
   tokenizer encodes become the target span).
Each step prints its mean reward, the estimator's forwards and the CPU seconds so far.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

import torch

from harness.grpo import ContainsSpan, GRPOConfig, RepeatToken, grpo_step, load_task
from harness.likelihood import ESTIMATORS
from harness.models import SpecialTokens, build_model
from harness.nn.transformer import BackboneConfig
from harness.schedules import SamplingSchedule

BOS, TARGET, MASK, VOCAB = 0, 9, 10, 11  # 1..8 ordinary tokens, 9 the target, 10 [MASK]
LENGTH = 16
MODELS = {"esolm-b": {"alpha_0": 1.0}, "esolm-a": {"alpha_0": 1.0}, "mdlm": {}, "bd3lm": {"block_size": 4}}


def toy_batch(n: int, task: str, generator: torch.Generator) -> torch.Tensor:
    """The pre-training language: BOS, then uniform tokens 1..8; 'contains': 10 % of rows hold
    TARGET once; 'repeat': position 1 holds k and every later token is k with probability 1/4."""
    x = torch.randint(1, 9, (n, LENGTH), generator=generator)
    x[:, 0] = BOS
    if task == "contains":
        hit = torch.rand(n, generator=generator) < 0.1
        where = torch.randint(1, LENGTH, (n,), generator=generator)
        x[hit, where[hit]] = TARGET
    else:
        k = x[:, 1:2]
        x[:, 2:] = torch.where(torch.rand(n, LENGTH - 2, generator=generator) < 0.25, k, x[:, 2:])
    return x


def toy_task(name: str):
    if name == "contains":
        return ContainsSpan(span=[TARGET], prefix=[BOS])
    if name == "repeat":
        return RepeatToken(bos=BOS)
    return load_task(name)


def schedule_for(model_name: str, steps: int) -> SamplingSchedule:
    if model_name == "bd3lm":
        return SamplingSchedule(first_hitting=True)
    return SamplingSchedule(steps=steps)


def pretrained(model_name: str, task: str, steps: int, seed: int):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    cfg = BackboneConfig.from_preset("tiny", vocab_size=VOCAB, max_len=LENGTH)
    model = build_model(model_name, cfg, SpecialTokens(bos=BOS, eos=BOS, mask=MASK), **MODELS[model_name])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):  # a few seconds of the model's usual training
        opt.zero_grad()
        model.loss(toy_batch(32, "contains" if task not in ("contains", "repeat") else task, g)).backward()
        opt.step()
    return model


def run(estimator: str = "exact", model_name: str = "esolm-b", task: str = "contains", steps: int = 10,
        groups: int = 2, group_size: int = 8, pretrain_steps: int = 60, sampler_steps: int = 4, seed: int = 0,
        lr: float = 3e-3, updates: int = 1, clip: float = 0.2, kl_coef: float = 0.0, streaming: int | None = None,
        estimator_options: dict | None = None, checkpoint: str | None = None, span: str | None = None,
        length: int | None = None, log=print) -> list[dict]:
    """Pre-train (or load), then ``steps`` GRPO steps; one row per step: reward, loss, the
    estimator's forwards and tokens so far, CPU seconds so far (sampling included)."""
    if checkpoint:
        from harness.checkpoints.own_format import load_checkpoint

        loaded = load_checkpoint(checkpoint)
        model, tok = loaded.model, loaded.tokenizer
        ids = tok.encode(span or " the")
        task_obj = ContainsSpan(span=ids, prefix=[model.special.bos])
        length = length or 32
        model_name = model.name
    else:
        if model_name not in MODELS:
            raise ValueError(f"--model: choose from {sorted(MODELS)}, got {model_name!r}")
        model = pretrained(model_name, task, pretrain_steps, seed)
        task_obj = toy_task(task)
        length = length or LENGTH
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    ref = copy.deepcopy(model).eval().requires_grad_(False) if kl_coef else None
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    cfg = GRPOConfig(estimator=estimator, estimator_options=estimator_options or {}, groups=groups,
                     group_size=group_size, updates=updates, clip=clip, kl_coef=kl_coef, streaming=streaming)
    schedule = schedule_for(model_name, sampler_steps)
    rows, seconds, forwards, tokens = [], 0.0, 0, 0
    if updates == 1:
        log("(loss: the clipped surrogate's value, about 0 with one update per batch: the ratio is 1 and a group's "
            "advantages have mean 0; its gradient is not 0)")
    for step in range(steps):
        stats = grpo_step(model, ref, opt, task_obj, length, schedule, cfg, g, noise_seed=seed * 100_003 + step)
        seconds, forwards, tokens = seconds + stats.cpu_seconds, forwards + stats.forwards, tokens + stats.tokens
        rows.append(dict(step=step + 1, reward=stats.reward, loss=stats.loss, estimator_forwards=forwards,
                         estimator_tokens=tokens, cpu_seconds=round(seconds, 3)))
        log(f"step {step + 1:3d}  reward {stats.reward:.3f}  loss {stats.loss:+.4f}  {estimator} forwards {forwards:5d}"
            f"  cpu {seconds:6.1f} s")
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--estimator", default="exact", choices=ESTIMATORS)
    parser.add_argument("--model", default="esolm-b", help=f"toy model: {', '.join(MODELS)}")
    parser.add_argument("--task", default="contains", help="contains, repeat, or a plug-in 'pkg.module:Class'")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--groups", type=int, default=2, help="prompts per step")
    parser.add_argument("--group-size", type=int, default=8, help="samples per prompt")
    parser.add_argument("--pretrain-steps", type=int, default=60)
    parser.add_argument("--sampler-steps", type=int, default=4)
    parser.add_argument("--updates", type=int, default=1, help="optimiser steps per batch of samples")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--clip", type=float, default=0.2)
    parser.add_argument("--kl", type=float, default=0.0, help="KL coefficient to the frozen start")
    parser.add_argument("--streaming", type=int, default=None, help="passes per backward chunk")
    parser.add_argument("--draws", type=int, default=None, help="elbo_mc / eubo draws, iw orders, coupled pairs, "
                        "trajectory shrink")
    parser.add_argument("--checkpoint", default=None, help="a trained harness checkpoint folder instead of the toy")
    parser.add_argument("--span", default=None, help="with --checkpoint: the target text (default ' the')")
    parser.add_argument("--length", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jsonl", default=None, help="write one JSON row per step here")
    args = parser.parse_args(argv)
    key = {"elbo_mc": "draws", "eubo": "draws", "iw": "orders", "coupled": "pairs",
           "trajectory": "shrink"}.get(args.estimator)
    options = {key: args.draws} if key and args.draws else {}
    torch.set_num_threads(1)  # a tiny model runs fastest on one thread
    try:
        rows = run(args.estimator, args.model, args.task, args.steps, args.groups, args.group_size,
                   args.pretrain_steps, args.sampler_steps, args.seed, args.lr, args.updates, args.clip, args.kl,
                   args.streaming, options, args.checkpoint, args.span, args.length)
    except ValueError as err:
        print(f"grpo: error: {err}", file=sys.stderr)
        sys.exit(2)
    if args.jsonl:
        with open(args.jsonl, "w") as f:
            f.writelines(json.dumps(dict(r, estimator=args.estimator, seed=args.seed)) + "\n" for r in rows)
    k = max(1, len(rows) // 4)
    first, last = sum(r["reward"] for r in rows[:k]) / k, sum(r["reward"] for r in rows[-k:]) / k
    print(f"reward: first {k} steps {first:.3f} -> last {k} steps {last:.3f}")


if __name__ == "__main__":
    main()
