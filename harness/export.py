"""``esolm export RESULTS --csv FILE | --parquet FILE``: the current rows as one table.

points.jsonl is append-only: a re-computed or re-scored point appends a new row and the
newest row of a key is the current one (:func:`harness.results_store.latest_rows`), so the
file can hold superseded rows.  The export holds exactly the current rows, one per point,
in the file's order, with the metrics as columns beside the row's fields; a metric named
like a row field becomes ``metric_<name>``.  In CSV, lists and mappings are JSON text; in
Parquet a column of lists is a native list column (where Arrow can type it) and mappings are
JSON text.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from harness.results_store import check_output, check_output_file, latest_rows, read_points


def current_rows(results: str | Path, lists_as_text: bool = True) -> list[dict]:
    """The latest row of every point, metrics flattened into columns; mappings (and lists,
    unless ``lists_as_text`` is False) as JSON text."""
    nested = (list, dict) if lists_as_text else dict
    out = []
    for row in latest_rows(read_points(results, strict=True)).values():
        flat = {k: v for k, v in row.items() if k != "metrics"}
        for k, v in row["metrics"].items():
            flat[f"metric_{k}" if k in flat else k] = v
        out.append({k: json.dumps(v) if isinstance(v, nested) else v for k, v in flat.items()})
    return out


def columns(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for row in rows for k in row))


def write_csv(rows: list[dict], path: str | Path) -> None:
    """CSV of ``rows`` ('-' writes to stdout); a missing value is an empty cell."""
    fh = sys.stdout if str(path) == "-" else open(path, "w", newline="")
    try:
        writer = csv.DictWriter(fh, fieldnames=columns(rows), restval="")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    finally:
        if fh is not sys.stdout:
            fh.close()


def _kind(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, list):
        return "list"
    return "text" if isinstance(value, str) else "other"


def write_parquet(rows: list[dict], path: str | Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError("--parquet needs the pyarrow package; install it (pip install pyarrow) or use --csv") \
            from None
    names = columns(rows)
    table = {}
    for name in names:
        values = [row.get(name) for row in rows]
        kinds = {_kind(v) for v in values if v is not None}
        if kinds == {"list"}:  # a native list column where Arrow can type it, else JSON text
            try:
                table[name] = pa.array(values)
                continue
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                values = [None if v is None else json.dumps(v) for v in values]
        elif len(kinds) > 1 or "other" in kinds:  # a column of mixed types is written as text
            values = [None if v is None else (json.dumps(v) if isinstance(v, list) else str(v)) for v in values]
        table[name] = values
    pq.write_table(pa.table(table), path)


def export(results: str | Path, csv_path: str | Path | None = None, parquet_path: str | Path | None = None) -> int:
    """Write the current rows of RESULTS; returns how many."""
    if (csv_path is None) == (parquet_path is None):
        raise ValueError("give one of --csv FILE or --parquet FILE")
    out, flag = (csv_path, "--csv") if parquet_path is None else (parquet_path, "--parquet")
    check_output(out, flag, results=(results,))
    check_output_file(out, flag)
    rows = current_rows(results, lists_as_text=parquet_path is None)
    if parquet_path is not None:
        write_parquet(rows, parquet_path)
    else:
        write_csv(rows, csv_path)
    return len(rows)
