"""lm-eval (0.4.x) adapter: harness checkpoints as the ``esolm`` model (its offline tasks: harness.lm_eval_tasks).

Usage (offline; nothing is downloaded)::

    import harness.lm_eval_adapter as A          # registers the "esolm" model
    task_dir = A.write_lm_eval_task("/tmp/esolm_tasks")
    results = A.evaluate("runs/ar-mini", tasks=["esolm_corpus_ppl"], include_path=task_dir)

or from the shell, with every ``lm_eval`` option::

    python -m harness.lm_eval_adapter --model esolm --model_args checkpoint=runs/ar-mini \\
        --tasks esolm_corpus_ppl --include_path /tmp/esolm_tasks

(plain ``lm_eval --model esolm`` does not know the model: lm-eval never imports this module.)

What each request type computes
-------------------------------
Sequences always start with the tokenizer's BOS, as in training.

- ``loglikelihood(context, continuation)``:
  * AR: exact — Σ log p(continuation tokens | BOS, context, earlier continuation tokens),
    and ``is_greedy`` is whether every continuation token is the argmax.  When BOS +
    context + continuation exceeds the model's max_len, the context is cut from the left.
  * every other model: ``nll(BOS+context) − nll(BOS+context+continuation)`` with the
    model's likelihood estimator (a NELBO for MDLM/BD3-LM/Eso-LM; Eso-LM's exact
    single-order likelihood with ``exact_order=True``).  This is a difference of two
    bounds/estimates — neither a bound nor exact for the conditional — and the
    continuation is NOT conditioned on the context the way an AR model's is; the model
    scores both sequences as whole sequences of their own length.  ``is_greedy`` is
    always False.  Use it to rank choices, not to quote a probability.
- ``loglikelihood_rolling(document)`` (perplexity tasks):
  * AR: exact, with a sliding window of max_len and stride max_len // 2; each token is
    scored once (:func:`harness.evaluators.sliding_windows`).
  * others: the document is cut into consecutive chunks of max_len − 1 tokens, each
    scored as ``[BOS] + chunk`` by the model's estimator, independently (no context across
    chunks).  Note that these models' ``nll`` also counts the BOS position.
- ``generate_until``:
  * AR: greedy unless ``do_sample``, with a KV cache.
  * every other model: its own sampler from the prompt as a given prefix ([BOS] + context),
    always sampling (a diffusion sampler has no greedy path); ``max_gen_toks`` new
    positions, cut at the first EOS and at ``until``.  The schedule comes from the model
    args ``steps``, ``alpha_0``, ``blocks``, ``first_hitting`` (defaults: one step per new
    token, BD3-LM first hitting, Eso-LM its training alpha_0).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

try:
    import lm_eval
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError:  # the module still imports, so the esolm-lm-eval script can say what to install
    lm_eval = None
    LM = object

    def register_model(name):
        return lambda cls: cls

from harness.config import resolve_device
from harness.evaluators import sliding_windows

log = logging.getLogger(__name__)

from harness.lm_eval_tasks import TASK_NAME, corpus_test_documents, write_lm_eval_task  # noqa: F401  (the tasks)


class MissingExtra(ImportError, ValueError):
    """lm-eval is not installed: an ImportError, and a ValueError so the CLIs print it as one line."""


def require_lm_eval() -> None:
    if lm_eval is None:
        raise MissingExtra("harness.lm_eval_adapter needs lm-eval 0.4.x: install the 'eval' extra: "
                           "pip install -e '.[eval]'")


def _as_int(value, name: str, default: int) -> int:
    if value is None or value == "auto" or (isinstance(value, str) and value.startswith("auto")):
        return default
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"esolm model arg {name}={value!r}: expected an integer") from None
    if out < 1:
        raise ValueError(f"esolm model arg {name}={value!r}: must be >= 1")
    return out


@register_model("esolm")
class EsoLMHarnessLM(LM):
    """A harness checkpoint (any model) behind lm-eval's LM interface.

    model_args: ``checkpoint`` (run folder or checkpoint.pt, required), ``batch_size``
    (default 8), ``device`` (default cuda if available), ``seed`` (0: Monte-Carlo
    estimators and sampling are seeded per call), ``draws`` (NELBO draws for non-AR
    models), ``exact_order`` (Eso-LM: use the exact single-order likelihood),
    ``max_gen_toks`` (default 256); for the diffusion models' generation ``steps``,
    ``alpha_0``, ``blocks`` and ``first_hitting`` (their sampling schedule).
    """

    def __init__(self, checkpoint: str | None = None, batch_size=8, device: str | None = None, seed: int = 0,
                 draws: int | None = None, exact_order: bool = False, max_gen_toks: int = 256,
                 max_batch_size=None, steps=None, alpha_0=None, blocks=None, first_hitting=None, **unknown):
        require_lm_eval()
        super().__init__()
        if unknown:
            raise ValueError(f"unknown esolm model arg(s) {sorted(unknown)}; allowed: checkpoint, batch_size, device, "
                             f"seed, draws, exact_order, max_gen_toks, steps, alpha_0, blocks, first_hitting")
        self._schedule_args = {"steps": None if steps is None else _as_int(steps, "steps", 1),
                               "blocks": None if blocks is None else _as_int(blocks, "blocks", 1),
                               "alpha_0": None if alpha_0 is None else float(alpha_0),
                               "first_hitting": None if first_hitting is None
                               else str(first_hitting).lower() in ("1", "true", "yes")}
        if not checkpoint:
            raise ValueError("esolm model needs model_args checkpoint=/path/to/run (or its checkpoint.pt)")
        from harness.checkpoints.own_format import load_checkpoint

        if device and str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm_eval's CLI passes --device cuda by default; on a CPU machine run on the CPU.
            print(f"esolm: device {device!r} requested but no CUDA device is visible; using cpu", file=sys.stderr)
            device = "cpu"
        self._device = resolve_device(str(device) if device else "auto", "esolm model arg device")
        loaded = load_checkpoint(checkpoint, device=self._device)
        self.model, self.tokenizer, self.meta = loaded.model, loaded.tokenizer, loaded.meta
        self.model.eval()
        reads = type(self.model).schedule_fields  # as esolm sample refuses a flag the model does not read
        ignored = [k for k, v in self._schedule_args.items() if v is not None and reads is not None and k not in reads]
        if ignored:
            raise ValueError(f"model_args {ignored[0]}= does not apply to {self.model.name}; it reads "
                             f"{', '.join(reads) or 'no schedule fields'}")
        self.batch_size = _as_int(batch_size, "batch_size", 8)
        self.seed = int(seed)
        self.max_gen_toks = _as_int(max_gen_toks, "max_gen_toks", 256)
        self.max_len = int(self.model.backbone_config.max_len)
        self.bos = int(self.model.special.bos)
        self.eos = int(self.model.special.eos)
        self.is_ar = getattr(self.model, "name", None) == "ar" and hasattr(self.model, "next_token_logits")
        exact_order = str(exact_order).lower() in ("1", "true", "yes")
        if exact_order and not hasattr(self.model, "nll_exact_order"):
            raise ValueError(f"exact_order=True needs an Eso-LM checkpoint; {self.model.name!r} has no exact-order "
                             f"likelihood")
        self._nll_fn = self.model.nll_exact_order if exact_order else self.model.nll
        self._nll_kwargs = {}
        if draws is not None:
            self._nll_kwargs["orders" if exact_order else "draws"] = _as_int(draws, "draws", 1)
        self._warned = False

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        """lm_eval passes its own --batch_size/--device beside model_args; a value given in
        model_args wins (lm-eval passed both: "multiple values for keyword argument")."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        if str(extra.get("device", "")).startswith("cuda") and not torch.cuda.is_available():
            extra.pop("device")  # lm-eval's own default, not the user's ask: no "cuda requested" line on a CPU
        return cls(**arg_dict, **extra)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    # --- helpers --------------------------------------------------------------------
    @property
    def device(self):
        return self._device

    def _rng(self):
        devices = [self._device] if self._device.type == "cuda" else []
        return torch.random.fork_rng(devices=devices)

    def _encode(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer.encode(text)]

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token boundary as lm-eval does it: encode the whole, split at len(encode(context))."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self._encode(context + continuation)
        ctx = self._encode(context)
        return ctx, whole[len(ctx):]

    @torch.no_grad()
    def _ar_logprobs(self, seqs: list[list[int]], first: list[int]):
        """Per sequence: (Σ log p of targets at positions >= first, all argmax) with right padding."""
        out = [None] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        for b in range(0, len(order), self.batch_size):
            group = order[b : b + self.batch_size]
            width = len(seqs[group[0]])
            x = torch.full((len(group), width), self.eos, dtype=torch.long)
            for row, i in enumerate(group):
                x[row, : len(seqs[i])] = torch.tensor(seqs[i])
            x = x.to(self._device)
            logp = F.log_softmax(self.model.next_token_logits(x).double(), dim=-1)
            for row, i in enumerate(group):
                n, f = len(seqs[i]), first[i]
                targets = x[row, f:n]
                rows = logp[row, f - 1 : n - 1]
                total = rows.gather(-1, targets[:, None]).sum().item()
                greedy = bool((rows.argmax(-1) == targets).all().item())
                out[i] = (total, greedy)
        return out

    @torch.no_grad()
    def _nll_many(self, seqs: list[list[int]]) -> list[float]:
        """Model-estimator nats of whole sequences, batched among equal lengths."""
        out = [0.0] * len(seqs)
        by_len: dict[int, list[int]] = {}
        for i, s in enumerate(seqs):
            by_len.setdefault(len(s), []).append(i)
        for length, idx in sorted(by_len.items()):
            if length < 2:
                continue  # [BOS] alone: nothing to score
            for b in range(0, len(idx), self.batch_size):
                group = idx[b : b + self.batch_size]
                x = torch.tensor([seqs[i] for i in group], dtype=torch.long, device=self._device)
                try:
                    nll = self._nll_fn(x, **self._nll_kwargs)
                except ValueError as err:
                    raise ValueError(f"{self.model.name} cannot score a sequence of {length} tokens: {err}") from err
                for i, v in zip(group, nll.nats.tolist()):
                    out[i] = float(v)
        return out

    def _warn_inexact(self, what: str):
        if not self._warned:
            log.warning("esolm %s for %r uses differences/sums of the model's likelihood estimator, not exact "
                        "conditional log-probabilities (see harness/lm_eval_adapter.py)", what, self.model.name)
            self._warned = True

    # --- lm-eval interface ---------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self._encode_pair(*req.args) for req in requests]
        with self._rng():
            torch.manual_seed(self.seed)
            if self.is_ar:
                seqs, first = [], []
                for ctx, cont in pairs:
                    if not cont:
                        raise ValueError("loglikelihood: empty continuation after tokenisation")
                    if len(cont) > self.max_len - 1:
                        raise ValueError(f"loglikelihood: continuation of {len(cont)} tokens does not fit the "
                                         f"model's max_len {self.max_len}")
                    seq = ([self.bos] + ctx + cont)[-self.max_len:]
                    seqs.append(seq)
                    first.append(len(seq) - len(cont))
                return self._ar_logprobs(seqs, first)
            self._warn_inexact("loglikelihood")
            trimmed = []
            for c, k in pairs:
                if len(k) > self.max_len - 1:
                    raise ValueError(f"loglikelihood: continuation of {len(k)} tokens does not fit the "
                                     f"model's max_len {self.max_len}")
                trimmed.append((c[len(c) - min(len(c), self.max_len - 1 - len(k)):], k))  # cut context from the left
            full = self._nll_many([[self.bos] + c + k for c, k in trimmed])
            ctx = self._nll_many([[self.bos] + c for c, _ in trimmed])
            return [(c - f, False) for f, c in zip(full, ctx)]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        docs = [[self.bos] + self._encode(req.args[0]) for req in requests]
        with self._rng():
            torch.manual_seed(self.seed)
            if self.is_ar:
                seqs, first, owner = [], [], []
                for k, ids in enumerate(docs):
                    for start, end, score_from in sliding_windows(len(ids), self.max_len):
                        seqs.append(ids[start:end])
                        first.append(score_from - start)
                        owner.append(k)
                totals = [0.0] * len(docs)
                for k, (lp, _) in zip(owner, self._ar_logprobs(seqs, first) if seqs else []):
                    totals[k] += lp
                return totals
            self._warn_inexact("loglikelihood_rolling")
            width = self.max_len - 1
            chunks, owner = [], []
            for k, ids in enumerate(docs):
                body = ids[1:]
                for s in range(0, len(body), width):
                    chunks.append([self.bos] + body[s : s + width])
                    owner.append(k)
            totals = [0.0] * len(docs)
            for k, nats in zip(owner, self._nll_many(chunks)):
                totals[k] -= nats
            return totals

    def generation_schedule(self, new_tokens: int, top_p: float):
        """The model's sampling schedule for ``new_tokens`` new positions: model_args' fields,
        with the model's own defaults where they give none (one step per new token for MDLM
        and Eso-LM's diffusion phase, first hitting for BD3-LM)."""
        from harness.schedules import SamplingSchedule

        fields = {k: v for k, v in self._schedule_args.items() if v is not None}
        schedule = SamplingSchedule(top_p=top_p, **fields)
        return type(self.model).default_schedule(schedule, new_tokens, self.model.options())

    def _generation_request(self, req) -> tuple[list[int], list[str], int, dict]:
        """(prompt ids [BOS] + context, cut from the left to leave room; until strings; new
        tokens; the remaining generation kwargs) of one generate_until request."""
        context, kwargs = req.args
        kwargs = dict(kwargs or {})
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = max(1, min(int(kwargs.pop("max_gen_toks", self.max_gen_toks)), self.max_len - 1))
        prompt = ([self.bos] + self._encode(context))[-(self.max_len - max_new):]
        return prompt, until, max_new, kwargs

    @staticmethod
    def _cut(text: str, until: list[str]) -> str:
        for s in until:
            if s and s in text:
                text = text[: text.index(s)]
        return text

    def _generate_diffusion(self, requests) -> list[str]:
        out = []
        generator = torch.Generator(device=self._device).manual_seed(self.seed)
        block = getattr(self.model, "block_size", 1)
        for req in requests:
            prompt, until, max_new, kwargs = self._generation_request(req)
            top_p = float(kwargs.pop("top_p", 1.0) or 1.0)
            length = -(-(len(prompt) + max_new) // block) * block  # BD3-LM: whole blocks
            if length > self.max_len:
                prompt = prompt[length - self.max_len:]
                length = self.max_len
            gen = self.model.sample(1, length, self.generation_schedule(length - len(prompt), top_p), generator,
                                    prefix=torch.tensor(prompt))
            new = gen.tokens[0, len(prompt):len(prompt) + max_new].tolist()
            new = new[: new.index(self.eos)] if self.eos in new else new
            out.append(self._cut(self.tokenizer.decode(new), until))
        return out

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        if not self.is_ar:
            return self._generate_diffusion(requests)
        from harness.nn import masks
        from harness.sampling import sample_tokens

        net = self.model.net
        out = []
        generator = torch.Generator(device=self._device).manual_seed(self.seed)
        for req in requests:
            prompt, until, max_new, kwargs = self._generation_request(req)
            temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
            do_sample = bool(kwargs.pop("do_sample", False)) and temperature > 0
            top_p = float(kwargs.pop("top_p", 1.0) or 1.0)
            n = len(prompt)
            cache = net.new_cache(1, n + max_new)
            x = torch.tensor([prompt], dtype=torch.long, device=self._device)
            logits = net(x, torch.arange(n, device=self._device), masks.causal(n, self._device), cache, commit=n)
            new: list[int] = []
            text = ""
            while True:
                last = self.model.subs_logits(logits[:, -1])
                tok = (sample_tokens(last / temperature, generator, top_p) if do_sample else last.argmax(-1)).item()
                if tok == self.eos:
                    break
                new.append(int(tok))
                text = self.tokenizer.decode(new)
                if any(s and s in text for s in until) or len(new) >= max_new:
                    break
                pos = n + len(new) - 1
                logits = net(torch.tensor([[tok]], device=self._device), torch.tensor([pos], device=self._device),
                             masks.cached_causal(1, pos, self._device), cache, commit=1)
            out.append(self._cut(text, until))
        return out


def evaluate(checkpoint: str | Path, tasks: list[str], include_path: str | Path | None = None,
             batch_size: int = 8, device: str | None = None, limit: int | None = None, **model_args) -> dict:
    """``lm_eval.simple_evaluate`` on a harness checkpoint, offline, indexing only ``include_path``."""
    require_lm_eval()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(include_path) if include_path else None,
                          include_defaults=include_path is None)
    args = {"checkpoint": str(checkpoint), **model_args}
    return lm_eval.simple_evaluate(model="esolm", model_args=args, tasks=tasks, task_manager=manager,
                                   batch_size=batch_size, device=device, limit=limit)


ALLOW_HUB = "--allow-hub"


def needs_the_hub(err: BaseException) -> bool:
    """Whether an error is the Hugging Face hub refusing (offline) or unreachable."""
    names = {c.__name__ for c in type(err).__mro__}
    return bool(names & {"ConnectionError", "OfflineModeIsEnabled", "LocalEntryNotFoundError"}) or \
        "offline" in str(err).lower()


def main() -> None:
    """``esolm-lm-eval <lm_eval CLI args>`` with the esolm model registered.  It runs offline (the
    harness downloads nothing) unless ``--allow-hub`` is given, which lets lm-eval fetch the
    datasets of its registry's tasks (lambada_openai, ...)."""
    allow_hub = ALLOW_HUB in sys.argv
    sys.argv = ["lm_eval"] + [a for a in sys.argv[1:] if a != ALLOW_HUB]
    if not allow_hub:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        require_lm_eval()
        from lm_eval.__main__ import cli_evaluate

        cli_evaluate()
    except Exception as err:  # noqa: BLE001 - every failure is one line here, like esolm's
        offline = needs_the_hub(err) and not allow_hub
        if not offline and not isinstance(err, (ValueError, FileNotFoundError)):
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        if offline:
            message = (f"a task needs the Hugging Face hub, which esolm-lm-eval keeps offline ({type(err).__name__}); "
                       f"pass {ALLOW_HUB} to let lm-eval download it, or use a local task with --include_path DIR")
        elif "Tasks not found" in message and "--include_path" not in sys.argv:
            message += " (for esolm_corpus_ppl: esolm lm-eval-task DIR, then pass --include_path DIR)"
        print(f"esolm-lm-eval: error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
