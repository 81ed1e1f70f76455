"""Noise schedules (training) and sampling schedules (how tokens are revealed).

A :class:`SamplingSchedule` is a small named, serialisable object so a sweep config can
list them (``{steps: 64}``, ``{alpha_0: 0.25, steps: 128}``, ``{blocks: 16}``) and every
result row can carry its label.  Each model reads the fields that apply to it and
rejects the ones that do not (:meth:`SamplingSchedule.require_only`).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field


class LogLinear:
    """alpha_t = scale · (1 − (1 − eps)·t): clean probability at time t ∈ [0, 1].

    scale = 1 is MDLM's schedule; Eso-LM's diffusion phase uses scale = alpha_0 so that
    at t = 0 only a fraction alpha_0 of positions is clean.
    """

    def __init__(self, eps: float = 1e-3, scale: float = 1.0):
        self.eps, self.scale = eps, scale

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self.scale * (1 - (1 - self.eps) * t)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """NELBO weight −alpha'_t / (1 − alpha_t) of a masked token's cross-entropy."""
        return self.scale * (1 - self.eps) / (1 - self.alpha(t))


def antithetic_times(n: int, eps: float, generator=None, device=None) -> torch.Tensor:
    """n stratified draws of t ~ U[eps, 1] (one uniform offset, n evenly spaced strata)."""
    u = torch.rand(1, generator=generator, device=device)
    t = (u + torch.arange(n, device=device) / n) % 1
    return eps + (1 - eps) * t


def antithetic_chunks(n: int, chunk: int, eps: float, generator=None, device=None):
    """:func:`antithetic_times` of n, yielded ``chunk`` at a time (the same numbers), so a
    huge n (e.g. many NELBO draws × rows) never allocates all n at once."""
    u = torch.rand(1, generator=generator, device=device)
    for start in range(0, n, chunk):
        t = (u + torch.arange(start, min(start + chunk, n), device=device) / n) % 1
        yield eps + (1 - eps) * t


SHORT_NAMES = {"steps": "T", "alpha_0": "a0", "blocks": "blocks", "first_hitting": "fh", "top_p": "p",
               "given_bos": "bos"}
COMMON_FIELDS = ["top_p", "given_bos"]  # every sampler reads these


class SamplingSchedule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int | None = Field(None, ge=1, description="denoising steps T (MDLM; per block for BD3-LM; diffusion phase for Eso-LM)")
    alpha_0: float | None = Field(None, ge=0.0, le=1.0, description="Eso-LM: fraction of positions filled by the diffusion phase")
    blocks: int | None = Field(None, ge=1, description="Eso-LM: reveal the diffusion positions in this many equal chunks")
    first_hitting: bool = Field(False, description="BD3-LM: reveal exactly one token per step")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass (1 = plain sampling)")
    given_bos: bool = Field(False, description="start every sample from BOS at position 0, as AR always does (and "
                            "the BD3-LM reference sampler); otherwise the diffusion samplers generate position 0")

    def label(self) -> str:
        parts = []
        for key, value in self.model_dump(exclude_defaults=True).items():
            short = SHORT_NAMES[key]
            parts.append(f"{short}={value:g}" if isinstance(value, float) else f"{short}={value}")
        return ",".join(parts) or "default"

    def require_only(self, model: str, *allowed: str) -> None:
        used = set(self.model_dump(exclude_defaults=True)) - set(COMMON_FIELDS)
        extra = sorted(used - set(allowed))
        if extra:
            raise ValueError(f"{model} does not use schedule field(s) {extra}; allowed: {sorted(allowed) + COMMON_FIELDS}")
