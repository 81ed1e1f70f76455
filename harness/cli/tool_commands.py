"""``esolm bench-likelihood``, ``import`` and ``lm-eval-task``: benchmarks and the bridges
to other people's checkpoints and tools."""

from __future__ import annotations

from harness.cli.types import at_least, device, fraction, int_list, seed_int


def cmd_bench_likelihood(args) -> None:
    from harness.bench_likelihood import run_bench

    out = run_bench(args.out, [m for m in args.models.split(",") if m], args.lengths, args.batch_sizes,
                    preset=args.preset, vocab=args.vocab, dtype=args.dtype, repeats=args.repeats,
                    backward=not args.no_backward, seed=args.seed, device=device(args.device),
                    progress=(lambda line: None) if args.quiet else print)
    print(f"results: {out} (report: {out / 'report.md'})")


def cmd_import(args) -> None:
    from harness.checkpoints.released import import_checkpoint

    path = import_checkpoint(args.src, args.model, args.out, block_size=args.block_size, alpha_0=args.alpha_0,
                             use_ema=not args.no_ema, corpus=args.corpus,
                             data={k: v for k, v in (("hf_dataset", args.hf_dataset), ("protocol", args.protocol),
                                                     ("framing", args.framing)) if v is not None})
    print(f"checkpoint: {path}")


def cmd_lm_eval_task(args) -> None:
    from harness.lm_eval_adapter import require_lm_eval
    from harness.lm_eval_tasks import GENERATION_TASK, TASK_NAME, write_lm_eval_task

    try:  # tasks with nothing to run them are no use: say what to install first
        require_lm_eval()
    except ImportError as err:  # its message names the 'eval' extra
        raise ValueError(str(err)) from None

    out = write_lm_eval_task(args.directory, n_docs=args.documents)
    print(f"lm-eval tasks {TASK_NAME} (perplexity) and {GENERATION_TASK} (generation) written to {out}; "
          f"pass --include_path {out}")


def register(sub) -> None:
    from harness.models import importable_models

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
    p.add_argument("--framing", choices=["bos_eos", "raw"],
                   help="owt: how a row is framed (default: as the family's own repository did: AR and MDLM "
                   "bos_eos, BD3-LM and Eso-LM raw; docs/data.md 4.1)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("lm-eval-task", help="write the offline lm-eval tasks over the test split: perplexity "
                       "(esolm_corpus_ppl) and continuation with each model's own sampler (esolm_corpus_continue)")
    p.add_argument("directory")
    p.add_argument("--documents", type=at_least(1), default=24, help="test documents (pieces) to include")
    p.set_defaults(func=cmd_lm_eval_task)
