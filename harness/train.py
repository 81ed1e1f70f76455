"""Training loop shared by every model: AdamW, warm-up, clipping, EMA, checkpoints, resume.

Determinism: the seed fixes the data order (each epoch's permutation is a pure function
of seed and epoch, so a resumed run sees exactly the batches it would have seen), the
initialisation, and the noise inside the losses (the torch RNG state is checkpointed).
Multi-GPU runs go through ``torchrun`` (DDP); each rank takes its slice of the global batch.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from harness.checkpoints.own_format import CHECKPOINT_NAME, read_state, restore_tokenizer, save_checkpoint, tokenizer_files
from harness.config import ConfigError, TrainConfig, resolve_device
from harness.data import build_tokenizer, load_splits
from harness.models import LanguageModel, SpecialTokens, build_model, resolve_model_class
from harness.nn.transformer import BackboneConfig


def batch_indices(step: int, n_rows: int, batch_size: int, seed: int) -> torch.Tensor:
    """Rows of the global batch at ``step``: epoch permutations that depend only on (seed, epoch)."""
    per_epoch = n_rows // batch_size
    if per_epoch == 0:
        raise ConfigError(f"train.batch_size {batch_size} exceeds the {n_rows} training sequences; lower it")
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm[i * batch_size : (i + 1) * batch_size]


def lr_factor(step: int, cfg: TrainConfig) -> float:
    o = cfg.train
    if step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.lr_schedule == "cosine":
        progress = (step - o.warmup_steps) / max(1, o.steps - o.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


class EMA:
    """Exponential moving average of the parameters, with the usual warm-up of the decay
    (min(decay, (1+n)/(10+n))) so that short runs still get a useful average."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module):
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in model.state_dict().items():
            self.shadow[k].lerp_(v.detach(), 1 - d)


def build(cfg: TrainConfig, tokenizer) -> LanguageModel:
    max_len = cfg.backbone.max_len or cfg.data.seq_len
    backbone = BackboneConfig.from_preset(cfg.backbone.preset, vocab_size=tokenizer.vocab_size, max_len=max_len,
                                          **cfg.backbone.overrides())
    special = SpecialTokens(bos=tokenizer.bos_id, eos=tokenizer.eos_id, mask=tokenizer.mask_id)
    return build_model(cfg.model, backbone, special, **cfg.model_args)


def is_finished(cfg: TrainConfig) -> bool:
    path = cfg.run_dir() / CHECKPOINT_NAME
    return path.is_file() and read_state(path)["step"] >= cfg.train.steps


@torch.no_grad()
def validation_loss(model: LanguageModel, valid: torch.Tensor, cfg: TrainConfig, device, autocast) -> float:
    """Mean loss over the first ``eval_batches`` validation batches with fixed noise."""
    model.eval()
    losses = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.train.seed + 12345)
        for b in range(min(cfg.train.eval_batches, max(1, len(valid) // cfg.train.batch_size))):
            x = valid[b * cfg.train.batch_size : (b + 1) * cfg.train.batch_size].to(device)
            with autocast():
                losses.append(float(model.loss(x)))
    model.train()
    return sum(losses) / len(losses)


def lock_run(run_dir: Path, wait: bool):
    """Hold the run folder's lock (released when the process ends or the file is closed):
    one process trains a run at a time.  ``wait``: block until the holder is done (sweep
    shards waiting for a shared checkpoint), else refuse naming the holder's pid."""
    from harness import locks

    def waiting(holder):
        print(f"waiting for pid {holder or 'another process'}, which is training {run_dir}", file=sys.stderr)

    try:
        return locks.take(run_dir / ".lock", wait=wait, on_wait=waiting)
    except locks.Held as held:
        raise ConfigError(f"{run_dir} is being trained by pid {held.holder or 'another process'}; wait for it to "
                          "finish (then --resume) or set another name/out_dir") from None


def clean_run_dir(run_dir: Path, step: int) -> None:
    """Leftovers of a run killed mid-write: temporary checkpoint files, and log records past
    the checkpoint it resumes from (they are written again)."""
    for tmp in run_dir.glob("tmp*.tmp"):
        tmp.unlink(missing_ok=True)
    log_path = run_dir / "log.jsonl"
    if not log_path.is_file():
        return
    kept = []
    for line in log_path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue  # a half-written last line
    tmp = log_path.with_name(f".{log_path.name}.tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, log_path)


def check_splits(cfg: TrainConfig, train_rows: torch.Tensor, valid: torch.Tensor) -> None:
    corpus = cfg.data.corpus if isinstance(cfg.data.corpus, str) else ", ".join(cfg.data.corpus)
    if len(train_rows) == 0:
        raise ConfigError(f"data.corpus: the training split of {corpus} packs into 0 sequences of data.seq_len "
                          f"{cfg.data.seq_len} tokens; add text or lower data.seq_len")
    if len(valid) == 0:
        raise ConfigError(f"data.corpus: the validation split of {corpus} packs into 0 sequences of data.seq_len "
                          f"{cfg.data.seq_len} tokens (a valid loss would be NaN); add text or lower data.seq_len")


def finite_or_none(record: dict) -> dict:
    """NaN/inf are not JSON: log.jsonl gets null for them (a diverged loss)."""
    return {k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in record.items()}


def check_legacy_options(cfg: TrainConfig, state: dict, ckpt_path: Path) -> None:
    """A run trained before one of its model's defaults changed (LanguageModel.legacy_options)
    is not continued or reused under a recipe that now means the new default."""
    cls = resolve_model_class(cfg.model)
    saved = cls.saved_options(state["model_options"])
    now = cls.recipe_options(cfg.model_args)
    changed = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
    if changed:
        was = ", ".join(f"{k}={old!r}" for k, (old, _) in changed.items())
        new = ", ".join(f"{k}={v!r}" for k, (_, v) in changed.items())
        raise ConfigError(f"{ckpt_path} was trained with {was}, from before the default became {new}; remove "
                          f"{ckpt_path.parent} to retrain it, or pin the old behaviour with model_args {{{was.replace('=', ': ')}}}")


def without_legacy(cfg: TrainConfig, exclude: dict) -> dict:
    """The config minus what may change between runs, and minus the legacy-tracked model
    options, which :func:`check_legacy_options` compares by the values they take (pinning an
    old default is the same run as the one that had it)."""
    out = cfg.model_dump(exclude=exclude)
    tracked = resolve_model_class(cfg.model).legacy_options
    out["model_args"] = {k: v for k, v in out["model_args"].items() if k not in tracked}
    return out


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, wait: bool = False) -> Path:
    """Train ``cfg`` to ``cfg.train.steps``; returns the checkpoint path.

    With ``resume`` an existing checkpoint in the run folder is continued (a finished one
    is returned as is); without it, an existing checkpoint is an error so that no run is
    overwritten by accident.  One process trains a run folder at a time (:func:`lock_run`;
    ``wait`` waits for the other to finish instead of refusing).
    """
    rank = int(os.environ.get("RANK", "0"))
    lock = lock_run(cfg.run_dir(), wait) if rank == 0 else None
    try:
        return _train(cfg, resume, progress, rank)
    finally:
        if lock is not None:
            lock.close()


def _train(cfg: TrainConfig, resume: bool, progress: bool, rank: int) -> Path:
    o = cfg.train
    run_dir = cfg.run_dir()
    ckpt_path = run_dir / CHECKPOINT_NAME
    state = None
    if ckpt_path.exists():
        if not resume:
            raise ConfigError(f"{ckpt_path} exists; pass --resume to continue it, or set another name/out_dir")
        state = read_state(ckpt_path)
        saved = TrainConfig.model_validate(state["config"])
        # What is trained, not what the run is called, where it lives, how far or how fast it goes
        # (so a renamed sweep variant can point out_dir at existing runs).
        same = {"name": True, "out_dir": True, "train": {"steps", "compile"}}
        check_legacy_options(cfg, state, ckpt_path)
        if without_legacy(saved, same) != without_legacy(cfg, same):
            raise ConfigError(f"{ckpt_path} was trained with a different config; use the same config "
                              "(only name, out_dir, train.steps and train.compile may change) or another out_dir")
        if state["step"] >= o.steps:  # a finished run is returned as it is
            print(f"{ckpt_path} is already at step {state['step']} (train.steps {o.steps}); nothing to train",
                  file=sys.stderr)
            return ckpt_path

    if rank == 0:
        clean_run_dir(run_dir, state["step"] if state else 0)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if distributed:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if o.batch_size % world:
        raise ConfigError(f"train.batch_size {o.batch_size} must be divisible by the {world} processes")
    if o.threads:
        torch.set_num_threads(o.threads)
    device = resolve_device(o.device, "train.device")
    if distributed and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    use_bf16 = o.precision == "bf16" or (o.precision == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext

    torch.manual_seed(o.seed)
    tokenizer = restore_tokenizer(state["tokenizer_files"]) if state else build_tokenizer(cfg.data)
    splits = load_splits(cfg.data, tokenizer)
    train_rows, valid = splits["train"], splits["valid"]
    check_splits(cfg, train_rows, valid)
    model = build(cfg, tokenizer).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(0.9, 0.999), weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    ema = EMA(model, o.ema) if o.ema > 0 else None
    step = 0
    if state:
        model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer_state"])
        scheduler.load_state_dict(state["scheduler_state"])
        if ema is not None and state["ema_state"] is not None:
            ema.shadow = {k: v.to(device) for k, v in state["ema_state"].items()}
            ema.updates = state["step"]
        torch.set_rng_state(state["rng_state"]["torch"])
        step = state["step"]

    if o.compile:
        # In place (state_dict keys unchanged); static shapes: Eso-LM's two forwards per loss
        # differ in length, and a symbolic-shape recompile hit an inductor stride bug in backward.
        model.net.compile(dynamic=False)
    net = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    blobs = tokenizer_files(tokenizer)
    log_path = run_dir / "log.jsonl"
    n_params = model.net.num_parameters()

    def checkpoint(at_step: int):
        if rank != 0:
            return
        save_checkpoint(ckpt_path, model=model, model_name=cfg.model, tokenizer_blobs=blobs,
                        config=cfg.model_dump(), step=at_step,
                        ema_state=ema.shadow if ema else None, optimizer_state=optimizer.state_dict(),
                        scheduler_state=scheduler.state_dict(), rng_state={"torch": torch.get_rng_state()},
                        meta={"parameters": n_params, "device": str(device), "tokenizer": tokenizer.name,
                              "train_sequences": len(train_rows), "seq_len": cfg.data.seq_len})

    model.train()
    bar = tqdm(total=o.steps, initial=step, desc=f"train {cfg.name}", disable=not progress or rank != 0,
               dynamic_ncols=True)
    tokens_per_step = o.batch_size * cfg.data.seq_len
    t_last, steps_since = time.perf_counter(), 0
    while step < o.steps:
        rows = batch_indices(step, len(train_rows), o.batch_size, o.seed)
        rows = rows.chunk(world)[rank] if distributed else rows
        x = train_rows[rows].to(device, non_blocking=True)
        with autocast():
            loss = net(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(model)
        step += 1
        steps_since += 1
        bar.update(1)
        if step % 10 == 0 or step == o.steps:
            elapsed = time.perf_counter() - t_last
            bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tokens_per_step * steps_since / elapsed:,.0f}")
        if step % o.eval_every == 0 or step == o.steps:
            record = {"step": step, "train_loss": loss.item(), "lr": scheduler.get_last_lr()[0],
                      "valid_loss": validation_loss(model, valid, cfg, device, autocast)}
            record["valid_ppl" if model.exact_loss else "valid_ppl_bound"] = math.exp(min(record["valid_loss"], 50))
            if rank == 0:
                with log_path.open("a") as f:
                    f.write(json.dumps(finite_or_none(record)) + "\n")
                bar.write(f"{cfg.name} step {step}: valid loss {record['valid_loss']:.4f}")
        if step % o.ckpt_every == 0 or step == o.steps:
            checkpoint(step)
        if steps_since and step % 10 == 0:
            t_last, steps_since = time.perf_counter(), 0
    bar.close()
    if distributed:
        torch.distributed.destroy_process_group()
    return ckpt_path
