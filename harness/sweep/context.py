"""What the points of one run share: the device and precision, the loaded model entry, the
evaluator and the test-perplexity cache."""

from __future__ import annotations

import copy
import gc
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.config import DataSpec
from harness.sweep.schema import EvaluatorRef, ModelEntry, SweepConfig, entry_train_config


def git_commit() -> str | None:
    from harness.checkpoints.own_format import git_commit as commit

    return commit()


@dataclass
class LoadedEntry:
    model: Any
    tokenizer: Any
    data: DataSpec
    checkpoint: str | None
    meta: dict
    model_name: str
    sampler: Any = None  # the bf16 copy that samples on CUDA (Context.sampler)


@dataclass
class Context:
    """Everything the points of one run share: loaded models, evaluator, test-ppl cache."""

    cfg: SweepConfig
    device: torch.device
    checkpoints: dict[str, str]  # entry name -> checkpoint path (trained / given entries)
    test_ppl_cache: dict[str, dict] = field(default_factory=dict)
    commit: str | None = None  # git commit at the start of the run (one value per run)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])  # rows of one `esolm sweep` call
    # (entry, length, batch) -> the step mode timed fastest there: auto/fastest time once per shape
    step_modes: dict[tuple, str] = field(default_factory=dict)
    _loaded: tuple[str, LoadedEntry] | None = None
    _evaluator: Any = None

    @property
    def bf16(self) -> bool:
        return self.cfg.precision == "bf16" or (self.cfg.precision == "auto" and self.device.type == "cuda")

    @property
    def cast_for_sampling(self) -> bool:
        """bf16 on CUDA samples from a bf16 copy of the weights instead of under autocast:
        the samplers' steps are CUDA graphs (harness.nn.steps), and autocast would re-cast
        every weight inside every replayed step."""
        return self.bf16 and self.device.type == "cuda"

    @property
    def autocast(self):
        if self.bf16:
            return lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext

    @property
    def sampling_autocast(self):
        return nullcontext if self.cast_for_sampling else self.autocast

    def sampler(self, loaded: "LoadedEntry"):
        """The model samples are drawn from (see :attr:`cast_for_sampling`)."""
        if not self.cast_for_sampling:
            return loaded.model
        if loaded.sampler is None:
            loaded.sampler = copy.deepcopy(loaded.model).to(torch.bfloat16)
        return loaded.sampler

    @property
    def dtype(self) -> str:
        """How samples are computed (test perplexity runs under bf16 autocast whenever bf16)."""
        if self.cast_for_sampling:
            return "bf16"
        return "bf16-autocast" if self.bf16 else "fp32"

    def entry(self, name: str) -> ModelEntry:
        return next(m for m in self.cfg.models if m.name == name)

    def load(self, name: str) -> LoadedEntry:
        """The entry's model on the device; one entry is kept loaded at a time."""
        if self._loaded and self._loaded[0] == name:
            return self._loaded[1]
        self._loaded = None
        if self.device.type == "cuda":  # the last entry's weights, KV caches and graph pools
            gc.collect()
            torch.cuda.empty_cache()
        entry = self.entry(name)
        if entry.init == "random":
            from harness.data import build_tokenizer
            from harness.train import build

            tcfg = entry_train_config(self.cfg, entry)
            tokenizer = build_tokenizer(tcfg.data)
            torch.manual_seed(tcfg.train.seed)
            model = build(tcfg, tokenizer).to(self.device).eval()
            loaded = LoadedEntry(model, tokenizer, tcfg.data, None,
                                 {"parameters": model.net.num_parameters(), "weights": "random"}, tcfg.model)
        else:
            from harness.checkpoints.own_format import load_checkpoint

            path = self.checkpoints[name]
            ck = load_checkpoint(path, device=self.device, expect_model=entry.model_name)
            loaded = LoadedEntry(ck.model, ck.tokenizer, DataSpec(**ck.config["data"]), str(ck.path), ck.meta,
                                 entry.model_name or ck.config.get("model") or getattr(ck.model, "name", "custom"))
        self._loaded = (name, loaded)
        return loaded

    def evaluator(self):
        if self._evaluator is None:
            from harness.evaluators import get_evaluator

            spec = self.cfg.evaluator
            if isinstance(spec, EvaluatorRef):
                spec = f"ar:{self.checkpoints[spec.model_entry]}"
            self._evaluator = get_evaluator(spec, device=self.device)
        return self._evaluator
