"""``esolm sweep``, ``ceilings``, ``report``, ``rescore``, ``compare`` and ``export``: the
commands that make, read and gate a results folder."""

from __future__ import annotations

import json
import sys

from harness.cli.types import at_least


def cmd_sweep(args) -> None:
    from harness.sweep.run import run_sweep

    out = run_sweep(args.config, shard=args.shard, entries=args.entries, results_root=args.results,
                    report=not args.no_report, progress=not args.quiet, reports_root=args.reports,
                    overrides=args.set or ())
    print(f"results: {out}")


def cmd_ceilings(args) -> None:
    from harness.metrics.ceilings import busy_warning
    from harness.metrics.speed import threads_text
    from harness.sweep.ceilings import sweep_ceilings

    out = sweep_ceilings(args.config, args.results, repeats=args.repeats, tokens=args.tokens,
                         overrides=args.set or ())
    ceil = json.loads(out.read_text())
    print(f"{out}: matmul {ceil['matmul_flops'] / 1e9:.1f} GFLOP/s, copy {ceil['copy_bytes_per_s'] / 1e9:.2f} GB/s "
          f"({ceil['device_name']}, {threads_text(ceil['threads'])})")
    warning = busy_warning(ceil)
    if warning:
        print(warning, file=sys.stderr)


def cmd_report(args) -> None:
    from harness.report import write_report

    out = write_report(args.results_dir, out_dir=args.out, force=args.force)
    print(f"report: {out}")


def cmd_rescore(args) -> None:
    from harness.rescore import rescore

    out = rescore(args.results_dir, args.evaluator, out_dir=args.out, mauve=args.mauve,
                  reference_samples=args.reference_samples, device=args.device, progress=not args.quiet)
    print(f"results: {out}")


def cmd_compare(args) -> None:
    from harness.compare import compare_files

    sys.exit(compare_files(args.reference, args.candidate, tolerances=args.tolerances, verbose=args.verbose,
                           csv_path=args.csv))


def cmd_export(args) -> None:
    from harness.export import export

    n = export(args.results_dir, csv_path=args.csv, parquet_path=args.parquet)
    print(f"export: {n} current rows (one per point) -> {args.csv or args.parquet}", file=sys.stderr)


def register(sub) -> None:
    p = sub.add_parser("sweep", help="run a sweep config; finished points are kept and skipped on re-run")
    p.add_argument("config")
    p.add_argument("--shard", help="i/n: run only every n-th point starting at i (e.g. for SLURM arrays)")
    p.add_argument("--entries", help="a,b,...: run only these model entries (and train only what they need)")
    p.add_argument("--results", default="results", help="root folder for results/<sweep>/points.jsonl")
    p.add_argument("--reports", help="root folder for the report (default: as esolm report does: results/x -> "
                   "reports/x, other/x -> other/reports/x)")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field (dotted KEY, YAML VALUE), e.g. --set step_mode=compiled "
                        "--set name=paper_speed_compiled; repeatable")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("ceilings", help="measure this machine's matmul FLOP/s (at the config's trunk shapes) and "
                       "copy rate into results/<sweep>/ceilings.json, for the report's floors")
    p.add_argument("config")
    p.add_argument("--results", default="results", help="root folder of results/<sweep>/")
    p.add_argument("--repeats", type=at_least(1), default=20, help="timed runs of each; the fastest counts")
    p.add_argument("--tokens", type=at_least(1), default=2048, help="rows of each timed matmul")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, as for sweep")
    p.set_defaults(func=cmd_ceilings)

    p = sub.add_parser("report", help="write plots and report.md from a results folder")
    p.add_argument("results_dir")
    p.add_argument("--out", help="output folder (default: reports/<results folder name> beside the results: "
                   "results/x -> reports/x, out/results/x -> out/reports/x, /tmp/c/x -> /tmp/c/reports/x)")
    p.add_argument("--force", action="store_true", help="replace a report made from other results")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("rescore", help="re-score a results folder's saved samples with another evaluator")
    p.add_argument("results_dir")
    p.add_argument("--evaluator", required=True, help="'smollm2', 'hf:/path/to/folder' or 'ar:/path/to/checkpoint'")
    p.add_argument("--out", help="output folder (default: RESULTS_DIR_<evaluator>); RESULTS_DIR is never modified")
    p.add_argument("--mauve", action="store_true", help="also compute MAUVE against the held-out test split")
    p.add_argument("--reference-samples", type=int, help="MAUVE reference texts (default: config, else samples)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] for the evaluator")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_rescore)

    p = sub.add_parser("compare", help="CI gate: exit 1 when CANDIDATE regresses against REFERENCE, 2 when a point "
                                       "cannot be compared (invalid values, another evaluator or config)")
    p.add_argument("reference")
    p.add_argument("candidate")
    p.add_argument("--tolerances", help="YAML file of per-metric tolerances (metric: off opts a metric out)")
    p.add_argument("--verbose", action="store_true", help="print the full table of every point and metric")
    p.add_argument("--csv", metavar="FILE", help="write the full comparison, one row per point and metric")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("export", help="write the current rows of a results folder (one per point) as CSV or Parquet")
    p.add_argument("results_dir")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--csv", metavar="FILE", help="CSV file ('-': stdout)")
    out.add_argument("--parquet", metavar="FILE", help="Parquet file (needs pyarrow)")
    p.set_defaults(func=cmd_export)
