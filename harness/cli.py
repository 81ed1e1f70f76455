"""The ``esolm`` command: thin argument parsing over the library.

Bad input (a config with an unknown key, a missing file, a length above the model's, a
checkpoint of another model) ends with one line ``esolm: error: ...`` and exit code 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import torch


def cmd_train(args) -> None:
    from harness.config import TrainConfig, parse, read_yaml
    from harness.train import train

    data = read_yaml(args.config)
    if args.steps is not None:  # before validation, so --steps 0 is refused like train.steps: 0
        data.setdefault("train", {})["steps"] = args.steps
    cfg = parse(TrainConfig, data, args.config if args.steps is None else f"{args.config} with --steps")
    path = train(cfg, resume=args.resume, progress=not args.quiet)
    print(f"checkpoint: {path}")


def at_least(low: int, high: int | None = None):
    """argparse type: an int >= low (and <= high, a stated budget), refused with the flag's
    name (argparse adds it)."""
    def parse_int(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high:,} (each is another forward over every "
                                             f"sequence), got {value}")
        return value
    return parse_int


def seed_int(text: str) -> int:
    """argparse type for --seed: torch seeds generators with a 64-bit integer."""
    from harness.config import SEED_MAX

    value = int(text)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**63 - 1], got {value}")
    return value


def fraction(text: str) -> float:
    """argparse type for alpha_0: a float in [0, 1]."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1] (the fraction of positions filled by diffusion), got {value}")
    return value


def _device(name: str):
    from harness.config import resolve_device

    return resolve_device(name, "--device")


def cmd_eval(args) -> None:
    from harness.checkpoints.own_format import load_checkpoint
    from harness.config import DataSpec
    from harness.metrics.likelihood import estimator_call, se_note, test_perplexity, unigram_perplexity
    from harness.train import load_splits

    loaded = load_checkpoint(args.checkpoint, device=_device(args.device))
    method, nll_kwargs = estimator_call(loaded.model, draws=args.draws, alpha_0=args.alpha_0, iw=args.iw)
    length = args.length if args.length is not None else loaded.config["data"]["seq_len"]
    loaded.model.check_length(length)
    spec = DataSpec(**loaded.config["data"])
    splits = load_splits(spec, loaded.tokenizer, seq_len=length)
    data = splits[args.split]
    if args.max_sequences:
        data = data[: args.max_sequences]
    if not args.quiet:
        print(f"esolm eval: {loaded.model.name}, {len(data)} {args.split} sequences x {length} tokens", file=sys.stderr)
    result = test_perplexity(loaded.model, data, args.batch_size, seed=args.seed, method=method,
                             progress=not args.quiet, **nll_kwargs)
    result = {"checkpoint": str(loaded.path), "model": loaded.model.name, "data_protocol": spec.protocol,
              "split": args.split, "length": length,
              **result, "unigram_ppl": unigram_perplexity(splits["train"], data, loaded.tokenizer.vocab_size)}
    if args.json:
        print(json.dumps(result))
    else:
        kind = "exact" if result.get("exact") else "upper bound"
        print(f"{result['model']} {args.split} perplexity {result['ppl']:.3f} ± {result['ppl_se']:.3f} "
              f"({se_note(result)}; {kind}; "
              f"data protocol {spec.protocol}; estimator {result['estimator']}; {result['n_sequences']} sequences x "
              f"{length} tokens; seed {args.seed}); unigram baseline {result['unigram_ppl']:.1f}")


def schedule_from_args(args):
    from pydantic import ValidationError

    from harness.schedules import SamplingSchedule

    fields = {"steps": args.steps, "alpha_0": args.alpha_0, "blocks": args.blocks, "top_p": args.top_p,
              "split": getattr(args, "split", None), "stride": getattr(args, "stride", None)}
    fields = {k: v for k, v in fields.items() if v is not None}
    if args.first_hitting:
        fields["first_hitting"] = True
    if getattr(args, "shuffle", False):
        fields["shuffle"] = True
    if getattr(args, "given_bos", False):
        fields["given_bos"] = True
    try:
        return SamplingSchedule(**fields)
    except ValidationError as err:  # name the flag, as the sweep names the field
        first = err.errors()[0]
        flag = "--" + str(first["loc"][0]).replace("_", "-") if first["loc"] else "sampling options"
        raise ValueError(f"{flag}: {first['msg']} (got {first.get('input')!r})") from None


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 arrive as lone surrogates
        raise ValueError("--prompt is not valid UTF-8 text; pass the prompt in UTF-8") from None
    return [tokenizer.bos_id] + list(tokenizer.encode(prompt))


FLAGS = {"steps": "--steps", "alpha_0": "--alpha-0", "blocks": "--blocks", "first_hitting": "--first-hitting",
         "split": "--split", "stride": "--stride", "shuffle": "--shuffle"}


def sample_schedule(args, model, length: int):
    """The flags' schedule with the model's own defaults where the flags give none (its class
    says which: T = L for MDLM and Eso-LM's diffusion phase, first hitting for BD3-LM), checked
    by the model; a flag it does not read is refused by name."""
    from harness.schedules import COMMON_FIELDS

    schedule, cls = schedule_from_args(args), type(model)
    if cls.schedule_fields is not None:
        extra = [f for f in schedule.model_dump(exclude_defaults=True)
                 if f not in cls.schedule_fields and f not in COMMON_FIELDS]
        if extra:
            takes = ", ".join(FLAGS[f] for f in cls.schedule_fields) or "no schedule flags"
            raise ValueError(f"{FLAGS[extra[0]]} does not apply to {model.name}; it takes {takes}")
    schedule = cls.default_schedule(schedule, length, model.options())
    try:
        cls.check_schedule(schedule, model.options())
    except ValueError as err:  # the model names schedule fields ('steps'); here they are flags
        raise ValueError(re.sub(r"'(\w+)'", lambda m: FLAGS.get(m[1], m[0]), str(err))) from None
    return schedule


def sample_progress(args, length: int, rows: int):
    """More than one batch is long work: say what it will run, then a progress bar on stderr
    from the first batch (None: one batch, or --quiet)."""
    batches = -(-args.n // rows)
    if batches == 1 or args.quiet:
        return None
    from tqdm import tqdm

    print(f"esolm sample: {args.n} samples x {length} tokens as {batches} batches of up to {rows} (what fits in "
          "memory); --quiet hides the progress bar", file=sys.stderr)
    return tqdm(total=args.n, desc="sample", unit="sample", file=sys.stderr, dynamic_ncols=True)


def cmd_sample(args) -> None:
    from harness.checkpoints.own_format import load_checkpoint
    from harness.memory import sample_rows

    loaded = load_checkpoint(args.checkpoint, device=_device(args.device))
    model = loaded.model
    length = args.length if args.length is not None else model.backbone_config.max_len
    generator = torch.Generator(device=model.device).manual_seed(args.seed)
    prefix = None
    if args.prompt is not None:  # the prompt follows BOS, as every training row does
        prefix = torch.tensor(prompt_ids(loaded.tokenizer, args.prompt))
        if len(prefix) >= length:
            raise ValueError(f"--prompt is {len(prefix)} tokens with BOS; give a --length above that")
    schedule = sample_schedule(args, model, length)
    model.check_length(length)
    rows = sample_rows(model, args.n, length, schedule, model.device)
    forwards = tokens = 0
    per_sample = []  # forwards each sample needed (a forward over a batch runs every row once)
    bar = sample_progress(args, length, rows)
    try:
        for start in range(0, args.n, rows):  # batches that fit; one generator runs through them all
            gen = model.sample(min(rows, args.n - start), length, schedule, generator, prefix=prefix)
            forwards, tokens = forwards + gen.nfe, tokens + gen.tokens_computed
            per_sample.append(gen.nfe_per_sample.double().cpu() if gen.nfe_per_sample is not None
                              else torch.full((gen.tokens.shape[0],), float(gen.nfe), dtype=torch.float64))
            for i, row in enumerate(gen.tokens.tolist(), start):
                print(f"--- sample {i} ---")
                print(loaded.tokenizer.decode(row))
            if bar is not None:
                bar.update(gen.tokens.shape[0])
    finally:
        if bar is not None:
            bar.close()
    nfe = torch.cat(per_sample).mean().item()
    batches = f" (run as batches of {rows})" if rows < args.n else ""
    print(f"--- schedule {schedule.label()}; per sample: NFE {nfe:g}, tokens computed {tokens / args.n:g}; "
          f"batch of {args.n} x {length} tokens{batches}: {forwards} forwards, {tokens} tokens computed ---")


def cmd_sweep(args) -> None:
    from harness.sweep.run import run_sweep

    out = run_sweep(args.config, shard=args.shard, entries=args.entries, results_root=args.results,
                    report=not args.no_report, progress=not args.quiet, reports_root=args.reports,
                    overrides=args.set or ())
    print(f"results: {out}")


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


def cmd_import(args) -> None:
    from harness.checkpoints.released import import_checkpoint

    path = import_checkpoint(args.src, args.model, args.out, block_size=args.block_size, alpha_0=args.alpha_0,
                             use_ema=not args.no_ema, corpus=args.corpus,
                             data={k: v for k, v in (("hf_dataset", args.hf_dataset), ("protocol", args.protocol))
                                   if v is not None})
    print(f"checkpoint: {path}")


def int_list(text: str) -> list[int]:
    """argparse type: comma-separated positive ints (e.g. 64,128)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"give comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"give positive integers, got {text!r}")
    return values


def cmd_bench_likelihood(args) -> None:
    from harness.bench_likelihood import run_bench

    out = run_bench(args.out, [m for m in args.models.split(",") if m], args.lengths, args.batch_sizes,
                    preset=args.preset, vocab=args.vocab, dtype=args.dtype, repeats=args.repeats,
                    backward=not args.no_backward, seed=args.seed, device=_device(args.device),
                    progress=(lambda line: None) if args.quiet else print)
    print(f"results: {out} (report: {out / 'report.md'})")


def cmd_lm_eval_task(args) -> None:
    try:
        from harness.lm_eval_adapter import write_lm_eval_task
    except ImportError as err:  # its message names the 'eval' extra
        raise ValueError(str(err)) from None

    out = write_lm_eval_task(args.directory, n_docs=args.documents)
    print(f"lm-eval task esolm_corpus_ppl written to {out}; pass --include_path {out}")


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


class DefaultsFormatter(argparse.HelpFormatter):
    """Help lines end with the flag's default, unless the text already says it or there is none."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or action.default is None or action.default is False \
                or action.default == argparse.SUPPRESS or "default" in text:
            return text
        return f"{text} (default: %(default)s)".strip()


class OneLineParser(argparse.ArgumentParser):
    """argparse errors as one line (the flag and the fix), like every other error; the usage
    block is one ``--help`` away instead of above the message.  ``--help`` shows every
    flag's default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        print(f"esolm: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    from harness.metrics.likelihood import MAX_DRAWS
    from harness.models import importable_models

    parser = OneLineParser(prog="esolm", description="Train, evaluate and race Eso-LMs against AR, MDLM and BD3-LM.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in the run folder")
    p.add_argument("--steps", type=int, help="override train.steps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="test perplexity of a checkpoint on its corpus's held-out split")
    p.add_argument("checkpoint")
    p.add_argument("--split", choices=["valid", "test"], default="test", help="held-out split")
    p.add_argument("--length", type=int, help="sequence length (default: the training length)")
    p.add_argument("--batch-size", type=at_least(1), default=16, help="sequences per forward (the estimate does not "
                   "depend on it)")
    p.add_argument("--max-sequences", type=at_least(1), help="evaluate only the first N sequences")
    p.add_argument("--draws", type=at_least(1, MAX_DRAWS), help="Monte-Carlo t draws per sequence for NELBO estimators "
                   "(default 1; 2 or more also give the Monte-Carlo SE)")
    p.add_argument("--alpha-0", type=fraction, help="Eso-LM: alpha_0 at evaluation (default: training value)")
    p.add_argument("--iw", type=at_least(1, MAX_DRAWS), help="Eso-LM: importance-weighted estimate over K random orders")
    p.add_argument("--seed", type=seed_int, default=0, help="seeds the random draws")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar (it goes to stderr)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sample", help="print samples from a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--n", type=at_least(1), default=2, help="samples to draw")
    p.add_argument("--length", type=at_least(2), help="sequence length, BOS included (default: the training length)")
    p.add_argument("--steps", type=int, help="denoising steps T (default: T = L for MDLM and Eso-LM's diffusion "
                   "phase; BD3-LM defaults to --first-hitting)")
    p.add_argument("--alpha-0", type=fraction, help="Eso-LM: fraction of positions filled by diffusion "
                   "(default: the training value)")
    p.add_argument("--blocks", type=int, help="Eso-LM: diffusion positions revealed in this many chunks")
    p.add_argument("--split", choices=["binomial", "fixed"], help="Eso-LM with --steps: the papers' random "
                   "diffusion-position count (binomial, default) or round(alpha_0·L) (fixed)")
    p.add_argument("--stride", type=int, help="Eso-LM: the official strided schedule, {r, r + S, ...} per step")
    p.add_argument("--shuffle", action="store_true", help="with --stride: shuffle the sets and within them")
    p.add_argument("--first-hitting", action="store_true", help="BD3-LM: one token per step")
    p.add_argument("--top-p", type=float)
    p.add_argument("--given-bos", action="store_true",
                   help="start from BOS at position 0 (AR always does; the diffusion samplers otherwise generate it)")
    p.add_argument("--prompt", help="text the samples continue (given after BOS; every model)")
    p.add_argument("--seed", type=seed_int, default=0, help="seeds the random draws")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--quiet", action="store_true", help="no progress bar (shown on stderr when --n runs as batches)")
    p.set_defaults(func=cmd_sample)

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

    p = sub.add_parser("bench-likelihood", help="time and passes to score a model's own samples (exact log p and "
                       "NELBO), per model, length and batch size")
    p.add_argument("--out", required=True, help="results folder (points.jsonl, report.md); a re-run resumes it")
    p.add_argument("--models", default="ar,mdlm,bd3lm-4,esolm-a,esolm-b",
                   help="comma-separated, from harness.bench_likelihood.SETUPS")
    p.add_argument("--lengths", type=int_list, default=[64, 128, 256], help="e.g. 64,128,256")
    p.add_argument("--batch-sizes", type=int_list, default=[1, 8], help="e.g. 1,8")
    p.add_argument("--preset", default="tiny", help="backbone preset (tiny, mini, medium, small)")
    p.add_argument("--vocab", type=at_least(3), default=2048, help="vocabulary size, [MASK] included")
    p.add_argument("--dtype", default="fp32", help="fp32 or fp64")
    p.add_argument("--repeats", type=at_least(1), default=3, help="timed runs per point")
    p.add_argument("--no-backward", action="store_true", help="time scoring only, not scoring + backward")
    p.add_argument("--seed", type=seed_int, default=0, help="seeds the random draws")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_bench_likelihood)

    p = sub.add_parser("import", help="turn a released official checkpoint (Hugging Face folder or Lightning "
                       ".ckpt) into a harness checkpoint")
    p.add_argument("src", help="a Hugging Face folder (config.json + model.safetensors) or a Lightning .ckpt")
    p.add_argument("--model", required=True, choices=importable_models())
    p.add_argument("--out", required=True, help="run folder for the checkpoint (must not hold one yet)")
    p.add_argument("--block-size", type=at_least(1), help="BD3-LM: L' when the source does not record it")
    p.add_argument("--alpha-0", type=fraction, help="Eso-LM: the training alpha_0 when the source does not "
                   "record it (or to override it)")
    p.add_argument("--no-ema", action="store_true", help=".ckpt: take state_dict instead of the EMA weights")
    p.add_argument("--corpus", nargs="+", help="text files eval/sweeps read for this checkpoint (default: bundled)")
    p.add_argument("--hf-dataset", help="or a local Hugging Face dataset folder (e.g. OpenWebText) to read instead")
    p.add_argument("--protocol", choices=["documents", "owt", "lm1b"],
                   help="how that text is split and packed (owt: the papers' OpenWebText split and wrap)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("lm-eval-task", help="write the offline lm-eval perplexity task over the test split")
    p.add_argument("directory")
    p.add_argument("--documents", type=at_least(1), default=24, help="test documents to include")
    p.set_defaults(func=cmd_lm_eval_task)
    return parser


def error_line(err: Exception) -> str:
    """One line for an error: ours say what to fix; the system's (a read-only folder, a folder
    given as a file) name the path and what the system said."""
    if isinstance(err, OSError) and err.errno is not None and err.filename is not None:
        return f"{err.filename}: {err.strerror}; check the path (a file, not a folder, in a folder you can write)"
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except BrokenPipeError:  # the reader went away (esolm export --csv - | head): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except (ValueError, OSError, NotImplementedError) as err:
        print(f"esolm: error: {error_line(err)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("esolm: interrupted; finished work is kept (re-run the same command to resume)", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
