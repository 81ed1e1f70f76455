"""Noise schedules (training) and sampling schedules (how tokens are revealed).

A :class:`SamplingSchedule` is a small named, serialisable object so a sweep config can
list them (``{steps: 64}``, ``{alpha_0: 0.25, steps: 128}``, ``{blocks: 16}``) and every
result row can carry its label.  Each model reads the fields that apply to it and
rejects the ones that do not (:meth:`SamplingSchedule.require_only`).
"""

from __future__ import annotations

import hashlib
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field


MASK_RATES = ("mdlm", "bd3lms")  # whose repository's log-linear convention (docs/models.md §2)


class LogLinear:
    """alpha_t = scale · (1 − c·t): clean probability at time t ∈ [eps, 1], NELBO weight 1/t at scale 1.

    The repositories differ in c, so each family follows its own (docs/models.md §2):
    ``mask_rate="mdlm"`` (the mdlm and Eso-LMs code) has c = 1 − eps, so a token is masked with
    probability (1 − eps)·t; ``"bd3lms"`` has c = 1, masked with probability t.
    scale = 1 is MDLM's schedule; Eso-LM's diffusion phase uses scale = alpha_0 so that
    at t = 0 only a fraction alpha_0 of positions is clean.
    """

    def __init__(self, eps: float = 1e-3, scale: float = 1.0, mask_rate: str = "mdlm"):
        if mask_rate not in MASK_RATES:
            raise ValueError(f"mask_rate must be one of {list(MASK_RATES)}, got {mask_rate!r}")
        self.eps, self.scale, self.mask_rate = eps, scale, mask_rate
        self.slope = 1 - eps if mask_rate == "mdlm" else 1.0

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self.scale * (1 - self.slope * t)

    def mask_prob(self, t: torch.Tensor) -> torch.Tensor:
        """1 − alpha_t; "bd3lms" computes it as that code does (exactly t at scale 1, not
        1 − (1 − t), which loses digits near t = eps); "mdlm" keeps its arithmetic."""
        if self.mask_rate == "bd3lms":
            return (1 - self.scale) + self.scale * t
        return 1 - self.alpha(t)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """NELBO weight −alpha'_t / (1 − alpha_t) of a masked token's cross-entropy."""
        return self.scale * self.slope / self.mask_prob(t)


def row_seed(seed: int, index: int, draw: int = 0) -> int:
    """The noise seed of one sequence (and draw): a hash, so neighbouring seeds and rows are
    unrelated streams."""
    digest = hashlib.blake2b(f"{seed}:{index}:{draw}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 2**63


class RowNoise:
    """One random stream per row of a batch, passed where a model takes a ``generator``: a
    row's Monte-Carlo draws (times, masks, orders, tokens) then depend on its own seed only,
    never on which batch it sits in, so a test perplexity or a sample is the same at any batch
    size.  ``shared`` is the stream of the few draws a whole batch shares by design (Eso-LM's
    reveal counts, the stride shuffle): seeded apart from the rows, it gives every batch the
    same draw, so those stay batch-independent too."""

    def __init__(self, seeds: list[int], device=None, shared_seed: int = 0):
        self.generators = [torch.Generator(device=device or "cpu").manual_seed(int(s)) for s in seeds]
        self.shared = torch.Generator(device=device or "cpu").manual_seed(int(shared_seed))

    def rand(self, shape, dtype=torch.float32, device=None) -> torch.Tensor:
        if shape[0] != len(self.generators):
            raise ValueError(f"RowNoise holds {len(self.generators)} rows, asked for {shape[0]}")
        return torch.stack([torch.rand(tuple(shape[1:]), generator=g, dtype=dtype, device=device)
                            for g in self.generators])


def shared_stream(generator):
    """The generator for a draw the whole batch shares: a RowNoise's shared stream, else the
    generator itself."""
    return generator.shared if isinstance(generator, RowNoise) else generator


class SampleNoise:
    """Where a run's sampling noise comes from, batch by batch (``batch(start, n)``: the
    generator for samples start … start + n − 1).

    row_noise False: one torch generator runs through every batch, the fastest (one call per
    draw), but a sample's tokens then depend on the batches the run was cut into.
    row_noise True: sample i draws from its own stream, seeded by (seed, i), so its tokens are
    the same at any batch size or memory chunking (one generator call per row per draw).
    """

    def __init__(self, seed: int, row_noise: bool, device=None):
        self.seed, self.row_noise, self.device = int(seed), row_noise, device
        self.generator = None if row_noise else torch.Generator(device=device or "cpu").manual_seed(self.seed)

    def batch(self, start: int, n: int):
        if not self.row_noise:
            return self.generator
        return RowNoise([row_seed(self.seed, i) for i in range(start, start + n)], self.device,
                        shared_seed=row_seed(self.seed, -1))


def uniform(shape, generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
    """U[0, 1) of ``shape`` from a torch generator, the global RNG (None) or a :class:`RowNoise`
    (rows along the first dimension)."""
    if isinstance(generator, RowNoise):
        return generator.rand(tuple(shape), dtype, device)
    return torch.rand(tuple(shape), generator=generator, device=device, dtype=dtype)


def per_sequence_times(shape, draws: int, eps: float, generator=None, device=None):
    """Yields the times t ~ U[eps, 1] of each of ``draws`` draws (``shape``: (rows,) or, for
    BD3-LM's block times, (rows, blocks)), stratified over the draws of each row.

    Unlike :func:`antithetic_times` across the batch, every t here is marginally uniform for
    its own row, so each sequence's NELBO estimate is unbiased on its own (and with a
    :class:`RowNoise`, independent of the batch).  One draw at a time: any number of draws
    runs in the memory of one.
    """
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    u = uniform(shape, generator, device, torch.float64)
    for d in range(draws):
        yield (eps + (1 - eps) * ((u + d / draws) % 1)).float()


def antithetic_times(n: int, eps: float, generator=None, device=None) -> torch.Tensor:
    """n stratified draws of t ~ U[eps, 1] (one uniform offset, n evenly spaced strata)."""
    u = torch.rand(1, generator=generator, device=device)
    t = (u + torch.arange(n, device=device) / n) % 1
    return eps + (1 - eps) * t


SHORT_NAMES = {"steps": "T", "alpha_0": "a0", "blocks": "blocks", "first_hitting": "fh", "top_p": "p",
               "given_bos": "bos", "split": "split", "stride": "stride", "shuffle": "shuffle",
               "block_length": "B", "cache": "cache", "refresh": "refresh", "threshold": "tau", "factor": "f",
               "entropy_bound": "eb", "remdm_eta": "eta", "measure_cache_error": "cerr",
               "row_noise": "rows"}
# every sampler reads these (a sampler without its own cache probe is measured by the harness's
# twin run, harness.unmasking.probe)
COMMON_FIELDS = ["top_p", "given_bos", "measure_cache_error", "row_noise"]
CONFIDENCE_RULES = ("threshold", "factor", "entropy_bound")  # how many positions a step reveals, by confidence
# Field values every label meant before the field existed: left out of labels, so a config that
# pins them keeps the point keys of its committed results (hashes: harness.sweep.identity).
UNLABELLED = {"split": "fixed"}


class SamplingSchedule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int | None = Field(None, ge=1, description="denoising steps T (MDLM; per block for BD3-LM; diffusion phase for Eso-LM)")
    alpha_0: float | None = Field(None, ge=0.0, le=1.0, description="Eso-LM: fraction of positions filled by the diffusion phase")
    blocks: int | None = Field(None, ge=1, description="Eso-LM: reveal the diffusion positions in this many equal chunks")
    first_hitting: bool = Field(False, description="BD3-LM, MDLM: reveal exactly one token per step (MDLM: the "
                                "ancestral sampler's T -> infinity limit, NFE = L)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass (1 = plain sampling)")
    given_bos: bool = Field(False, description="start every sample from BOS at position 0, as AR always does (and "
                            "the BD3-LM reference sampler); otherwise the diffusion samplers generate position 0")
    split: Literal["binomial", "fixed"] | None = Field(
        None, description="Eso-LM with steps: how many positions the diffusion phase fills.  'binomial' (the "
        "default): the papers' sampler, a random count drawn step by step; 'fixed': round(alpha_0·L), this "
        "harness's sampler before the field existed.  blocks and stride always fill a fixed count")
    stride: int | None = Field(None, ge=1, description="Eso-LM: the official strided schedule (subcontext_len S): "
                               "step r reveals the positions {r, r + S, r + 2S, ...}, one order for the whole batch")
    shuffle: bool = Field(False, description="stride: shuffle the order of the sets and the order within each set "
                          "(one draw shared by the batch)")
    # --- the field's decoders beside the exact caches (docs/models.md §2.4) --------------------
    block_length: int | None = Field(None, ge=1, description="MDLM: semi-autoregressive decoding, blocks of this "
                                     "many positions left to right with diffusion inside each (steps: per block)")
    cache: Literal["prefix", "dual"] | None = Field(
        None, description="MDLM with block_length: an approximate cache built at a block's first step and reused "
        "by its later steps.  'prefix': the finished blocks' K/V (a step runs the block and the masked suffix); "
        "'dual': the masked suffix's K/V as well (a step runs only the block)")
    refresh: int | None = Field(None, ge=1, description="cache: rebuild it every this many steps of a block "
                                "(1: every step, the uncached sampler); default: only at a block's first step")
    threshold: float | None = Field(None, gt=0.0, le=1.0, description="MDLM, BD3-LM: confidence-threshold "
                                    "parallel decoding, in place of steps: each step reveals every masked position "
                                    "whose top probability is >= this, and at least the most confident one")
    factor: float | None = Field(None, gt=0.0, description="MDLM, BD3-LM: Fast-dLLM's factor rule, in place of "
                                 "steps: the n most confident positions while the i-th's top probability is >= "
                                 "1 - factor/(i + 1), at least one")
    entropy_bound: float | None = Field(None, ge=0.0, description="MDLM, BD3-LM: the EB sampler, in place of "
                                        "steps: positions in order of confidence while their summed entropy "
                                        "(nats) stays <= this, at least one")
    remdm_eta: float | None = Field(None, ge=0.0, le=1.0, description="MDLM: ReMDM remasking, cap schedule: at "
                                    "each step a revealed token is masked again with probability "
                                    "min(eta, (1 - alpha_s)/alpha_t)")
    measure_cache_error: bool = Field(False, description="re-run cached steps without the cache and record max "
                                      "|delta logit|, mean KL(uncached || cached) over the drawn positions and "
                                      "the fraction of drawn tokens the same noise would change")
    row_noise: bool = Field(False, description="one random stream per sample, seeded by (seed, sample index): a "
                            "sample's tokens do not depend on the batch it ran in, the batch size or the memory "
                            "chunking (Eso-LM's reveal counts and stride shuffle: one draw shared by every sample).  "
                            "Off: one stream through all batches, the fastest at large batches")

    def label(self, written: dict | None = None) -> str:
        """'a0=0.25,T=16': the non-default fields; ``written`` shows some values as the config
        spelled them (length expressions: 'T=L/8')."""
        parts = []
        for key, value in self.model_dump(exclude_defaults=True).items():
            if UNLABELLED.get(key) == value:
                continue
            value = (written or {}).get(key, value)
            short = SHORT_NAMES[key]
            parts.append(f"{short}={value:g}" if isinstance(value, float) else f"{short}={value}")
        return ",".join(parts) or "default"

    def require_only(self, model: str, *allowed: str) -> None:
        used = set(self.model_dump(exclude_defaults=True)) - set(COMMON_FIELDS)
        extra = sorted(used - set(allowed))
        if extra:
            raise ValueError(f"{model} does not use schedule field(s) {extra}; allowed: {sorted(allowed) + COMMON_FIELDS}")

    def confidence_rule(self) -> tuple[str, float] | None:
        """(rule, value) of the one confidence rule given, or None; two are refused by name."""
        given = [(k, getattr(self, k)) for k in CONFIDENCE_RULES if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of schedule fields {list(CONFIDENCE_RULES)}, not {[k for k, _ in given]}")
        return given[0] if given else None

    def check_masked_decoding(self, model: str) -> None:
        """One-line errors for MDLM's and BD3-LM's reveal rules: steps or one confidence rule."""
        rule = self.confidence_rule()
        if rule is not None and self.steps is not None:
            raise ValueError(f"{model}: schedule field {rule[0]!r} decides how many positions each step reveals; "
                             "drop 'steps'")
        if self.refresh is not None and self.cache is None:
            raise ValueError(f"{model}: schedule field 'refresh' rebuilds a cache; add 'cache' (prefix or dual)")
        if self.cache is not None and self.block_length is None:
            raise ValueError(f"{model}: schedule field 'cache' caches the blocks of 'block_length'; add it")
        if self.remdm_eta is not None and (rule is not None or self.block_length is not None or self.steps is None):
            raise ValueError(f"{model}: schedule field 'remdm_eta' remasks on the ancestral grid: give it with 'steps' "
                             "only (no block_length or confidence rule)")

    def check_length(self, length: int) -> None:
        """What a schedule asks of the sequence length (a sweep checks it for every point
        before it runs any)."""
        if self.block_length is not None and length % self.block_length:
            raise ValueError(f"schedule field 'block_length' {self.block_length} does not divide the length {length}; "
                             f"use a block_length that divides it, or a length that is a multiple of {self.block_length}")

    # --- Eso-LM's diffusion phase ---------------------------------------------------------
    def diffusion_split(self) -> str:
        """The split an Eso-LM sampler runs: the one given, else 'binomial' with steps (the
        papers' draw) and 'fixed' with blocks or stride (their sizes are fixed)."""
        if self.split is not None:
            return self.split
        return "binomial" if self.steps is not None else "fixed"

    def check_diffusion_phase(self, model: str, alpha_0: float | None) -> None:
        """One-line errors for an Eso-LM schedule (alpha_0 None: the model's, not known yet)."""
        given = [k for k in ("steps", "blocks", "stride") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"{model}: give one of schedule fields 'steps', 'blocks' or 'stride', not {given}")
        if not given and alpha_0 != 0:
            raise ValueError(f"{model} needs schedule 'steps', 'blocks' or 'stride' for its diffusion phase, "
                             "e.g. {alpha_0: 0.25, steps: 32}")
        if self.split == "binomial" and self.steps is None:
            raise ValueError(f"{model}: schedule field 'split': 'binomial' needs 'steps' (blocks and stride fill a "
                             "fixed count)")
        if self.shuffle and self.stride is None:
            raise ValueError(f"{model}: schedule field 'shuffle' shuffles the sets of 'stride'; add stride: S")
        if self.stride is not None and alpha_0 is not None and abs(alpha_0 * self.stride - round(alpha_0 * self.stride)) > 1e-9:
            raise ValueError(f"{model}: schedule field 'stride': alpha_0 · stride = {alpha_0 * self.stride:g} sets is "
                             "not a whole number; pick a stride that alpha_0 divides into whole sets")
