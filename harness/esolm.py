"""Eso-LM (A) and (B) (Sahoo et al., arXiv 2506.01928; docs/models.md §4): masked diffusion fused
with left-to-right AR generation, on the shared trunk.

Generative story (one row):
  1. order: a random subset D of positions in random order (diffusion positions), then the
     other positions left to right (sequential positions).  Tokens are fed in this SORTED
     order; their rotary positions are the original positions.  |D| is random as in the
     papers' sampler (schedule split 'binomial', the default) or round(alpha_0·L) ('fixed').
  2. diffusion phase: a masked diffusion model reveals D in the sorted order, k tokens per
     step, k from the log-linear schedule alpha_t = alpha_0·(1 − (1 − eps)·t);
  3. sequential phase: the remaining positions one per step, left to right.

Training (hybrid NELBO, docs/models.md §4.4), per sequence of length L:
  diffusion term   E_t[ alpha_0(1−eps)/(1−alpha_t) · Σ_{i masked in z_t} −log p(x_i | z_t) ]
  sequential term  E_{z_0}[ Σ_{i masked in z_0} −log p(x_i | clean z_0, x before i in the order) ]
both computed as per-token averages over L on disjoint parts of the batch; ``loss`` is
their sum.  (B) attends causally over the sorted order everywhere, so a clean token's
keys/values never change and are cached in both phases.  (A) lets clean tokens attend to
each other bidirectionally: its diffusion phase recomputes them every step and its
sequential phase caches a bidirectional (prefix-LM) encoding of the diffusion output.

BOS: position 0 is treated like every other position (maskable, scored, generated), as
in the MDLM baseline and the paper's sampler.  So NLLs count ``tokens = L`` (AR counts
L − 1) and sampling generates all L tokens: with alpha_0 = 0 the sampler is left-to-right
AR with NFE = L.  With rotary positions only, a token sees relative offsets, never its
absolute index: the first token of the order cannot know it sits at position 0, so a
sample has BOS there (and EOS at L − 1) only as often as the tokens revealed before it
give that away — far from always for small models (the BD3-LM reference code instead
fixes position 0 to BOS before sampling; AR is always given it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from harness.models import NLL, Generation, LanguageModel, SampleLogProb, scored_sum
from harness.nn import masks
from harness.memory import cache_row_bytes, row_chunk
from harness.nn.steps import bucket, static_steps
from harness.sampling import Drawer
from harness.schedules import LogLinear, SamplingSchedule, antithetic_times, per_sequence_times, shared_stream, uniform

IW_CHUNK = 256  # orders whose log-probabilities are held at once by nll_exact_order


def sort_positions(first: torch.Tensor, generator=None, shuffle_rest: bool = False):
    """Eso-LM's sorted order for a batch.

    first: (B, L) bool, the positions that come first (clean tokens / diffusion positions);
    they are put in a uniformly random order.  The others follow left to right, or in a
    random order too with ``shuffle_rest`` (the masked tokens of the diffusion term).
    Returns (perm, inv): ``perm[b, j]`` is the original position of the token at sorted
    index j — gather tokens with it AND pass it as their rotary positions;
    ``y.gather(1, inv)`` scatters sorted outputs back to original positions.
    """
    B, L = first.shape
    u = uniform((B, L), generator, first.device, torch.float64)
    rest = u if shuffle_rest else torch.arange(L, device=first.device, dtype=torch.float64) / L
    perm = torch.where(first, u, 1 + rest).argsort(dim=1)
    return perm, perm.argsort(dim=1)


class Draws:
    """The sampler's ``pick`` for :meth:`EsoLM.decode`: every chunk's [MASK]-query logits go
    into one :class:`Drawer` per step, in (row, sorted index) order, and are drawn at
    :meth:`finish` — the same tokens however the batch was chunked."""

    def __init__(self, generator, top_p: float):
        self.generator, self.top_p, self.drawer = generator, top_p, None

    def __call__(self, logits: torch.Tensor, start: int, stop: int, rows: slice) -> None:
        if self.drawer is None:
            self.drawer = Drawer(logits.shape[-1], self.generator, self.top_p)
        batch_rows = torch.arange(rows.start, rows.stop, device=logits.device).repeat_interleave(stop - start)
        self.drawer.push(logits.reshape(-1, logits.shape[-1]), batch_rows)

    def finish(self) -> torch.Tensor:
        return self.drawer.finish()


class EsoLM(LanguageModel):
    """Shared machinery; subclasses pick the attention variant."""

    variant = "B"
    caches_diffusion_phase = True
    schedule_fields = ("steps", "alpha_0", "blocks", "split", "stride", "shuffle")
    importable = True

    @classmethod
    def check_schedule(cls, schedule: SamplingSchedule, options: dict | None = None) -> None:
        super().check_schedule(schedule, options)
        alpha_0 = schedule.alpha_0 if schedule.alpha_0 is not None else (options or {}).get("alpha_0")
        schedule.check_diffusion_phase(cls.name, alpha_0)

    @classmethod
    def default_schedule(cls, schedule, new_positions, options=None):
        """T = L for the diffusion phase when it has one and no steps, blocks or stride."""
        alpha_0 = schedule.alpha_0 if schedule.alpha_0 is not None else (options or {}).get("alpha_0", 0)
        if alpha_0 == 0 or any(v is not None for v in (schedule.steps, schedule.blocks, schedule.stride)):
            return schedule
        return schedule.model_copy(update={"steps": new_positions})

    def cache_capacity(self, length: int) -> int:
        return 2 * length  # at most: L + the widest window, padded to a power of two

    def __init__(self, backbone, special, alpha_0: float = 0.25, batch_split: float = 0.5, eps: float = 1e-3):
        super().__init__(backbone, special)
        if not 0.0 <= alpha_0 <= 1.0:
            raise ValueError(f"alpha_0 must be in [0, 1], got {alpha_0}")
        if not 0.0 < batch_split < 1.0:
            raise ValueError(f"batch_split must be in (0, 1), got {batch_split}")
        if not 0.0 < eps < 1.0:
            raise ValueError(f"eps must be in (0, 1), got {eps}")
        self.alpha_0, self.batch_split, self.eps = float(alpha_0), float(batch_split), float(eps)

    def options(self) -> dict:
        return dict(alpha_0=self.alpha_0, batch_split=self.batch_split, eps=self.eps)

    # --- the two network calls every path shares (training, NELBO, reference sampler) ---
    def _diffusion_logits(self, z: torch.Tensor, positions: torch.Tensor, n_clean) -> torch.Tensor:
        """Sorted z (n_clean clean first, then [MASK]s) -> SUBS logits at every sorted index."""
        mask = masks.esolm_diffusion(z.shape[1], n_clean, self.variant, z.device)
        return self.subs_logits(self.net(z, positions, mask))

    def _sequential_logits(self, z: torch.Tensor, x: torch.Tensor, positions: torch.Tensor, n_clean) -> torch.Tensor:
        """z_0 ⊕ x over the sorted order -> SUBS logits of the z half (one per sorted index)."""
        L = z.shape[1]
        mask = masks.esolm_sequential(L, n_clean, self.variant, z.device)
        logits = self.net(torch.cat([z, x], 1), torch.cat([positions, positions], 1), mask)
        return self.subs_logits(logits[:, :L])

    # --- the two NELBO terms, per sequence in nats -------------------------------------
    def diffusion_term(self, x0: torch.Tensor, alpha_0: float, t: torch.Tensor | None = None, generator=None):
        """weight(t) · Σ_{masked} −log p(x_i | z_t); z_t sorted clean-first, each group shuffled."""
        B, L = x0.shape
        schedule = LogLinear(self.eps, alpha_0)
        if t is None:
            t = antithetic_times(B, self.eps, generator, x0.device)
        alpha_t = schedule.alpha(t)
        masked = uniform((B, L), generator, x0.device) >= alpha_t[:, None]
        perm, _ = sort_positions(~masked, generator, shuffle_rest=True)
        masked, x = masked.gather(1, perm), x0.gather(1, perm)
        z = torch.where(masked, self.special.mask, x)
        logits = self._diffusion_logits(z, perm, (~masked).sum(1))
        ce = F.cross_entropy(logits.transpose(1, 2), x, reduction="none")
        return schedule.weight(t) * torch.where(masked, ce, 0.0).sum(1)

    def sequential_term(self, x0: torch.Tensor, alpha_0: float, generator=None):
        """Σ_{masked in z_0} −log p(x_i | ·); z_0 masks each token w.p. 1 − alpha_0, sorted
        clean (random order) then masked (left to right), one forward on z_0 ⊕ x."""
        B, L = x0.shape
        masked = uniform((B, L), generator, x0.device) >= alpha_0
        perm, _ = sort_positions(~masked, generator)
        masked, x = masked.gather(1, perm), x0.gather(1, perm)
        z = torch.where(masked, self.special.mask, x)
        logits = self._sequential_logits(z, x, perm, (~masked).sum(1))
        ce = F.cross_entropy(logits.transpose(1, 2), x, reduction="none")
        return torch.where(masked, ce, 0.0).sum(1)

    def _split(self, B: int):
        """Rows for (diffusion, sequential).  A term that vanishes (alpha_0 ∈ {0, 1}) gets no
        rows; otherwise each term gets at least one row, and a batch of one row trains both."""
        if self.alpha_0 == 0.0:
            return None, slice(0, B)
        if self.alpha_0 == 1.0:
            return slice(0, B), None
        if B == 1:
            return slice(0, 1), slice(0, 1)
        n = min(max(round(self.batch_split * B), 1), B - 1)
        return slice(0, n), slice(n, B)

    def loss(self, x0: torch.Tensor) -> torch.Tensor:
        """Per-token NELBO estimate: mean diffusion term / L + mean sequential term / L."""
        L = x0.shape[1]
        diffusion_rows, sequential_rows = self._split(x0.shape[0])
        total = 0.0
        if diffusion_rows is not None:
            total = total + self.diffusion_term(x0[diffusion_rows], self.alpha_0).mean() / L
        if sequential_rows is not None:
            total = total + self.sequential_term(x0[sequential_rows], self.alpha_0).mean() / L
        return total

    @torch.no_grad()
    def nll(self, x0: torch.Tensor, alpha_0: float | None = None, draws: int = 1, generator=None) -> NLL:
        """NELBO per sequence (an upper bound on −log p(x)) for alpha_0 at evaluation
        (default: the training alpha_0).  Each of ``draws`` draws uses one t per row (stratified
        over that row's draws, as MDLM's) and one z_0 per row; the draws are averaged."""
        a = self.alpha_0 if alpha_0 is None else float(alpha_0)
        B, L = x0.shape
        nats = torch.zeros(B, dtype=torch.float64, device=x0.device)
        for t in per_sequence_times((B,), draws, self.eps, generator, x0.device):  # one draw at a time
            if a > 0:  # with alpha_0 = 0 the weight is 0: the term vanishes exactly
                nats += self.diffusion_term(x0, a, t, generator).double()
            if a < 1:  # with alpha_0 = 1, z_0 = x: nothing is masked
                nats += self.sequential_term(x0, a, generator).double()
        return NLL(nats / draws, tokens=L, exact=False, estimator=f"nelbo(alpha_0={a:g}, draws={draws})")

    # --- exact likelihood under one order (the any-order AR view) -------------------------
    def order_log_prob(self, x0: torch.Tensor, perm: torch.Tensor, n_diff: int) -> torch.Tensor:
        """log p(x | order) when every token is revealed alone, in the order ``perm``.

        (B): ONE forward on [all-MASK] ⊕ x with the sequential-term mask: the [MASK] at
        sorted index j sees exactly the clean tokens before it (x is causal), so the z half
        holds every conditional at once (docs/models.md §4.4).
        (A): the clean diffusion prefix is bidirectional, so a prefix token's representation
        depends on later prefix tokens; the single pass would leak.  The n_diff diffusion
        conditionals each take their own forward (clean prefix both ways + one [MASK]); the
        sequential ones come from one sequential-term forward.
        """
        B, L = x0.shape
        x = x0.gather(1, perm)
        z = torch.full_like(x, self.special.mask)  # z queries see only themselves + x: their z inputs are [MASK]
        first_sequential = 0 if self.variant == "B" else n_diff
        logp = self._sequential_logits(z, x, perm, n_diff).log_softmax(-1)
        logp = logp.gather(-1, x[..., None])[:, first_sequential:, 0].sum(1).double()
        for j in range(first_sequential):
            zj = torch.cat([x[:, :j], z[:, j:j + 1]], 1)
            logits = self._diffusion_logits(zj, perm[:, :j + 1], j)[:, j]
            logp += logits.log_softmax(-1).gather(-1, x[:, j:j + 1])[:, 0].double()
        return logp

    @torch.no_grad()
    def nll_exact_order(self, x0: torch.Tensor, alpha_0: float | None = None, orders: int = 1,
                        generator=None) -> NLL:
        """−log (1/K) Σ_k p(x | order_k) over K orders drawn as the sampler draws them.

        K = 1 is the EXACT NLL of x given the drawn order (exact=True, "exact-order").  The
        model's likelihood marginalises the order, p(x) = E_order p(x | order), so by Jensen
        the single-order NLL over-estimates −log p(x) in expectation; the importance-weighted
        IW-K estimate is tighter for larger K, tends to −log p(x) as K → ∞, and is flagged
        exact=False.  (Here "p(x)" is the sampler revealing one token per step.)
        """
        a = self.alpha_0 if alpha_0 is None else float(alpha_0)
        B, L = x0.shape
        n_diff = round(a * L)
        total = None  # log Σ_k p(x | order_k), a chunk of orders at a time: any K fits in memory
        for start in range(0, orders, IW_CHUNK):
            logp = torch.stack([self.order_log_prob(x0, self.draw_order(B, L, n_diff, generator), n_diff)
                                for _ in range(min(IW_CHUNK, orders - start))])
            part = torch.logsumexp(logp, 0)
            total = part if total is None else torch.logaddexp(total, part)
        nats = -(total - math.log(orders))
        estimator = f"exact-order(alpha_0={a:g})" if orders == 1 else f"iw({orders}, alpha_0={a:g})"
        return NLL(nats, tokens=L, exact=orders == 1, estimator=estimator)

    # --- sampling ------------------------------------------------------------------------
    def draw_order(self, n: int, length: int, n_diff: int, generator=None) -> torch.Tensor:
        """(n, length) sorted order: n_diff uniformly random diffusion positions in random
        order, then the rest left to right (a fresh order per row)."""
        u = uniform((n, length), generator, self.device, torch.float64)
        diffusion = torch.zeros(n, length, dtype=torch.bool, device=self.device)
        diffusion.scatter_(1, u.argsort(1)[:, :n_diff], True)
        return sort_positions(diffusion, generator)[0]

    def reveal_counts(self, free: int, schedule: SamplingSchedule, alpha_0: float, generator=None) -> list[int]:
        """Tokens revealed at each NON-EMPTY diffusion step (empty steps run no forward) when
        ``free`` positions are to be generated; their sum is the number of diffusion positions.

        steps T, split 'binomial' (the papers' sampler): on the grid t_k = 1 − k/T all ``free``
        positions start masked and at each step each still-masked one is revealed with
        probability (alpha_s − alpha_t)/(1 − alpha_t), alpha_t = alpha_0·(1 − (1 − eps)·t); the
        positions never revealed are the sequential ones, so the split is random:
        Binomial(free, 1 − (1 − alpha_0)/(1 − alpha_0·eps)) diffusion positions.  The T
        binomial draws are made at once: a position with uniform u is still masked at t while
        1 − u < (1 − alpha_t)/(1 − alpha_1), which has exactly those conditional reveal
        probabilities (1 − u: with alpha_0 = 1, where both splits have the same law, this is
        the fixed split's draw, number for number).
        steps T, split 'fixed': round(alpha_0·free) diffusion positions, each revealed at a
        step uniform on {0, …, T−1} (given it is still masked at t, a diffusion position is
        revealed by s with probability (alpha_s − alpha_t)/(alpha_0 − alpha_t) = 1/(T − k)).
        blocks: round(alpha_0·free) diffusion positions in ``blocks`` equal chunks.
        ONE count per step is shared by all rows, as in the papers' code, so every forward has
        a fixed shape; rows keep independent orders and tokens.  One read-back to the host.
        With a RowNoise the counts come from its shared stream: the same in every batch.
        """
        generator = shared_stream(generator)
        if schedule.blocks is not None or schedule.diffusion_split() == "fixed":
            n_diff = round(alpha_0 * free)
            if n_diff == 0:
                return []
            if schedule.blocks is not None:
                sizes = [len(chunk) for chunk in torch.arange(n_diff).tensor_split(schedule.blocks)]
                return [k for k in sizes if k]
            u = torch.rand(n_diff, dtype=torch.float64, generator=generator, device=self.device)
            step = (u * schedule.steps).long().clamp_(max=schedule.steps - 1)
            return [k for k in torch.bincount(step, minlength=schedule.steps).tolist() if k]
        T = schedule.steps
        alpha = LogLinear(self.eps, alpha_0).alpha(1 - torch.arange(T + 1, dtype=torch.float64, device=self.device) / T)
        masked = (1 - alpha) / (1 - alpha[0])  # P(still masked at t_k), from 1 down to the sequential share
        u = torch.rand(free, dtype=torch.float64, generator=generator, device=self.device)
        step = (masked[1:] > 1 - u[:, None]).sum(1)  # the step that reveals it; T: never (sequential)
        return [k for k in torch.bincount(step, minlength=T + 1)[:T].tolist() if k]

    def strided_order(self, free: int, schedule: SamplingSchedule, alpha_0: float, generator=None):
        """The official strided schedule (``subcontext_len`` S): the sets {r, r + S, r + 2S, …},
        r = 0 … S − 1 (shuffled within and between sets with ``shuffle``); the first
        alpha_0·S sets are the diffusion phase, one set per step, the rest follows left to right.
        Returns (order (free,), shared by the batch; reveal counts)."""
        S, generator = schedule.stride, shared_stream(generator)
        if free % S:
            raise ValueError(f"{self.name}: schedule field 'stride': {S} does not divide the {free} generated "
                             "positions; pick a divisor")
        sets = torch.arange(free, device=self.device).view(free // S, S).t()  # row r: r, r + S, …
        if schedule.shuffle:
            within = torch.rand(sets.shape, generator=generator, device=self.device).argsort(1)
            between = torch.rand(S, generator=generator, device=self.device).argsort()
            sets = sets.gather(1, within)[between]
        m = round(alpha_0 * S)
        order = torch.cat([sets[:m].flatten(), sets[m:].flatten().sort().values])
        return order, [free // S] * m

    def _window_mask(self, n_new: int, n_cached: int, n_clean: int) -> torch.Tensor:
        """Window of n_clean newly clean tokens + the [MASK] queries, after n_cached cached keys."""
        if self.variant == "B":
            return masks.cached_causal(n_new, n_cached, self.device)
        return masks.cached_prefix_lm(n_new, n_cached, n_clean, self.device)

    def decode(self, order: torch.Tensor, n_diff: int, counts: list[int], pick, use_cache: bool = True,
               prefix: torch.Tensor | None = None):
        """Fill the sorted sequence, ``counts[i]`` tokens at step i (the diffusion counts,
        then 1 per sequential position).  ``pick(logits (r, k, V), start, stop, rows)`` returns
        the tokens of batch ``rows`` (a slice: the batch runs in row chunks within the memory
        budget, harness.memory) for sorted indices [start, stop) — a test can force them —, or
        None when it draws them all at ``pick.finish()`` after the step's last chunk (the
        sampler, :class:`Draws`: its noise then does not depend on the chunking).
        A ``prefix`` (n, P) holds sorted indices [0, P), clean from the start: the first window
        carries it in like tokens revealed at a previous step.  ``n_diff`` counts the clean
        tokens before the sequential phase, prefix included.

        Cached (B), and (A)'s sequential phase: the window is [tokens revealed at the previous
        step (now clean: their K/V are committed)] + [the k [MASK] queries (scratch slots)],
        attending to the cache + within the window; no clean token is ever recomputed.
        (A)'s diffusion phase runs [all clean so far] + [k queries] without a cache.
        Reference (use_cache=False): every step runs the full sorted sequence through the
        very training-time forwards (diffusion-term mask; sequential phase: z_0 ⊕ x).
        Returns (sorted tokens, tokens computed, cache slots read, attention pairs).
        """
        n, L = order.shape
        x = torch.full((n, L), self.special.mask, dtype=torch.long, device=self.device)
        revealed = 0 if prefix is None else prefix.shape[1]
        windows = [a + b for a, b in zip([revealed] + counts, counts)]  # previous step's reveals + this step's
        widest = bucket(max(windows, default=1))
        # Fixed-shape steps pad the window to a power of two: scratch slots past L.
        steps = static_steps(self, n, L + widest) if use_cache else None
        cache = self.net.new_cache(n, L) if use_cache and steps is None else None
        held = cache_row_bytes(self.backbone_config, L + widest, self.net.head.weight.element_size()) * n
        chunk = row_chunk(self, n, widest, L + widest, reserved=held) if use_cache else row_chunk(self, n, 2 * L, 2 * L)
        parts = [slice(i, min(i + chunk, n)) for i in range(0, n, chunk)]
        committed = computed = key_reads = pairs = 0  # sorted indices [0, committed) hold K/V in the cache
        prefix_lm = self.variant == "A"  # (A): the window's clean tokens see each other both ways
        if prefix is not None:
            x[:, :revealed] = prefix
        for k in counts:
            stop = revealed + k
            diffusion = revealed < n_diff
            cached = use_cache and (self.caches_diffusion_phase or not diffusion)
            start = committed if cached else 0
            out = []
            for rows in parts:
                if not use_cache:
                    logits = self._reference_logits(x[rows], order[rows], n_diff, revealed)[:, revealed:stop]
                else:
                    if cached and steps is not None:  # the same window at a fixed shape (a CUDA graph on a GPU)
                        floor = 0 if self.variant == "B" else revealed  # (A): the clean prefix is bidirectional
                        logits = steps.step(x[rows, start:stop], order[rows, start:stop], start, floor, rows)
                    else:
                        mask = self._window_mask(stop - start, start, revealed - start)
                        view = cache.rows(rows) if cached else None  # commits below, once for all rows
                        logits = self.net(x[rows, start:stop], order[rows, start:stop], mask, view)
                    logits = logits[:, revealed - start:]  # the k [MASK] queries
                    logits[..., self.special.mask] = float("-inf")  # SUBS, in place: the forward's own output
                out.append(pick(logits, revealed, stop, rows))
                del logits
            if not use_cache:
                computed += n * L * (1 if diffusion else 2)
                if diffusion:  # the diffusion term's mask over the sorted z_t
                    pairs += n * masks.allowed_pairs(L, 0, revealed if prefix_lm else 0)
                else:  # z_0 ⊕ x: each z query its own slot and the x keys before it; x as in the cache
                    pairs += n * (L + L * (L - 1) // 2 + masks.allowed_pairs(L, 0, n_diff if prefix_lm else 0))
            else:
                pairs += n * masks.allowed_pairs(stop - start, start, revealed - start if prefix_lm else 0)
                if cached and cache is not None:
                    cache.length += revealed - start
                committed = revealed if cached else committed
                computed += n * (stop - start)
                key_reads += n * stop if cached else 0
            x[:, revealed:stop] = pick.finish().view(n, k) if out[0] is None else torch.cat(out)
            revealed = stop
        return x, computed, key_reads, pairs

    def _reference_logits(self, x: torch.Tensor, order: torch.Tensor, n_diff: int, revealed: int):
        """The full sorted sequence (``revealed`` clean tokens first) through the training-time
        forward of the current phase."""
        if revealed < n_diff:
            return self._diffusion_logits(x, order, revealed)
        z = x.clone()
        z[:, n_diff:] = self.special.mask  # z_0: the diffusion output, [MASK] at sequential positions
        return self._sequential_logits(z, x, order, n_diff)

    @torch.no_grad()
    def sample(self, n, length, schedule: SamplingSchedule, generator=None, use_cache=True,
               prefix=None) -> Generation:
        """alpha_0 = schedule.alpha_0 (default: the training one); steps, blocks or stride for
        the diffusion phase.  NFE = non-empty diffusion steps + sequential positions.  A prefix
        (or given_bos) of P tokens comes first in the order, clean; the diffusion and
        sequential phases share the other G = L − P positions exactly as they would share a
        sequence of length G (the binomial draw starts with G masked positions, stride sets
        are taken over G).  extra records the split and its diffusion positions."""
        schedule.require_only(self.name, "steps", "alpha_0", "blocks", "split", "stride", "shuffle")
        self.check_length(length)
        a = self.alpha_0 if schedule.alpha_0 is None else schedule.alpha_0
        schedule.check_diffusion_phase(self.name, a)
        prefix = self.given_prefix(n, length, schedule, prefix)
        given = 0 if prefix is None else prefix.shape[1]
        free = length - given
        if schedule.stride is not None:
            order, counts = self.strided_order(free, schedule, a, generator)
            order = given + order.expand(n, free)
        else:
            counts = self.reveal_counts(free, schedule, a, generator)
            order = given + self.draw_order(n, free, sum(counts), generator)
        n_diff = sum(counts)
        if prefix is not None:
            order = torch.cat([torch.arange(given, device=self.device).expand(n, given), order], 1)
        all_counts = counts + [1] * (free - n_diff)
        draws = Draws(generator, schedule.top_p)
        x, computed, key_reads, pairs = self.decode(order, given + n_diff, all_counts, draws, use_cache, prefix)
        inverse = order.argsort(1)
        tokens = x.gather(1, inverse)
        extra = dict(alpha_0=a, split=schedule.diffusion_split(), diffusion_positions=n_diff, diffusion_steps=len(counts),
                     sequential_steps=free - n_diff, reveal_counts=counts)
        return Generation(tokens, nfe=len(counts) + free - n_diff, tokens_computed=computed, extra=extra,
                          key_reads=key_reads, attention_pairs=pairs,
                          step=self.sorted_steps(all_counts, given, n).gather(1, inverse),
                          order=order)

    def sorted_steps(self, counts: list[int], given: int, n: int) -> torch.Tensor:
        """(n, given + Σ counts): the step of each sorted index (−1 for the given ones), from
        the host-side counts: no device read-back."""
        steps = [-1] * given + [k for k, count in enumerate(counts) for _ in range(count)]
        return torch.tensor(steps, dtype=torch.long).to(self.device).expand(n, -1)

    def sample_log_prob(self, generation: Generation, top_p: float = 1.0) -> SampleLogProb:
        """Exact (see :meth:`LanguageModel.sample_log_prob`), in the sorted order of the sample.

        (B): ONE forward on [all-MASK] ⊕ x under :func:`masks.esolm_steps`: each [MASK] query
        sees the clean tokens of earlier steps and the [MASK]s of its own step before it —
        exactly its window in the cached sampler.
        (A): the clean tokens attend to each other both ways, so their encoding changes with
        every diffusion step: one forward per diffusion step (its clean tokens and its
        [MASK]s), plus one sequential-term forward (the diffusion output as a bidirectional
        prefix) for the whole sequential phase.  Passes: diffusion steps + 1.
        """
        order, step = generation.order, generation.step
        x, s = generation.tokens.gather(1, order), step.gather(1, order)
        n, L = x.shape
        total = torch.zeros(n, dtype=torch.float64, device=x.device)
        if self.variant == "B":
            steps = s[0] if bool((s == s[:1]).all()) else s  # one (2L, 2L) mask when rows share steps
            z = torch.full_like(x, self.special.mask)
            logits = self.net(torch.cat([z, x], 1), torch.cat([order, order], 1), masks.esolm_steps(steps))[:, :L]
            total = total + scored_sum(self.drawn_log_probs(logits, x, top_p), s)
            return SampleLogProb(total, passes=1, tokens_computed=n * 2 * L, exact=True, estimator="exact")
        diffusion_steps = generation.extra["diffusion_steps"]
        for k in range(diffusion_steps):
            clean = s < k
            logits = self._diffusion_logits(torch.where(clean, x, self.special.mask), order, clean.sum(1))
            total = total + scored_sum(self.drawn_log_probs(logits, x, top_p), s, s == k)
        passes, computed = diffusion_steps, diffusion_steps * n * L
        if bool((s >= diffusion_steps).any()):
            clean = s < diffusion_steps
            logits = self._sequential_logits(torch.where(clean, x, self.special.mask), x, order, clean.sum(1))
            total = total + scored_sum(self.drawn_log_probs(logits, x, top_p), s, ~clean)
            passes, computed = passes + 1, computed + n * 2 * L
        return SampleLogProb(total, passes=passes, tokens_computed=computed, exact=True, estimator="exact")


class EsoLMB(EsoLM):
    """Eso-LM (B): causal attention over the sorted order in both phases; KV cache in both."""

    name = "esolm-b"
    display_name = "Eso-LM (B)"
    color = "#d62728"
    variant = "B"
    caches_diffusion_phase = True


class EsoLMA(EsoLM):
    """Eso-LM (A): clean tokens attend bidirectionally, [MASK]s causally; the diffusion phase
    recomputes the clean tokens every step, the sequential phase caches a prefix-LM encoding."""

    name = "esolm-a"
    display_name = "Eso-LM (A)"
    color = "#ff7f0e"
    variant = "A"
    caches_diffusion_phase = False
