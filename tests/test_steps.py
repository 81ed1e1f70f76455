"""Fixed-shape sampler steps (harness.nn.steps): the path a CUDA graph replays must give the
plain eager samplers' tokens exactly, keep its cache and graphs across calls, and never read
a value back to the host inside a step loop."""

import shutil

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import harness.esolm as esolm_module
from harness.nn import masks
from harness.nn.steps import StaticSteps, bucket, resolve_mode, static_steps
from harness.schedules import SamplingSchedule
from tests.helpers import SPECIAL, tiny_model

CASES = [
    ("ar", {}, SamplingSchedule(), 3),
    ("mdlm", {}, SamplingSchedule(steps=9), 1),
    ("mdlm", {}, SamplingSchedule(steps=9, top_p=0.9), 3),
    ("bd3lm", {"block_size": 4}, SamplingSchedule(first_hitting=True), 3),
    ("bd3lm", {"block_size": 5}, SamplingSchedule(first_hitting=True), 2),  # padded to 8
    ("bd3lm", {"block_size": 4}, SamplingSchedule(steps=3), 1),
    *[(name, {"alpha_0": 0.5}, SamplingSchedule(steps=steps, alpha_0=a), 3)
      for name in ("esolm-a", "esolm-b") for a in (0.0, 0.25, 0.5, 1.0) for steps in (1, 7)],
    ("esolm-b", {"alpha_0": 0.5}, SamplingSchedule(blocks=3, alpha_0=0.75), 2),
]


def sample(model, mode, n, L, schedule, seed=5):
    model.step_mode = mode
    return model.sample(n, L, schedule, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("name,options,schedule,n", CASES + [("esolm-a", {"alpha_0": 0.5},
                                                             SamplingSchedule(steps=3, given_bos=True), 2)])
def test_attention_pairs_are_what_the_forwards_masks_allow(name, options, schedule, n, use_cache):
    """The floor's attention arithmetic: the counter equals the True entries of every mask the
    eager sampler's forwards ran with, times the rows each ran over."""
    model = tiny_model(name, max_len=40, **options)
    model.step_mode, allowed, forward = "dynamic", [], model.net.forward

    def counting(tokens, positions, mask, cache=None, commit=0):
        allowed.append(int(mask.sum()) * (tokens.shape[0] if mask.dim() == 2 else 1))
        return forward(tokens, positions, mask, cache, commit)

    model.net.forward = counting
    gen = model.sample(n, 40, schedule, torch.Generator().manual_seed(5), use_cache=use_cache)
    assert gen.attention_pairs == sum(allowed) > 0


@pytest.mark.parametrize("name,options,schedule,n", CASES)
def test_static_steps_give_the_dynamic_samplers_tokens_exactly(name, options, schedule, n):
    model = tiny_model(name, max_len=40, **options)
    L = 40
    dynamic = sample(model, "dynamic", n, L, schedule)
    static = sample(model, "static", n, L, schedule)
    assert torch.equal(static.tokens, dynamic.tokens)
    assert (static.tokens != SPECIAL.mask).all()
    assert static.nfe == dynamic.nfe
    assert static.key_reads == dynamic.key_reads  # counted by the algorithm, not the padded shapes
    assert static.attention_pairs == dynamic.attention_pairs
    if n == 1:  # with one row nothing is run for a row that reveals nothing
        assert static.tokens_computed == dynamic.tokens_computed
    again = sample(model, "static", n, L, schedule)  # cache and compiled shapes are reused
    assert torch.equal(again.tokens, dynamic.tokens)


def test_static_mdlm_runs_every_row_when_any_reveals():
    model = tiny_model("mdlm", max_len=40)
    dynamic = sample(model, "dynamic", 3, 40, SamplingSchedule(steps=64))
    static = sample(model, "static", 3, 40, SamplingSchedule(steps=64))
    assert torch.equal(static.tokens, dynamic.tokens)
    assert static.tokens_computed == 3 * 40 * static.nfe > dynamic.tokens_computed
    assert (static.nfe_per_sample == static.nfe).all()


def test_forward_static_matches_the_cached_masks():
    """Causal, whole-block and prefix-LM windows at an offset == the dynamic cached forward."""
    model = tiny_model("ar", max_len=40)
    net = model.net
    x = torch.randint(0, 48, (2, 30), generator=torch.Generator().manual_seed(1))
    pos = torch.randperm(30, generator=torch.Generator().manual_seed(2)).expand(2, 30)
    for start, N, floor, mask in [
        (9, 4, 0, masks.cached_causal(4, 9)),
        (8, 4, 12, torch.ones(4, 12, dtype=torch.bool)),
        (0, 11, 7, masks.cached_prefix_lm(11, 0, 7)),
    ]:
        cache = net.new_cache(2, 30)
        net(x[:, :start], pos[:, :start], masks.causal(start), cache, commit=start) if start else None
        want = net(x[:, start:start + N], pos[:, start:start + N], mask, cache)
        static = net.new_cache(2, 64)
        if start:
            net.forward_static(x[:, :start], pos[:, :start], static, torch.tensor([0]), torch.tensor([0]), keys=64)
        got = net.forward_static(x[:, start:start + N], pos[:, start:start + N], static,
                                 torch.tensor([start]), torch.tensor([floor]), keys=64)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_step_pads_to_power_of_two_and_reuses_shapes():
    model = tiny_model("ar", max_len=40)
    steps = StaticSteps(model.net, batch=1, capacity=80, graph=False)
    x = torch.randint(0, 48, (1, 5))
    out = steps.step(x, torch.arange(5).expand(1, 5), start=0)
    assert out.shape == (1, 5, 50)
    steps.step(x[:, :3], torch.arange(3).expand(1, 3), start=5)
    assert sorted(steps._steps) == [(4, 64), (8, 64)]
    with pytest.raises(ValueError, match="capacity"):
        steps.step(x, torch.arange(5).expand(1, 5), start=75)


def test_bucket_and_mode_resolution(monkeypatch):
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 64, 65)] == [1, 2, 4, 4, 8, 64, 128]
    assert bucket(3, 64) == 64
    cpu = torch.device("cpu")
    monkeypatch.delenv("ESOLM_STEP_MODE", raising=False)
    assert resolve_mode(None, cpu) == "dynamic"
    assert resolve_mode("graph", cpu) == "static"  # no CUDA: the same steps, eagerly
    assert resolve_mode(None, torch.device("cuda")) == "graph"
    assert resolve_mode("compiled", cpu) == "compiled"  # fused, without graphs
    monkeypatch.setenv("ESOLM_STEP_MODE", "static")
    assert resolve_mode("auto", cpu) == "static"
    with pytest.raises(ValueError, match="step_mode"):
        resolve_mode("fast", cpu)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on a CPU needs a C++ compiler")
def test_compiled_steps_write_the_cache_in_place_and_give_the_static_tokens():
    """On a CPU the compiled steps keep every window and key range exact (nothing is padded:
    no graph needs a fixed shape): the fused step's K/V land in the shared cache and its
    logits equal the eager padded step's to float32 tolerance (both compute the rotary
    angles in float32, and inductor's vectorised cos/sin differ in the last bits); an AR
    sample is unchanged."""
    model = tiny_model("ar", max_len=24)
    static = sample(model, "static", 2, 24, SamplingSchedule())
    static_cache = model._static_steps.cache
    compiled = sample(model, "compiled", 2, 24, SamplingSchedule())
    steps = model._static_steps
    assert steps.key[-1] is True and steps.exact and steps._steps == {}  # no padded shape was built
    assert torch.equal(compiled.tokens, static.tokens)
    for layer in range(model.net.cfg.n_layers):  # written in place, not into a functional copy
        torch.testing.assert_close(steps.cache.k[layer], static_cache.k[layer], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(steps.cache.v[layer], static_cache.v[layer], rtol=1e-5, atol=1e-5)
    x, pos = compiled.tokens[:, 5:6], torch.full((2, 1), 5)
    eager = StaticSteps(model.net, batch=2, capacity=24, graph=False)
    eager._cache = static_cache
    torch.testing.assert_close(steps.step(x, pos, start=5), eager.step(x, pos, start=5), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on a CPU needs a C++ compiler")
def test_compiled_exact_windows_in_row_chunks_give_the_dynamic_tokens(monkeypatch):
    """Eso-LM (B) windows of every width, run in two row chunks of the batch (a memory
    budget): the compiled exact-shape steps give the eager sampler's tokens."""
    model = tiny_model("esolm-b", max_len=32, alpha_0=0.5)
    schedule = SamplingSchedule(alpha_0=0.5, steps=4)
    dynamic = sample(model, "dynamic", 4, 32, schedule)
    monkeypatch.setattr(esolm_module, "row_chunk", lambda *args, **kwargs: 2)
    compiled = sample(model, "compiled", 4, 32, schedule)
    assert model._static_steps.exact and sorted(model._static_steps._row_caches) == [(0, 2), (2, 4)]
    assert torch.equal(compiled.tokens, dynamic.tokens)


def test_static_steps_are_kept_per_batch_and_capacity():
    model = tiny_model("ar", max_len=40)
    model.step_mode = "static"
    a = static_steps(model, 2, 40)
    assert static_steps(model, 2, 40) is a
    assert static_steps(model, 3, 40) is not a
    model.step_mode = "dynamic"
    assert static_steps(model, 2, 40) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("name,options,schedule,n", CASES)
def test_cuda_graph_steps_give_the_static_tokens(name, options, schedule, n):
    model = tiny_model(name, max_len=40, dtype=torch.float32, **options).cuda()
    L = 40

    def run(mode):
        model.step_mode = mode
        return model.sample(n, L, schedule, torch.Generator("cuda").manual_seed(5)).tokens

    static = run("static")
    assert torch.equal(run("graph"), static)
    assert torch.equal(run("graph"), static)  # replayed graphs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("name,options,schedule,n", [CASES[0], CASES[3], CASES[9]])
def test_compiled_cuda_graph_steps_give_the_static_tokens(name, options, schedule, n):
    """torch.compile-fused steps captured as CUDA graphs (AR, BD3-LM first hitting, Eso-LM (A)):
    the same tokens as the eager fixed-shape steps, and again when replayed."""
    model = tiny_model(name, max_len=40, **options).cuda()

    def run(mode):
        model.step_mode = mode
        return model.sample(n, 40, schedule, torch.Generator("cuda").manual_seed(5)).tokens

    static = run("static")
    assert torch.equal(run("compiled"), static)
    assert torch.equal(run("compiled"), static)


def test_static_mdlm_across_lengths_and_no_cache_allocated():
    model = tiny_model("mdlm", max_len=40)
    for L in (16, 32, 16):
        dynamic = sample(model, "dynamic", 2, L, SamplingSchedule(steps=5))
        static = sample(model, "static", 2, L, SamplingSchedule(steps=5))
        assert torch.equal(static.tokens, dynamic.tokens)
    assert model._static_steps._cache is None


aten = torch.ops.aten
HOST_READS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
              aten._unique2.default, aten.unique_consecutive.default, aten.repeat_interleave.Tensor}


class ReadBacks(TorchDispatchMode):
    """Records every op that needs a tensor's values on the host — a scalar read (item, bool,
    int), a data-dependent shape (nonzero, boolean-mask indexing, masked_select, unique) — and
    every tolist().  On a GPU each one waits for the queued work, so one per step serialises
    the loop; on CPU they are invisible to a clock but not to the dispatcher."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.reads = []
        tolist = torch.Tensor.tolist

        def counted_tolist(t):
            self.reads.append("tolist")
            return tolist(t)

        monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        bool_index = func is aten.index.Tensor and any(i is not None and i.dtype == torch.bool for i in args[1])
        if func in HOST_READS or bool_index:
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


READ_CASES = [  # (model, options, schedule at L, host read-backs per sample at L)
    ("ar", {}, lambda L: SamplingSchedule(), lambda L: 0),
    ("mdlm", {}, lambda L: SamplingSchedule(steps=L // 2), lambda L: 1),  # the reveal plan
    ("bd3lm", {"block_size": 4}, lambda L: SamplingSchedule(first_hitting=True), lambda L: 0),
    ("bd3lm", {"block_size": 4}, lambda L: SamplingSchedule(steps=3), lambda L: 1),  # every block's plan
    ("esolm-a", {"alpha_0": 0.5}, lambda L: SamplingSchedule(steps=L // 2, alpha_0=0.25), lambda L: 1),
    ("esolm-b", {"alpha_0": 0.5}, lambda L: SamplingSchedule(steps=L // 2, alpha_0=1.0), lambda L: 1),
    ("esolm-b", {"alpha_0": 0.5}, lambda L: SamplingSchedule(blocks=3, alpha_0=0.75), lambda L: 0),
]
READ_IDS = ["ar", "mdlm", "bd3lm-first-hitting", "bd3lm-steps", "esolm-a", "esolm-b", "esolm-b-blocks"]


@pytest.mark.parametrize("mode", ["static", "dynamic"])
@pytest.mark.parametrize("name,options,schedule,reads", READ_CASES, ids=READ_IDS)
def test_step_loops_read_nothing_back_to_the_host(monkeypatch, mode, name, options, schedule, reads):
    """Host read-backs come once per sample (the reveal plan of MDLM and of BD3-LM with T
    steps, Eso-LM's reveal counts), never once per step or block: the counts are exact and do
    not grow with the length or the number of steps."""
    model = tiny_model(name, max_len=32, **options)
    model.step_mode = mode
    seen = ReadBacks(monkeypatch)
    for L in (16, 32):
        seen.reads.clear()
        with seen:
            model.sample(2, L, schedule(L), torch.Generator().manual_seed(0))
        assert len(seen.reads) == reads(L), seen.reads


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA sync debug mode needs a CUDA device")
@pytest.mark.parametrize("name,options,schedule,reads", READ_CASES, ids=READ_IDS)
def test_cuda_graph_step_loops_do_not_synchronise_per_step(name, options, schedule, reads):
    """The same property on the device: in graph mode, the synchronising CUDA calls that
    torch's sync debug mode reports in one sample (graphs already captured) do not grow with
    the length or the number of steps."""
    import warnings

    model = tiny_model(name, max_len=32, dtype=torch.float32, **options).cuda()
    model.step_mode = "graph"
    counts = []
    for L in (16, 32):
        model.sample(2, L, schedule(L), torch.Generator("cuda").manual_seed(0))  # captures this L's graphs
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model.sample(2, L, schedule(L), torch.Generator("cuda").manual_seed(0))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    assert counts[0] == counts[1], counts  # steps and length double between the two
