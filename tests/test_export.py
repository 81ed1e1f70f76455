"""esolm export: the current row of every point (points.jsonl keeps superseded rows) as CSV or
Parquet."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.export import current_rows, export
from harness.results_store import append_row, read_points

REPO = Path(__file__).resolve().parents[1]


def row(key, gen_ppl, **extra):
    return {"sweep": "demo", "key": key, "config_hash": "h", "schedule_fields": {"steps": 8}, "model": "mdlm",
            "metrics": {"gen_ppl": gen_ppl, "nfe_per_batch": [8, 8], "model": "shadowed", **extra}}


@pytest.fixture
def results(tmp_path):
    path = tmp_path / "demo" / "points.jsonl"
    path.parent.mkdir()
    for r in (row("a", 500.0), row("b", 700.0, mauve=None), row("a", 400.0, mauve=0.5)):  # "a" re-computed
        append_row(path, r)
    return path.parent


def test_only_the_newest_row_of_each_point_with_metrics_as_columns(results):
    rows = current_rows(results)
    assert [(r["key"], r["gen_ppl"]) for r in rows] == [("b", 700.0), ("a", 400.0)]
    assert rows[1]["nfe_per_batch"] == "[8, 8]" and rows[1]["schedule_fields"] == '{"steps": 8}'
    assert rows[1]["model"] == "mdlm" and rows[1]["metric_model"] == "shadowed"  # a clash keeps both


def test_csv_file_and_stdout(results, tmp_path, capsys):
    assert export(results, csv_path=tmp_path / "out.csv") == 2
    with open(tmp_path / "out.csv", newline="") as fh:
        got = list(csv.DictReader(fh))
    assert [(r["key"], float(r["gen_ppl"]), r["mauve"]) for r in got] == [("b", 700.0, ""), ("a", 400.0, "0.5")]
    main(["export", str(results), "--csv", "-"])
    out = capsys.readouterr()
    assert list(csv.DictReader(io.StringIO(out.out)))[1]["key"] == "a"
    assert "2 current rows (one per point)" in out.err


def test_parquet_or_a_one_line_error_without_pyarrow(results, tmp_path, monkeypatch, capsys):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        pq = None
    if pq is not None:
        export(results, parquet_path=tmp_path / "out.parquet")
        table = pq.read_table(tmp_path / "out.parquet").to_pylist()
        assert [(r["key"], r["gen_ppl"], r["mauve"]) for r in table] == [("b", 700.0, None), ("a", 400.0, 0.5)]
        assert [r["nfe_per_batch"] for r in table] == [[8, 8], [8, 8]]  # a native list column, not JSON text
        assert json.loads(table[0]["schedule_fields"]) == {"steps": 8}  # mappings stay JSON text
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(results), "--parquet", str(tmp_path / "x.parquet")])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.count("\n") == 0 and "--parquet needs the pyarrow package" in err
    assert not (tmp_path / "x.parquet").exists()


def test_committed_results_with_superseded_rows(tmp_path):
    """A committed folder with an older row of one point appended before the newer ones."""
    import shutil

    results = tmp_path / "cpu_quality_smollm2"
    shutil.copytree(REPO / "results" / "cpu_quality_smollm2", results)
    lines = (results / "points.jsonl").read_text().splitlines()
    older = json.loads(lines[0])
    older["metrics"]["gen_ppl"] = 1.0  # superseded by the row after it
    (results / "points.jsonl").write_text("\n".join([json.dumps(older)] + lines) + "\n")
    rows = current_rows(results)
    assert len(read_points(results)) > len(rows) == len({r["key"] for r in rows})  # superseded rows are dropped
    newest = {}
    for r in read_points(results):
        newest[r["key"]] = r
    assert all(r["gen_ppl"] == newest[r["key"]]["metrics"]["gen_ppl"] for r in rows)
    assert json.loads(rows[0]["nfe_per_batch"])  # lists stay readable
