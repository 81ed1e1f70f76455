"""``esolm bench-estimators``: the likelihood estimators RL on diffusion LMs uses, measured
side by side (harness.bench_estimators, docs/likelihood.md §5)."""

from __future__ import annotations

from harness.cli.types import at_least, device, int_list, seed_int


def cmd_bench_estimators(args) -> None:
    from harness.bench_estimators import run_bench

    estimators = [e for e in args.estimators.split(",") if e] if args.estimators else None
    out = run_bench(args.out, [m for m in args.models.split(",") if m], args.lengths, args.batch_sizes,
                    estimators=estimators, seeds=args.seeds, reference_orders=args.reference_orders,
                    reference_chunk=args.reference_chunk, steps_fraction=args.steps_fraction, seed=args.seed,
                    preset=args.preset, vocab=args.vocab,
                    device=device(args.device), progress=(lambda line: None) if args.quiet else print)
    print(f"results: {out} (report: {out / 'report.md'}, plot: {out / 'pareto.png'})")


def register(sub) -> None:
    p = sub.add_parser("bench-estimators", help="every likelihood estimator (exact, mean_field, elbo_mc, coupled, "
                       "eubo, iw) x model x length x batch: cost, memory, SD over seeds, bias and gradient cosine "
                       "against the exact and IW references")
    p.add_argument("--out", required=True, help="results folder (points.jsonl, report.md, pareto.png); a re-run "
                   "resumes it")
    p.add_argument("--models", required=True, help="comma-separated checkpoint folders (e.g. runs/cpu_quality/mdlm) "
                   "or random:<ar|mdlm|bd3lm|esolm-a|esolm-b> for random weights on --preset")
    p.add_argument("--estimators", default=None, help="comma-separated, from harness.bench_estimators."
                   "ESTIMATOR_SETUPS (default: all)")
    p.add_argument("--lengths", type=int_list, default=[32], help="e.g. 32,64")
    p.add_argument("--batch-sizes", type=int_list, default=[4], help="e.g. 1,4")
    p.add_argument("--seeds", type=at_least(2), default=4, help="noise seeds per estimator (SD and mean gradient)")
    p.add_argument("--reference-orders", type=at_least(1), default=1000, help="orders of the IW reference")
    p.add_argument("--reference-chunk", type=at_least(1), default=125, help="orders per batched forward")
    p.add_argument("--steps-fraction", type=float, default=0.25, help="sampler steps T = fraction x L")
    p.add_argument("--preset", default="tiny", help="random:<model> entries: backbone preset (tiny, mini, medium, "
                   "small)")
    p.add_argument("--vocab", type=at_least(3), default=64, help="random:<model> entries: vocabulary, [MASK] included")
    p.add_argument("--seed", type=seed_int, default=0, help="seeds the samples and the reference's orders")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_bench_estimators)
