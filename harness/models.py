"""The common model interface and the registry.

Every model — AR, MDLM, BD3-LM, Eso-LM (A)/(B), or a user's own — subclasses
:class:`LanguageModel` and implements three methods:

- ``loss(x0)``: the scalar training objective on a batch of packed sequences;
- ``nll(x0)``: per-sequence nats as an :class:`NLL`, saying whether they are exact or a bound;
- ``sample(n, length, schedule, generator)``: a :class:`Generation` with the tokens,
  exact, hardware-independent work counters (NFE and tokens computed) and how they were
  generated (order and step partition);
- optionally ``sample_log_prob(generation)``: log p(tokens | order, partition) of the
  model's own samples, differentiable, for policy-gradient fine-tuning.

Models are looked up by registry name (``"mdlm"``) or by dotted path
(``"mypkg.mymodel:MyModel"``), so a user's model plugs into sweeps the same way.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field

import torch
from torch import nn

from harness.nn.transformer import BackboneConfig, Transformer
from harness.sampling import top_p_filter
from harness.schedules import SamplingSchedule

REGISTRY: dict[str, str] = {
    "ar": "baselines.ar:AR",
    "mdlm": "baselines.mdlm:MDLM",
    "bd3lm": "baselines.bd3lm:BD3LM",
    "esolm-a": "harness.esolm:EsoLMA",
    "esolm-b": "harness.esolm:EsoLMB",
}


@dataclass(frozen=True)
class SpecialTokens:
    bos: int
    eos: int
    mask: int


@dataclass
class Generation:
    """Sampled tokens plus exact work counters.

    nfe: network forwards run for the batch (a forward over many rows counts once).
    tokens_computed: query positions run through the network, summed over forwards and
        rows — exact and hardware-independent, so CI can assert the speed story.
    nfe_per_sample: forwards each row actually needed, where rows differ (MDLM reuse).
    key_reads: cache slots read by attention, summed over KV-cached forwards and rows (a
        window at slots [start, stop) reads stop slots: the cache and its own keys); the
        KV-cache traffic a step adds to its weight reads (0 for forwards without a cache).
    attention_pairs: query-key pairs the attention masks allow, summed over forwards and
        rows (harness.nn.masks.allowed_pairs): the attention arithmetic no implementation
        of the sampler avoids (4 · d_model FLOPs per pair per layer), beside its matmuls'.
    extra: model-specific counters (e.g. BD3-LM's cache-writing forwards).
    step: (n, L) long, the sampler step at which each position was drawn, −1 where the
        position was given (prefix).  Positions with the same step were drawn from one
        forward's logits.  AR: position i at step i − 1; MDLM: the grid step in [0, T);
        BD3-LM: block b's step k is b·S + k (S = T, or L' for first hitting); Eso-LM: the
        non-empty diffusion steps 0 … D − 1, then one sequential step per position.
    order: (n, L) long, ``order[b, j]`` = the position generated j-th: given positions
        first, then by step; within a step, the order the sampler's window holds them in
        (it matters for Eso-LM, whose [MASK] queries attend causally within a step; MDLM
        and BD3-LM list a step's positions left to right: their steps are order-free).
    Both cost one (n, L) tensor each, made from what the sampler draws up front: no device
    read-back per step.
    """

    tokens: torch.Tensor
    nfe: int
    tokens_computed: int
    nfe_per_sample: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)
    key_reads: int = 0
    attention_pairs: int = 0
    step: torch.Tensor | None = None
    order: torch.Tensor | None = None


@dataclass
class SampleLogProb:
    """log p(tokens | order, partition) per sample (float64, (n,)), differentiable w.r.t. the
    weights, and what computing it cost.

    passes: network forwards run (each over the whole batch); tokens_computed: query
    positions run through the network, summed over passes and rows (as in Generation).
    exact: True when it equals the sampler's own log-probability (to float tolerance);
    estimator names it ("exact", or e.g. "elbo(draws=N)", a bound on a different quantity).
    """

    log_prob: torch.Tensor
    passes: int
    tokens_computed: int
    exact: bool
    estimator: str


@dataclass
class NLL:
    """Per-sequence negative log-likelihood in nats over ``tokens`` scored positions."""

    nats: torch.Tensor
    tokens: int
    exact: bool
    estimator: str  # "exact", "nelbo(draws=N)", "iw(K)" ...


class LanguageModel(nn.Module):
    """Base class: one shared :class:`Transformer` plus the tokenizer's special ids."""

    name: str = "model"
    exact_loss: bool = False  # True when loss() is the exact per-token NLL (AR), not a bound
    # How the cached samplers run their steps (harness.nn.steps): None/"auto" = CUDA graphs
    # on a GPU, plain eager steps elsewhere; "dynamic", "static" or "graph" to force one.
    step_mode: str | None = None
    # True where the fixed-shape steps run (and count) every row of a batch, while the eager
    # path runs only the rows that reveal a token (MDLM, BD3-LM): same tokens, other counters
    fixed_steps_count_every_row: bool = False
    # Bytes one sampling forward may use (harness.memory): None = 90 % of the free device memory.
    max_memory: int | str | None = None

    # --- the model's facts: the CLI, sweeps, lm-eval, memory estimates, the importer and the
    # reports read them here, so a model (a plug-in too) declares them once, on its class.
    display_name: str | None = None  # in reports; None: its name
    color: str = "#9467bd"  # its colour in the reports' plots
    # SamplingSchedule fields its sampler reads besides top_p and given_bos; None: any (it
    # checks its own schedules in check_schedule)
    schedule_fields: tuple[str, ...] | None = None
    importable: bool = False  # esolm import reads its released checkpoints (harness.checkpoints.released)
    # Options whose default changed, with the value a checkpoint saved before the option existed
    # was trained with: loading fills them in, and a finished run trained under the old value is
    # not silently reused by a recipe that now means the new one (harness.train).
    legacy_options: dict = {}

    @classmethod
    def saved_options(cls, options: dict) -> dict:
        """A checkpoint's model_options with the legacy values of options it predates."""
        return {**cls.legacy_options, **options}

    @classmethod
    def recipe_options(cls, model_args: dict) -> dict:
        """The legacy-tracked options a recipe builds now: its model_args, else the defaults."""
        import inspect

        defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
        return {k: model_args.get(k, defaults.get(k)) for k in cls.legacy_options}

    @classmethod
    def check_schedule(cls, schedule: SamplingSchedule, options: dict | None = None) -> None:
        """Refuse a schedule this model cannot run, naming the field (a sweep checks every
        schedule before any training).  ``options``: the model's own, when it is built."""
        if cls.schedule_fields is not None:
            schedule.require_only(cls.name, *cls.schedule_fields)

    @classmethod
    def default_schedule(cls, schedule: SamplingSchedule, new_positions: int,
                         options: dict | None = None) -> SamplingSchedule:
        """``schedule`` with this model's defaults where the user gave none (esolm sample and
        lm-eval; a sweep runs exactly what its config says).  ``new_positions``: how many
        positions the sampler fills."""
        return schedule

    def cache_capacity(self, length: int) -> int:
        """KV-cache slots per row its sampler allocates at this length (0: none): one per
        position, as a KV-cached left-to-right sampler keeps, unless a model says otherwise."""
        return length

    def __init__(self, backbone: BackboneConfig, special: SpecialTokens):
        super().__init__()
        self.backbone_config = backbone
        self.special = special
        self.net = Transformer(backbone)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        """The training loss, so DistributedDataParallel sees the call through forward()."""
        return self.loss(x0)

    # --- the interface -------------------------------------------------------------
    def loss(self, x0: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def nll(self, x0: torch.Tensor) -> NLL:
        raise NotImplementedError

    def sample(self, n: int, length: int, schedule: SamplingSchedule, generator: torch.Generator | None = None,
               use_cache: bool = True, prefix: torch.Tensor | None = None) -> Generation:
        """``prefix`` (P,) or (n, P) tokens are given at positions [0, P) and the sampler fills
        the rest conditioned on them (``schedule.given_bos``: the prefix is BOS)."""
        raise NotImplementedError

    def sample_log_prob(self, generation: Generation, top_p: float = 1.0) -> SampleLogProb:
        """log p(tokens | order, partition) of each of the model's own samples, under the
        sampler that drew them: Σ over drawn positions of the log-probability the sampler
        gave the drawn token at the moment it was drawn (SUBS applied; given positions
        excluded).  The order and step partition come from ``generation``; their own
        probability does not depend on the weights (a uniform random order, counts drawn
        without the network), so this is the whole weight-dependent part of log p and what a
        policy gradient needs.  Differentiable (run it with gradients enabled).

        top_p < 1: the log of the nucleus-renormalised probability the sampler drew from,
        with the nucleus recomputed from the current weights; its gradient flows through the
        kept logits only (the nucleus set is piecewise constant in the weights).  Give the
        top_p the samples were drawn with.
        """
        raise NotImplementedError(f"{self.name} does not score its own samples (sample_log_prob)")

    def options(self) -> dict:
        """Constructor keyword arguments beyond backbone/special, saved in checkpoints."""
        return {}

    # --- shared helpers ------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.net.head.weight.device

    def check_length(self, length: int) -> None:
        if length > self.backbone_config.max_len:
            raise ValueError(
                f"length {length} exceeds the model's max_len {self.backbone_config.max_len}; "
                f"sample or evaluate at length <= {self.backbone_config.max_len}"
            )
        if length < 2:
            raise ValueError(f"length must be at least 2 (BOS + one token), got {length}")

    def given_prefix(self, n: int, length: int, schedule: SamplingSchedule,
                     prefix: torch.Tensor | None) -> torch.Tensor | None:
        """The tokens given at positions [0, P) as an (n, P) long tensor on the model's device,
        or None when nothing is given (P = 0)."""
        if prefix is None and schedule.given_bos:
            prefix = torch.tensor([self.special.bos])
        if prefix is None:
            return None
        prefix = torch.as_tensor(prefix, dtype=torch.long, device=self.device)
        prefix = prefix.expand(n, -1) if prefix.dim() == 1 else prefix
        if prefix.shape[0] != n or not 0 < prefix.shape[1] < length:
            raise ValueError(f"prefix shape {tuple(prefix.shape)}: give (P,) or ({n}, P) tokens with 0 < P < "
                             f"length {length}")
        if (prefix == self.special.mask).any():
            raise ValueError("prefix contains the [MASK] id: give clean tokens only")
        return prefix

    def subs_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """SUBS parameterisation: a model never predicts [MASK]."""
        logits = logits.clone()
        logits[..., self.special.mask] = float("-inf")
        return logits

    def drawn_log_probs(self, logits: torch.Tensor, tokens: torch.Tensor, top_p: float = 1.0) -> torch.Tensor:
        """log-probability of ``tokens`` (...,) under raw ``logits`` (..., V) as the samplers
        draw: SUBS, float64, nucleus-renormalised when top_p < 1."""
        logits = top_p_filter(self.subs_logits(logits).double(), top_p)
        return logits.log_softmax(-1).gather(-1, tokens[..., None])[..., 0]


def scored_sum(log_probs: torch.Tensor, step: torch.Tensor, scored: torch.Tensor | None = None) -> torch.Tensor:
    """Σ over the drawn positions (step >= 0, and ``scored`` if given) per row; the others,
    possibly −inf under a nucleus, are left out without a NaN."""
    keep = step >= 0 if scored is None else scored & (step >= 0)
    return torch.where(keep, log_probs, torch.zeros((), dtype=log_probs.dtype, device=log_probs.device)).sum(-1)


def _import_plugin(module_name: str):
    """Import a user's model module.  Its code runs like any import; the current directory is
    not searched implicitly (a stray file there must not shadow or inject a model): put the
    package on PYTHONPATH or install it."""
    allowed = {os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    cwd = os.getcwd()
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != cwd or os.path.abspath(p or ".") in allowed]
    try:
        return importlib.import_module(module_name)
    finally:
        sys.path[:] = saved


INTERFACE = ("loss", "nll", "sample")


def registered_classes() -> dict[str, type[LanguageModel]]:
    """Every registry name -> its class (the built-in models, imported)."""
    return {name: resolve_model_class(name) for name in REGISTRY}


def model_class(name: str | None) -> type[LanguageModel] | None:
    """The class of a registry name, or None for anything else (a plug-in path, or no name):
    readers never import a plug-in named in a results or config file just to read its facts."""
    return resolve_model_class(name) if name in REGISTRY else None


def importable_models() -> list[str]:
    """Registry names whose released checkpoints ``esolm import`` reads."""
    return [name for name, cls in registered_classes().items() if cls.importable]


def resolve_model_class(name: str) -> type[LanguageModel]:
    """Registry name or ``package.module:Class`` -> class, with an error naming the fix.

    A dotted path imports (runs) its module first; the class is checked after the import."""
    target = REGISTRY.get(name, name)
    if ":" not in target:
        raise ValueError(f"unknown model {name!r}: use one of {sorted(REGISTRY)} or a dotted path 'package.module:Class'")
    module_name, _, class_name = target.partition(":")
    parts = module_name.split(".")
    if not class_name.isidentifier() or not all(part.isidentifier() for part in parts):
        raise ValueError(f"model {name!r}: a dotted path is 'package.module:Class' (Python identifiers)")
    if name not in REGISTRY and parts[0] in getattr(sys, "stdlib_module_names", ()):
        raise ValueError(f"model {name!r}: {parts[0]!r} is a standard-library module, not a harness.models."
                         "LanguageModel subclass; name your own package.module:Class")
    try:
        module = importlib.import_module(module_name) if name in REGISTRY else _import_plugin(module_name)
        cls = getattr(module, class_name)
    except (ImportError, AttributeError) as err:
        hint = " (the current directory is not searched: add its folder to PYTHONPATH)" \
            if isinstance(err, ImportError) else ""
        raise ValueError(f"cannot load model {name!r} from {target!r}: {err}{hint}") from err
    if not (isinstance(cls, type) and issubclass(cls, LanguageModel)):
        raise ValueError(f"model {name!r} ({target}) is not a harness.models.LanguageModel subclass")
    missing = [m for m in INTERFACE if getattr(cls, m) is getattr(LanguageModel, m)]
    if missing:
        raise ValueError(f"model {name!r} ({target}) must implement {', '.join(INTERFACE)}; it does not "
                         f"override {', '.join(missing)}")
    return cls


def build_model(name: str, backbone: BackboneConfig, special: SpecialTokens, **options) -> LanguageModel:
    cls = resolve_model_class(name)
    try:
        return cls(backbone, special, **options)
    except TypeError as err:
        raise ValueError(f"bad model_args for {name!r}: {err}") from err
