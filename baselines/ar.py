"""Autoregressive baseline (docs/models.md §1): the shared trunk with causal attention.

loss / exact NLL:  −Σ_{i≥1} log p(x_i | x_<i)   (x_0 is the BOS context)
sample:            one token per forward with a real incremental KV cache — each step
                   runs exactly one new query position; NFE = L − 1.
sample_log_prob    one causal pass over the sample: its outputs are the sampler's
                   per-step conditionals (exact).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.models import NLL, Generation, LanguageModel, SampleLogProb, scored_sum
from harness.nn import masks
from harness.nn.steps import static_steps
from harness.sampling import sample_tokens
from harness.schedules import SamplingSchedule


class AR(LanguageModel):
    name = "ar"
    display_name = "AR"
    color = "#333333"
    schedule_fields = ()  # left to right, one token per forward: nothing to schedule
    importable = True
    exact_loss = True

    def next_token_logits(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        positions = torch.arange(n, device=x.device)
        return self.subs_logits(self.net(x, positions, masks.causal(n, x.device)))

    def token_nll(self, x0: torch.Tensor) -> torch.Tensor:
        """(B, L−1) nats of each token given its prefix."""
        logits = self.next_token_logits(x0[:, :-1])
        return F.cross_entropy(logits.transpose(1, 2), x0[:, 1:], reduction="none")

    def loss(self, x0: torch.Tensor) -> torch.Tensor:
        return self.token_nll(x0).mean()

    @torch.no_grad()
    def nll(self, x0: torch.Tensor, draws: int = 1) -> NLL:
        """Exact: ``draws`` (Monte-Carlo draws of the diffusion models' bounds) is accepted so
        that one evaluation protocol serves every model, and ignored — one pass is exact."""
        return NLL(self.token_nll(x0).sum(dim=1), tokens=x0.shape[1] - 1, exact=True, estimator="exact")

    @torch.no_grad()
    def sample(self, n, length, schedule: SamplingSchedule, generator=None, use_cache=True,
               prefix=None) -> Generation:
        """BOS is always given (``schedule.given_bos`` changes nothing); a longer prefix is fed
        one token per forward like the samples, so NFE stays L − 1."""
        schedule.require_only("ar")
        self.check_length(length)
        device = self.device
        tokens = torch.full((n, length), self.special.bos, dtype=torch.long, device=device)
        prefix = self.given_prefix(n, length, schedule, prefix)
        given = 1 if prefix is None else prefix.shape[1]
        if prefix is not None:
            tokens[:, :given] = prefix
        tokens_computed = key_reads = pairs = 0
        steps = static_steps(self, n, length) if use_cache else None
        cache = self.net.new_cache(n, length) if use_cache and steps is None else None
        positions = torch.arange(length, device=device).expand(n, length)
        for i in range(1, length):
            if steps is not None:  # the same step at a fixed shape (a CUDA graph on a GPU)
                window = tokens[:, i - 1 : i]
                logits = steps.step(window, positions[:, i - 1 : i], start=i - 1)
            elif use_cache:
                # Feed only the newest token; its keys/values join the cache.
                window = tokens[:, i - 1 : i]
                logits = self.net(window, torch.tensor([i - 1], device=device), masks.cached_causal(1, i - 1, device),
                                  cache, commit=1)
            else:
                window = tokens[:, :i]
                logits = self.net(window, torch.arange(i, device=device), masks.causal(i, device))
            tokens_computed += window.numel()
            key_reads += n * i if use_cache else 0  # the cached step attends to slots [0, i)
            pairs += n * (masks.allowed_pairs(1, i - 1) if use_cache else masks.allowed_pairs(i))
            if i >= given:
                tokens[:, i] = sample_tokens(self.subs_logits(logits[:, -1]), generator, schedule.top_p)
        step = torch.arange(-1, length - 1, device=device).expand(n, length)
        step = torch.where(step >= given - 1, step, -1)  # position i is drawn at step i − 1 unless given
        return Generation(tokens, nfe=length - 1, tokens_computed=tokens_computed, key_reads=key_reads,
                          attention_pairs=pairs, step=step, order=positions)

    def sample_log_prob(self, generation: Generation, top_p: float = 1.0) -> SampleLogProb:
        """One causal pass: the output at i − 1 is the conditional step i − 1 drew from
        (see :meth:`LanguageModel.sample_log_prob`)."""
        tokens = generation.tokens
        logp = self.drawn_log_probs(self.next_token_logits(tokens[:, :-1]), tokens[:, 1:], top_p)
        return SampleLogProb(scored_sum(logp, generation.step[:, 1:]), passes=1,
                             tokens_computed=tokens[:, :-1].numel(), exact=True, estimator="exact")
