"""Metrics: test perplexity, unigram entropy, MAUVE wrapper, speed/NVML telemetry."""

import math
import sys

import numpy as np
import pytest
import torch

from harness.metrics.entropy import (DEGENERATE_ENTROPY_NATS, degenerate_threshold, sample_entropies,
                                     unigram_entropy)
from harness.metrics.likelihood import test_perplexity as perplexity
from harness.metrics.mauve import MAUVE_EXTRA_HINT, mauve_available, mauve_from_features
from harness.metrics.speed import NO_CUDA, NO_PYNVML, GpuTelemetry, open_nvml, time_sampling
from harness.models import Generation
from tests.helpers import VOCAB, random_batch, tiny_model


# --- test perplexity ---------------------------------------------------------------------
def test_perplexity_pools_nats_over_tokens_and_ignores_batching():
    model = tiny_model("ar", max_len=16)
    data = random_batch(5, 16, seed=1)
    direct = model.nll(data).nats.sum().item()
    for batch_size in (1, 2, 5, 8):
        out = perplexity(model, data, batch_size=batch_size)
        assert out["n_sequences"] == 5 and out["n_tokens"] == 5 * 15
        assert out["estimator"] == "exact" and out["exact"] is True
        assert out["nats_total"] == pytest.approx(direct, rel=1e-12)
        assert out["ppl"] == pytest.approx(math.exp(direct / 75), rel=1e-12)
        assert out["nats_per_token"] == pytest.approx(direct / 75, rel=1e-12)


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    model = tiny_model("ar", max_len=16)
    with torch.no_grad():
        model.net.head.weight.zero_()
    out = perplexity(model, random_batch(3, 16), batch_size=2)
    assert out["ppl"] == pytest.approx(VOCAB - 1, rel=1e-12)  # [MASK] excluded (SUBS)


def test_monte_carlo_perplexity_is_seeded_and_leaves_global_rng_alone():
    model = tiny_model("mdlm", max_len=16)
    data = random_batch(4, 16, seed=2)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = perplexity(model, data, batch_size=2, seed=0)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = perplexity(model, data, batch_size=2, seed=0)
    c = perplexity(model, data, batch_size=2, seed=1)
    assert a["ppl"] == b["ppl"] and a["ppl"] != c["ppl"]
    assert a["exact"] is False and a["estimator"] == "nelbo(draws=1)"
    assert a["n_tokens"] == 4 * 16  # MDLM's NELBO covers all L positions
    d = perplexity(model, data, batch_size=4, seed=0, draws=2)
    assert d["estimator"] == "nelbo(draws=2)"


def test_perplexity_rejects_bad_input():
    model = tiny_model("ar", max_len=16)
    with pytest.raises(ValueError, match=r"\(N, L\)"):
        perplexity(model, torch.zeros(16, dtype=torch.long), batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        perplexity(model, random_batch(2, 8), batch_size=0)


# --- entropy -----------------------------------------------------------------------------
def test_unigram_entropy_of_known_distributions():
    assert unigram_entropy([0, 1, 2, 3]) == pytest.approx(math.log(4), abs=1e-15)
    assert unigram_entropy([7, 7, 9, 9]) == pytest.approx(math.log(2), abs=1e-15)
    assert unigram_entropy([5] * 10) == 0.0
    assert unigram_entropy([0, 0, 0, 1]) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), abs=1e-15)
    assert unigram_entropy(range(256)) == pytest.approx(math.log(256), abs=1e-12)
    assert unigram_entropy([]) == 0.0


def test_sample_entropies_mean_list_and_ignored_ids():
    samples = torch.tensor([[48, 0, 1, 2, 3], [48, 5, 5, 6, 6]])
    out = sample_entropies(samples, ignore_ids=[48])
    assert out["entropy_per_sample"] == pytest.approx([math.log(4), math.log(2)], abs=1e-15)
    assert out["entropy_mean"] == pytest.approx((math.log(4) + math.log(2)) / 2, abs=1e-15)
    with_bos = sample_entropies(samples)
    assert with_bos["entropy_per_sample"][0] == pytest.approx(math.log(5), abs=1e-15)
    # lists of different lengths are accepted
    ragged = sample_entropies([[1, 2], [3, 3, 3]])
    assert ragged["entropy_per_sample"] == pytest.approx([math.log(2), 0.0])


def test_degenerate_count_uses_the_last_256_tokens():
    healthy = list(range(300))  # last 256 tokens all distinct: log 256 = 5.55 nats
    collapsed_tail = list(range(44)) + [3] * 256  # diverse start, collapsed tail
    almost = list(range(300 - 256)) + [k % 60 for k in range(256)]  # tail: 60 ids, ~4.09 nats
    out = sample_entropies([healthy, collapsed_tail, almost])
    assert out["degenerate_window"] == 256 and out["degenerate_threshold_nats"] == DEGENERATE_ENTROPY_NATS
    assert unigram_entropy(almost[-256:]) > DEGENERATE_ENTROPY_NATS
    assert out["n_degenerate"] == 1


def test_degenerate_threshold_scales_at_short_lengths():
    assert degenerate_threshold(256) == degenerate_threshold(1024) == 4.0
    assert degenerate_threshold(16) == pytest.approx(2.0)  # 4 * log 16 / log 256
    assert degenerate_threshold(16, scaled=False) == 4.0
    distinct = [list(range(16))]  # log 16 = 2.77 nats: the most a 16-token window can hold
    repeated = [[0, 1, 2, 3] * 4]  # log 4 = 1.39 nats
    assert sample_entropies(distinct)["n_degenerate"] == 0
    assert sample_entropies(distinct, scaled=False)["n_degenerate"] == 1  # the literal rule flags everything at L < 55
    assert sample_entropies(repeated)["n_degenerate"] == 1
    assert sample_entropies([[]])["n_degenerate"] == 1


# --- MAUVE -------------------------------------------------------------------------------
def test_mauve_without_the_extra_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mauve", None)
    out = mauve_from_features(np.zeros((10, 4)), np.zeros((10, 4)))
    assert out["mauve"] is None and out["reason"] == MAUVE_EXTRA_HINT
    assert "install the 'mauve' extra" in out["reason"]


@pytest.mark.skipif(not mauve_available(), reason="mauve-text not installed (optional 'mauve' extra)")
def test_mauve_separates_same_from_shifted_distributions():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(120, 16))
    same = rng.normal(size=(120, 16))
    shifted = rng.normal(size=(120, 16)) + 3.0
    close = mauve_from_features(p, same)
    far = mauve_from_features(p, shifted)
    assert close["num_buckets"] == 12 and close["reason"] is None
    assert close["mauve"] > 0.9
    assert far["mauve"] < 0.2
    assert mauve_from_features(p, same)["mauve"] == close["mauve"]  # seeded
    with pytest.raises(ValueError, match="same width"):
        mauve_from_features(p, rng.normal(size=(10, 3)))


@pytest.mark.skipif(not mauve_available(), reason="mauve-text not installed (optional 'mauve' extra)")
def test_small_sample_mauve_writes_nothing_to_the_terminal_but_other_native_errors_pass(capfd):
    """faiss's k-means warns on the C stderr at every small n (through progress bars and
    --quiet); that one line is held back, anything else native code says still reaches stderr."""
    import ctypes

    from harness.metrics.mauve import quiet_native_stderr

    rng = np.random.default_rng(0)
    capfd.readouterr()
    out = mauve_from_features(rng.normal(size=(16, 8)), rng.normal(size=(48, 8)), num_buckets=2)
    assert out["mauve"] is not None
    assert capfd.readouterr().err == ""
    libc = ctypes.CDLL(None)
    with quiet_native_stderr():
        for line in (b"WARNING clustering 64 points to 2 centroids: please provide at least 78 training points\n",
                     b"something else\n"):
            libc.write(2, line, len(line))
    assert capfd.readouterr().err == "something else\n"


def test_degenerate_mauve_reasons():
    from harness.metrics.mauve import degenerate_reason

    assert degenerate_reason([0.5, 0.5, 0], [0.25, 0.5, 0.25], 32, 48) is None
    assert degenerate_reason([1.0, 0], [0, 1.0], 32, 48) == \
        "no cluster holds both generated and reference texts (a constant score)"
    assert degenerate_reason([0, 1.0, 0], [0.2, 0.5, 0.3], 32, 48) == "all generated texts fall into one of 3 clusters"
    assert degenerate_reason([0.5, 0.5], [1.0, 0], 32, 48) == "all reference texts fall into one of 2 clusters"
    assert degenerate_reason([1 / 32, 31 / 32], [1.0, 0], 32, 48) == \
        "only one generated text shares a cluster with the other side (a near-constant score)"
    assert degenerate_reason([2 / 32, 30 / 32, 0], [0.5, 0.25, 0.25], 32, 48) is None
    assert degenerate_reason([0.5] * 2 + [0] * 8, [0.1] * 10, 16, 48) == \
        "fewer than 2 texts per cluster (16 texts, 10 clusters)"


@pytest.mark.skipif(not mauve_available(), reason="mauve-text not installed (optional 'mauve' extra)")
def test_disjoint_clusters_give_the_constant_mauve_and_are_marked_degenerate():
    """Generated and reference features far apart: 2 clusters, one per side, and MAUVE is the
    constant of disjoint histograms whatever the texts (the smoke run's 0.00407 at L = 32)."""
    from harness.metrics.mauve import DISJOINT_MAUVE, recorded_degenerate

    rng = np.random.default_rng(1)
    axes = np.eye(8)
    for a, b in ((0, 1), (2, 5)):  # two tight groups in different directions: one cluster each
        out = mauve_from_features(axes[a] + 0.01 * rng.normal(size=(32, 8)),
                                  axes[b] + 0.01 * rng.normal(size=(48, 8)), num_buckets=2)
        assert out["mauve"] == DISJOINT_MAUVE
        assert out["degenerate"] == "no cluster holds both generated and reference texts (a constant score)"
    same = mauve_from_features(rng.normal(size=(60, 8)), rng.normal(size=(60, 8)), num_buckets=3)
    assert same["degenerate"] is None and same["mauve"] > 0.5
    # rows written before the flag: recognised by the constant; a recorded None means measured
    assert recorded_degenerate({"mauve": DISJOINT_MAUVE}).startswith("no cluster holds both")
    assert recorded_degenerate({"mauve": DISJOINT_MAUVE, "mauve_degenerate": None}) is None
    assert recorded_degenerate({"mauve": 0.5, "mauve_degenerate": "all generated texts fall into one of 2 clusters"})


# --- speed and telemetry -------------------------------------------------------------------
class FakeClock:
    """Each timed call takes the next duration."""

    def __init__(self, durations):
        self.durations, self.now, self.ticks = list(durations), 0.0, 0

    def __call__(self):
        self.ticks += 1
        if self.ticks % 2 == 0:  # the stop reading of a repeat
            self.now += self.durations.pop(0)
        return self.now


def test_time_sampling_median_per_sample_and_counters():
    calls = []

    def fn():
        calls.append(1)
        return Generation(torch.zeros(4, 10, dtype=torch.long), nfe=9, tokens_computed=36)

    out = time_sampling(fn, warmup=2, repeats=3, clock=FakeClock([3.0, 1.0, 2.0]), dtype=torch.float32)
    assert len(calls) == 5
    assert out["seconds_all"] == [3.0, 1.0, 2.0] and out["seconds_median"] == 2.0
    assert out["batch_size"] == 4 and out["length"] == 10
    assert out["seconds_per_sample"] == 0.5 and out["tokens_per_second"] == 20.0
    assert out["nfe"] == 9 and out["tokens_computed"] == 36
    assert out["dtype"] == "float32" and out["device"] == "cpu" and out["device_name"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_telemetry_degrades_to_none_with_a_reason_without_gpu():
    out = time_sampling(lambda: None, warmup=0, repeats=1, batch_size=2, length=8)
    for key in ("peak_memory_bytes", "energy_joules", "mean_power_watts", "energy_per_sample_joules"):
        assert out[key] is None
    assert out["telemetry_reason"] == NO_CUDA
    assert GpuTelemetry("cuda").reason == NO_CUDA  # asked for a GPU that is not there


def test_nvml_errors_are_caught(monkeypatch):
    # No GPU here (library missing) or no such UUID on a GPU machine: NVMLError either way.
    module, handle, reason = open_nvml("GPU-00000000-0000-0000-0000-000000000000")
    assert module is None and handle is None and reason.startswith("not available")
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert open_nvml("GPU-x") == (None, None, NO_PYNVML)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_telemetry_reports_memory_energy_and_power():
    device = torch.device("cuda")
    x = torch.randn(4096, 4096, device=device)

    def fn():
        for _ in range(20):
            x @ x
        return Generation(torch.zeros(2, 8, dtype=torch.long), nfe=1, tokens_computed=16)

    out = time_sampling(fn, warmup=1, repeats=3, device=device)
    assert out["peak_memory_bytes"] >= x.numel() * 4
    assert out["device_name"] == torch.cuda.get_device_name(device)
    if out["telemetry_reason"] is None:
        assert out["energy_joules"] > 0 and out["mean_power_watts"] > 0


def test_unigram_perplexity_by_hand():
    """train rows (BOS skipped) hold tokens 0,0,1 -> add-one counts (3, 2, 1) over V = 3."""
    from harness.metrics.likelihood import unigram_perplexity

    train = torch.tensor([[2, 0, 0, 1]])
    data = torch.tensor([[2, 0, 1]])
    expected = math.exp(-(math.log(3 / 6) + math.log(2 / 6)) / 2)
    assert unigram_perplexity(train, data, 3) == pytest.approx(expected, rel=1e-12)
