"""GRPO with each likelihood estimator from the same seeds: reward against optimiser step and
against CPU seconds (the committed results/rl_cpu).

    python -m examples.grpo_sweep --out results/rl_cpu

Every (estimator, seed) run pre-trains the same toy Eso-LM (B) for that seed (examples/grpo.py),
then runs the same number of GRPO steps; only the estimator of log π differs.  Writes
``points.jsonl`` (one row per step), ``report.md`` (steps and CPU seconds until the reward's
moving average first reaches the threshold; the final reward) and ``reward.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch

from examples.grpo import run

SETUPS = {  # name -> (estimator, options)
    "exact": ("exact", {}),
    "mean_field": ("mean_field", {}),
    "elbo_mc-1": ("elbo_mc", {"draws": 1}),
    "elbo_mc-4": ("elbo_mc", {"draws": 4}),
    "coupled-1": ("coupled", {"pairs": 1}),
}
WINDOW = 5  # steps in the moving average of the reward


def reach(rows: list[dict], threshold: float) -> dict | None:
    """The first step whose trailing WINDOW-step mean reward reaches ``threshold``."""
    for i in range(WINDOW - 1, len(rows)):
        if statistics.mean(r["reward"] for r in rows[i - WINDOW + 1: i + 1]) >= threshold:
            return rows[i]
    return None


def sweep(out: Path, setups: list[str], seeds: int, steps: int, task: str, groups: int, group_size: int,
          pretrain_steps: int, threshold: float, checkpoint: str | None = None, span: str | None = None,
          length: int | None = None, lr: float = 3e-3, log=print) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in setups:
        estimator, options = SETUPS[name]
        for seed in range(seeds):
            new = run(estimator, task=task, steps=steps, groups=groups, group_size=group_size, seed=seed,
                      pretrain_steps=pretrain_steps, estimator_options=options, checkpoint=checkpoint, span=span,
                      length=length, lr=lr, log=lambda line: None)
            rows += [dict(r, setup=name, seed=seed) for r in new]
            final = statistics.mean(r["reward"] for r in new[-WINDOW:])
            log(f"{name:12s} seed {seed}: reward {new[0]['reward']:.3f} -> {final:.3f} "
                f"(last {WINDOW}), cpu {new[-1]['cpu_seconds']:.1f} s")
    (out / "points.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def report(rows: list[dict], cfg: dict, threshold: float) -> str:
    policy = f"checkpoint {cfg['checkpoint']}, task: contains {cfg['span']!r}" if cfg.get("checkpoint") else \
        f"toy Eso-LM (B), task '{cfg['task']}'"
    lines = [f"# GRPO with each likelihood estimator ({policy})\n",
             f"{cfg['seeds']} seeds × {cfg['steps']} steps of {cfg['groups']} prompts × {cfg['group_size']} samples; "
             f"machine {cfg['machine']}, torch {cfg['torch']}, 1 thread.  CPU seconds: process time of the GRPO "
             f"steps (sampling, estimator forwards, backward, optimiser), pre-training excluded.  'reach': the first "
             f"step whose {WINDOW}-step mean reward is >= {threshold} (— if never).\n",
             "| estimator | forwards per step | final reward (mean ± sd over seeds) | seeds reaching | steps to reach "
             "(median) | CPU s to reach (median) | CPU s per step |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name in dict.fromkeys(r["setup"] for r in rows):
        runs = [[r for r in rows if r["setup"] == name and r["seed"] == s] for s in range(cfg["seeds"])]
        finals = [statistics.mean(r["reward"] for r in run_[-WINDOW:]) for run_ in runs]
        hits = [h for h in (reach(run_, threshold) for run_ in runs) if h is not None]
        steps = statistics.median(h["step"] for h in hits) if hits else None
        secs = statistics.median(h["cpu_seconds"] for h in hits) if hits else None
        per_step = statistics.mean(run_[-1]["cpu_seconds"] / len(run_) for run_ in runs)
        fwd = runs[0][-1]["estimator_forwards"] / len(runs[0])
        lines.append(f"| {name} | {fwd:g} | {statistics.mean(finals):.3f} ± {statistics.pstdev(finals):.3f} | "
                     f"{len(hits)}/{len(runs)} | {'—' if steps is None else f'{steps:g}'} | "
                     f"{'—' if secs is None else f'{secs:.2f}'} | {per_step:.3f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    cmap = plt.get_cmap("tab10")
    for i, name in enumerate(dict.fromkeys(r["setup"] for r in rows)):
        seeds = sorted({r["seed"] for r in rows if r["setup"] == name})
        runs = [[r for r in rows if r["setup"] == name and r["seed"] == s] for s in seeds]
        steps = [r["step"] for r in runs[0]]
        mean = [statistics.mean(run_[j]["reward"] for run_ in runs) for j in range(len(steps))]
        secs = [statistics.mean(run_[j]["cpu_seconds"] for run_ in runs) for j in range(len(steps))]
        axes[0].plot(steps, mean, color=cmap(i), label=name)
        axes[1].plot(secs, mean, color=cmap(i), label=name)
    axes[0].set_xlabel("optimiser step")
    axes[1].set_xlabel("CPU seconds (mean over seeds)")
    for ax in axes:
        ax.set_ylabel("mean reward (mean over seeds)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--setups", default=",".join(SETUPS), help=f"from {', '.join(SETUPS)}")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--task", default="repeat")
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--pretrain-steps", type=int, default=150)
    parser.add_argument("--threshold", type=float, default=0.4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--checkpoint", default=None, help="a trained harness checkpoint instead of the toy model")
    parser.add_argument("--span", default=None, help="with --checkpoint: the target text (default ' the')")
    parser.add_argument("--length", type=int, default=None, help="with --checkpoint: sample length (default 32)")
    args = parser.parse_args(argv)
    setups = [s for s in args.setups.split(",") if s]
    unknown = sorted(set(setups) - set(SETUPS))
    if unknown:
        parser.error(f"--setups: unknown {unknown}; choose from {', '.join(SETUPS)}")
    torch.set_num_threads(1)
    out = Path(args.out)
    rows = sweep(out, setups, args.seeds, args.steps, args.task, args.groups, args.group_size,
                 args.pretrain_steps, args.threshold, args.checkpoint, args.span, args.length, args.lr)
    cfg = dict(vars(args), machine=f"{platform.machine()} {platform.processor()}".strip(), torch=torch.__version__)
    (out / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    (out / "report.md").write_text(report(rows, cfg, args.threshold))
    plot(rows, out / "reward.png")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
