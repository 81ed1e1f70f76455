"""The results row is defined once (harness/results_row.py): a sweep writes exactly its
fields, and a writer that forgets or invents one is stopped where it builds the row."""

from __future__ import annotations

import json

import pytest
import yaml

from harness.results_row import OPTIONAL_FIELDS, ROW_FIELDS, make_row
from harness.sweep import run_sweep


def test_make_row_refuses_a_missing_or_unknown_field_and_keeps_the_listed_order():
    fields = {name: i for i, name in enumerate(reversed(list(ROW_FIELDS)))}
    assert list(make_row(**fields)) == list(ROW_FIELDS)
    without_cost = {k: v for k, v in fields.items() if k not in OPTIONAL_FIELDS}
    assert list(make_row(**without_cost)) == [k for k in ROW_FIELDS if k not in OPTIONAL_FIELDS]
    with pytest.raises(ValueError, match=r"unknown fields \['colour'\]"):
        make_row(**fields, colour="red")
    with pytest.raises(ValueError, match=r"missing fields \['metrics'\]"):
        make_row(**{k: v for k, v in fields.items() if k != "metrics"})


def test_a_sweep_row_holds_exactly_the_listed_fields(tmp_path):
    cfg = {"name": "t", "lengths": [16], "num_samples": 2, "batch_size": 2, "seeds": [0], "device": "cpu",
           "metrics": ["entropy"], "runs_dir": str(tmp_path / "runs"),
           "models": [{"name": "ar", "init": "random",
                       "train": {"model": "ar", "backbone": {"preset": "tiny"}, "data": {"seq_len": 16}}}]}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = run_sweep(path, results_root=tmp_path / "results", report=False, progress=False)
    (row,) = [json.loads(line) for line in (out / "points.jsonl").read_text().splitlines()]
    assert list(row) == list(ROW_FIELDS)  # the trunk's forward-cost fields included, in order
    assert row["init"] == "random" and row["metrics"]["nfe_per_sample"] == 15
