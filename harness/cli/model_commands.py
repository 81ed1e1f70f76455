"""``esolm train``, ``eval`` and ``sample``: the commands that run one model.

The sampler flags of ``sample`` are made from :class:`harness.schedules.SamplingSchedule`'s
fields (a field ``entropy_bound`` is the flag ``--entropy-bound``, its description the help),
so a schedule option a model gains is a flag with no change here.
"""

from __future__ import annotations

import json
import re
import sys
import typing
from pathlib import Path

import torch

from harness.cli.types import at_least, device, fraction, seed_int

# What the flags do when left out, where the field's description cannot say it (it depends on the model).
SCHEDULE_DEFAULTS = {"steps": "default: T = L for MDLM and Eso-LM's diffusion phase; BD3-LM defaults to "
                              "--first-hitting",
                     "alpha_0": "default: the training value"}


def cmd_train(args) -> None:
    from harness.config import TrainConfig, parse, read_yaml
    from harness.train import train

    data = read_yaml(args.config)
    if args.steps is not None:  # before validation, so --steps 0 is refused like train.steps: 0
        data.setdefault("train", {})["steps"] = args.steps
    cfg = parse(TrainConfig, data, args.config if args.steps is None else f"{args.config} with --steps")
    path = train(cfg, resume=args.resume, progress=not args.quiet)
    print(f"checkpoint: {path}")


def cmd_eval(args) -> None:
    from harness.checkpoints.own_format import load_checkpoint
    from harness.config import DataSpec
    from harness.metrics.likelihood import estimator_call, se_note, test_perplexity, unigram_perplexity
    from harness.data import load_splits

    loaded = load_checkpoint(args.checkpoint, device=device(args.device))
    method, nll_kwargs = estimator_call(loaded.model, draws=args.draws, alpha_0=args.alpha_0, iw=args.iw)
    length = args.length if args.length is not None else loaded.config["data"]["seq_len"]
    loaded.model.check_length(length)
    data_config = dict(loaded.config["data"])
    if args.hf_dataset is not None:  # an imported or moved run's data, wherever it is on this machine
        data_config.update(hf_dataset=str(Path(args.hf_dataset).expanduser().resolve()), corpus="bundled")
    try:
        spec = DataSpec(**data_config)
        splits = load_splits(spec, loaded.tokenizer, seq_len=length)
    except (ValueError, OSError) as err:
        if args.hf_dataset is None:
            raise
        raise ValueError(str(err).replace("data.hf_dataset", "--hf-dataset")) from None
    data = splits[args.split]
    if args.max_sequences:
        data = data[: args.max_sequences]
    if not args.quiet:
        print(f"esolm eval: {loaded.model.name}, {len(data)} {args.split} sequences x {length} tokens", file=sys.stderr)
    result = test_perplexity(loaded.model, data, args.batch_size, seed=args.seed, method=method,
                             progress=not args.quiet, **nll_kwargs)
    result = {"checkpoint": str(loaded.path), "model": loaded.model.name, "data_protocol": spec.protocol,
              "data_framing": spec.row_framing,
              "split": args.split, "length": length,
              **result, "unigram_ppl": unigram_perplexity(splits["train"], data, loaded.tokenizer.vocab_size)}
    if args.json:
        print(json.dumps(result))
    else:
        kind = "exact" if result.get("exact") else "upper bound"
        print(f"{result['model']} {args.split} perplexity {result['ppl']:.3f} ± {result['ppl_se']:.3f} "
              f"({se_note(result)}; {kind}; "
              f"data protocol {spec.protocol} ({spec.row_framing} rows); estimator {result['estimator']}; "
              f"{result['n_sequences']} sequences x "
              f"{length} tokens; seed {args.seed}); unigram baseline {result['unigram_ppl']:.1f}")


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def add_schedule_flags(parser) -> None:
    """One flag per SamplingSchedule field: booleans switch on, Literals offer their choices,
    numbers parse as their type (the schedule's own validation then names the flag)."""
    from harness.schedules import SamplingSchedule

    for name, info in SamplingSchedule.model_fields.items():
        kind = [a for a in typing.get_args(info.annotation) if a is not type(None)] or [info.annotation]
        kind = kind[0]
        text = info.description or ""
        if name in SCHEDULE_DEFAULTS:
            text = f"{text} ({SCHEDULE_DEFAULTS[name]})"
        if kind is bool:
            parser.add_argument(flag(name), dest=name, action="store_true", help=text)
        elif typing.get_origin(kind) is typing.Literal:
            parser.add_argument(flag(name), dest=name, choices=list(typing.get_args(kind)), help=text)
        else:
            parser.add_argument(flag(name), dest=name, type=fraction if name == "alpha_0" else kind, help=text)


def schedule_from_args(args):
    """The SamplingSchedule the flags give (flags left out keep the field's default)."""
    from pydantic import ValidationError

    from harness.schedules import SamplingSchedule

    given = {name: getattr(args, name, None) for name in SamplingSchedule.model_fields}
    fields = {name: value for name, value in given.items() if value is not None and value is not False}
    try:
        return SamplingSchedule(**fields)
    except ValidationError as err:  # name the flag, as the sweep names the field
        first = err.errors()[0]
        name = flag(str(first["loc"][0])) if first["loc"] else "sampling options"
        raise ValueError(f"{name}: {first['msg']} (got {first.get('input')!r})") from None


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 arrive as lone surrogates
        raise ValueError("--prompt is not valid UTF-8 text; pass the prompt in UTF-8") from None
    return [tokenizer.bos_id] + list(tokenizer.encode(prompt))


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
            takes = ", ".join(flag(f) for f in cls.schedule_fields) or "no schedule flags"
            raise ValueError(f"{flag(extra[0])} does not apply to {model.name}; it takes {takes}")
    schedule = cls.default_schedule(schedule, length, model.options())
    try:
        cls.check_schedule(schedule, model.options())
    except ValueError as err:  # the model names schedule fields ('steps'); here they are flags
        from harness.schedules import SamplingSchedule

        raise ValueError(re.sub(r"'(\w+)'", lambda m: flag(m[1]) if m[1] in SamplingSchedule.model_fields
                                else m[0], str(err))) from None
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
    from harness.schedules import SampleNoise

    loaded = load_checkpoint(args.checkpoint, device=device(args.device))
    model = loaded.model
    length = args.length if args.length is not None else model.backbone_config.max_len
    prefix = None
    if args.prompt is not None:  # the prompt follows BOS, as every training row does
        prefix = torch.tensor(prompt_ids(loaded.tokenizer, args.prompt))
        if len(prefix) >= length:
            raise ValueError(f"--prompt is {len(prefix)} tokens with BOS; give a --length above that")
    schedule = sample_schedule(args, model, length)
    model.check_length(length)
    rows = sample_rows(model, args.n, length, schedule, model.device)
    noise = SampleNoise(args.seed, schedule.row_noise, model.device)
    forwards = tokens = 0
    per_sample, probes = [], []  # forwards each sample needed (a forward over a batch runs every row once)
    bar = sample_progress(args, length, rows)
    try:
        for start in range(0, args.n, rows):  # batches that fit (--row-noise: the same samples at any size)
            n = min(rows, args.n - start)
            gen = model.sample(n, length, schedule, noise.batch(start, n), prefix=prefix)
            forwards, tokens = forwards + gen.nfe, tokens + gen.tokens_computed
            if "cache_error_draws" in gen.extra:  # the sampler probes its own cached steps
                probes.append(gen.extra)
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
    if schedule.measure_cache_error:
        first = min(rows, args.n)
        print(cache_error_line(probes, lambda use_cache: model.sample(
            first, length, schedule, SampleNoise(args.seed, schedule.row_noise, model.device).batch(0, first),
            prefix=prefix, use_cache=use_cache), model.special.mask))


def cache_error_line(probes: list[dict], sample, mask_id: int) -> str:
    """--measure-cache-error's summary: the sampler's own probes, else the first batch sampled
    twice, cached and uncached, with the same seed (as a sweep row measures it)."""
    from harness.unmasking.probe import COLUMNS, merge, twin_run

    with torch.no_grad():
        err = merge([{k: p[k] for k in COLUMNS} for p in probes]) if probes else twin_run(sample, mask_id)
    if not err["cache_error_draws"]:
        return f"--- cache error: no cached step to probe ({err['cache_error_method']}) ---"
    return (f"--- cache error over {err['cache_error_draws']} draws ({err['cache_error_method']}): max |delta logit| "
            f"{err['cache_error_max_logit']:.3g}, mean KL(uncached || cached) {err['cache_error_kl']:.3g}, "
            f"tokens changed {100 * err['cache_error_flip']:.2f} % ---")


def register(sub) -> None:
    from harness.metrics.likelihood import MAX_DRAWS

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
    p.add_argument("--hf-dataset", metavar="DIR", help="read the run's data from this local Hugging Face dataset "
                   "folder instead of the one it recorded (an imported run, a moved dataset); same protocol")
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
    add_schedule_flags(p)
    p.add_argument("--prompt", help="text the samples continue (given after BOS; every model)")
    p.add_argument("--seed", type=seed_int, default=0, help="seeds the random draws")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--quiet", action="store_true", help="no progress bar (shown on stderr when --n runs as batches)")
    p.set_defaults(func=cmd_sample)
