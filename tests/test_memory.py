"""Memory budget (harness.memory): chunking a batch's forwards changes nothing sampled."""

import pytest
import torch

from harness.memory import cache_rows, forward_row_bytes, parse_bytes, row_chunk
from harness.schedules import SamplingSchedule
from tests.helpers import tiny_model

CASES = [
    ("mdlm", {}, SamplingSchedule(steps=8, top_p=0.9)),
    ("mdlm", {}, SamplingSchedule(steps=64)),  # per-row reuse: steps run only some rows
    ("esolm-b", {"alpha_0": 0.5}, SamplingSchedule(alpha_0=1.0, steps=8, top_p=0.9)),
    ("esolm-b", {"alpha_0": 0.5}, SamplingSchedule(alpha_0=0.25, steps=4)),
    ("esolm-a", {"alpha_0": 0.5}, SamplingSchedule(alpha_0=0.5, steps=4)),
]


@pytest.mark.parametrize("mode", ["dynamic", "static"])
@pytest.mark.parametrize("name,options,schedule", CASES)
def test_chunked_forwards_draw_the_same_tokens(name, options, schedule, mode):
    """max_memory so small that one row runs per forward, and a budget of three rows, against
    an unlimited one: identical tokens and work counters for the same seed."""
    model = tiny_model(name, max_len=24, dtype=torch.float32, **options)
    model.step_mode = mode
    n, L = 7, 24
    three_rows = 3 * forward_row_bytes(model.backbone_config, L, L, 4) + 1
    runs = []
    for budget in ("1TB", three_rows, 1):
        model.max_memory = budget
        runs.append(model.sample(n, L, schedule, torch.Generator().manual_seed(3)))
    if name == "mdlm":
        assert [r.extra["row_chunk"] for r in runs] == [n, 3, 1]
    for run in runs[1:]:
        assert torch.equal(run.tokens, runs[0].tokens)
        assert (run.nfe, run.tokens_computed, run.key_reads) == (runs[0].nfe, runs[0].tokens_computed,
                                                                 runs[0].key_reads)


def test_chunk_and_cache_rows_follow_the_budget():
    model = tiny_model("ar", max_len=64, dtype=torch.float32)
    cfg = model.backbone_config
    per_row = forward_row_bytes(cfg, 64, 64, 4)
    model.max_memory = 5 * per_row
    assert row_chunk(model, 100, 64, 64) == 5
    assert row_chunk(model, 3, 64, 64) == 3  # never more rows than the batch
    assert row_chunk(model, 100, 64, 64, reserved=10 * per_row) == 1  # at least one row
    cache_row = 2 * cfg.n_layers * 64 * cfg.d_model * 4
    model.max_memory = forward_row_bytes(cfg, 1, 64, 4) + 7 * cache_row
    assert cache_rows(model, 100, 64, 1) == 7


def test_parse_bytes():
    assert parse_bytes("40GB") == 40 * 10 ** 9
    assert parse_bytes("1.5 GiB") == int(1.5 * 2 ** 30)
    assert parse_bytes(123) == 123
    assert parse_bytes(None) is None and parse_bytes("auto") is None
    for bad in ("lots", "5 parsecs", 0, "-1GB"):
        with pytest.raises(ValueError, match="max_memory"):
            parse_bytes(bad)
