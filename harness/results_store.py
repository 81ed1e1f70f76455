"""The results store: ``<results>/points.jsonl`` and ``<results>/samples/``.

Every reader and writer of sweep results goes through this module (sweep runners, report,
compare, rescore, export), and it imports nothing heavy, so readers never load the runner.

One JSON line per finished point, written in one ``write`` call, flushed and fsync'ed, so
shards appending to the same file never interleave.  A half-written last line left by a
crash is ignored on read and cut off before the next append.  A changed config appends a
new row for the same key: the newest row of a key wins on read (:func:`latest_rows`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

POINTS_FILE = "points.jsonl"
SAMPLES_DIR = "samples"


def safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,-]", "_", key.replace("/", "__"))


def points_path(results: str | Path) -> Path:
    """A points.jsonl file, or a results folder holding one."""
    path = Path(results)
    return path / POINTS_FILE if path.is_dir() or path.suffix != ".jsonl" else path


def results_folder(results: str | Path) -> Path:
    """The folder of a results argument: the folder itself, or the folder of its points file."""
    path = Path(results)
    return path.parent if path.suffix == ".jsonl" and not path.is_dir() else path


def check_output(out: str | Path | None, flag: str, results: tuple = (), files: tuple = ()) -> None:
    """Refuse an output path that would overwrite what the command reads: a file in
    ``files``, or anything inside (or being) one of the ``results`` folders or points files
    (points.jsonl, config.yaml, ceilings.json, samples/).  '-' (stdout) and None pass."""
    if out is None or str(out) == "-":
        return
    target = Path(out).expanduser().resolve()
    for given in results:
        folder = results_folder(given).expanduser().resolve()
        if target == folder or folder in target.parents:
            raise ValueError(f"{flag} {str(out)!r} is inside the results folder {str(results_folder(given))!r} "
                             "this command reads; write it elsewhere (finished results are never overwritten)")
    for given in files:
        if given is not None and str(given) != "-" and target == Path(given).expanduser().resolve():
            raise ValueError(f"{flag} {str(out)!r} is {str(given)!r}, which this command reads; write it elsewhere")


def check_output_file(out: str | Path | None, flag: str) -> None:
    """An output file's folder must exist and the path must not be a folder ('-' passes)."""
    if out is None or str(out) == "-":
        return
    path = Path(out).expanduser()
    if path.is_dir():
        raise ValueError(f"{flag} {str(out)!r} is a folder; give a file path")
    if not path.parent.is_dir():
        raise ValueError(f"{flag} {str(out)!r}: folder {str(path.parent)!r} does not exist; create it or pick another")


def read_points(results: str | Path, strict: bool = False) -> list[dict]:
    """Every row of a points file in order; an unreadable LAST line (a crash mid-write) is ignored."""
    path = points_path(results)
    if not path.is_file():
        if strict:
            raise FileNotFoundError(f"no results file at {str(path)!r}; run 'esolm sweep CONFIG' first or pass "
                                    f"a results folder / points.jsonl")
        return []
    lines = path.read_text().split("\n")
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if all(not rest.strip() for rest in lines[i + 1 :]):
                break  # a half-written last line
            raise ValueError(f"{path}: line {i + 1} is not valid JSON; remove it (finished points are on other lines)")
        if not (isinstance(row, dict) and isinstance(row.get("key"), str) and isinstance(row.get("metrics"), dict)):
            raise ValueError(f"{path}: line {i + 1} is not a sweep's results row (it needs a 'key' string and a "
                             "'metrics' mapping): pass a sweep's results folder (a bench-likelihood folder has its own "
                             "report.md), or fix that line if the file was edited by hand")
        rows.append(row)
    return rows


def latest_rows(rows: list[dict]) -> dict[str, dict]:
    """key -> the newest row of that key (a changed config appends a new row)."""
    out: dict[str, dict] = {}
    for row in rows:
        out.pop(row["key"], None)
        out[row["key"]] = row
    return out


def repair_tail(path: Path) -> None:
    """Cut a half-written last line so the next append starts on a fresh line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    with path.open("r+b") as f:
        f.truncate(cut)
        f.flush()
        os.fsync(f.fileno())


def append_row(path: Path, row: dict) -> None:
    line = (json.dumps(row, sort_keys=False, allow_nan=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write: shards appending to the same file never interleave
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def sample_path(results_dir: str | Path, key: str) -> Path:
    """The saved samples of one point: ``<results>/samples/<safe key>.jsonl``."""
    return Path(results_dir) / SAMPLES_DIR / f"{safe_name(key)}.jsonl"


def read_samples(path: Path) -> list[dict]:
    """Sample records of one samples file (none when the file is missing)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_samples(results_dir: str | Path, key: str, records: list[dict]) -> None:
    write_atomic(sample_path(results_dir, key), "".join(json.dumps(r) + "\n" for r in records))
