"""Output paths never destroy what a command reads: every command that writes a file or a
folder refuses one inside a results folder it reads (points.jsonl, config.yaml, samples/),
with one line and exit code 2, and the folder is byte-for-byte what it was.  System errors
on an output path (a folder given as a file, a file given as a folder) are one line too."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def results(tmp_path) -> Path:
    """A copy of the committed smoke results: rows, config and samples."""
    out = tmp_path / "results" / "smoke"
    shutil.copytree(REPO / "results" / "smoke", out)
    return out


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def refused(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def output_commands(res: Path, other: Path) -> list[tuple[str, list[str]]]:
    """(a name, the argv with {out} where the output path goes) for every command that writes
    a file or folder beside reading a results folder."""
    return [
        ("export --csv", ["export", str(res), "--csv", "{out}"]),
        ("export --parquet", ["export", str(res), "--parquet", "{out}"]),
        ("compare --csv (reference)", ["compare", str(res), str(other), "--csv", "{out}"]),
        ("compare --csv (candidate)", ["compare", str(other), str(res), "--csv", "{out}"]),
        ("report --out", ["report", str(res), "--out", "{out}"]),
        ("rescore --out", ["rescore", str(res), "--evaluator", "smollm2", "--out", "{out}"]),
    ]


def targets(res: Path) -> list[Path]:
    """Every file and folder of a results folder, the folder itself and a new name inside it."""
    return [res, res / "points.jsonl", res / "config.yaml", res / "samples", res / "new.csv",
            next((res / "samples").iterdir())]


def test_no_command_writes_inside_a_results_folder_it_reads(results, tmp_path, capsys):
    """The property over every command with an output path and every place in the folder:
    `export RES --csv RES/points.jsonl` used to replace the rows with CSV and exit 0, and
    `compare REF CAND --csv REF/points.jsonl` printed PASS, then overwrote the reference."""
    other = tmp_path / "other"
    shutil.copytree(results, other)
    before = snapshot(results)
    for name, argv in output_commands(results, other):
        for target in targets(results):
            line = refused(capsys, [a.replace("{out}", str(target)) for a in argv])
            assert line.startswith("esolm: error: --") and "inside the results folder" in line, (name, line)
            assert snapshot(results) == before, (name, target)


def test_the_same_outputs_elsewhere_are_written(results, tmp_path, capsys):
    """The guard refuses only paths inside what is read: beside it, each command writes."""
    main(["export", str(results), "--csv", str(tmp_path / "rows.csv")])
    main(["export", str(results / "points.jsonl"), "--csv", str(tmp_path / "rows2.csv")])
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(results), str(results), "--csv", str(tmp_path / "cmp.csv")])
    assert exit_info.value.code == 0
    assert (tmp_path / "rows.csv").read_text() == (tmp_path / "rows2.csv").read_text()
    assert (tmp_path / "cmp.csv").read_text().startswith("point,point_status,metric")


def test_the_tolerance_file_is_not_a_csv_target(results, tmp_path, capsys):
    tol = tmp_path / "tol.yaml"
    tol.write_text("gen_ppl: {rel: 0.1}\n")
    line = refused(capsys, ["compare", str(results), str(results), "--tolerances", str(tol), "--csv", str(tol)])
    assert "is " in line and "which this command reads" in line and tol.read_text() == "gen_ppl: {rel: 0.1}\n"


def test_a_sweep_report_into_its_own_results_is_refused_before_any_work(tmp_path, capsys):
    """--reports equal to --results would put report.md and the plots in the results folder."""
    line = refused(capsys, ["sweep", str(REPO / "configs" / "smoke.yaml"), "--results", str(tmp_path / "r"),
                            "--reports", str(tmp_path / "r"), "--quiet"])
    assert line.startswith("esolm: error: --reports") and "inside the results folder" in line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv, fragment", [
    (["export", "{res}", "--csv", "{tmp}/missing/rows.csv"], "--csv '{tmp}/missing/rows.csv': folder "),
    (["export", "{res}", "--csv", "{tmp}"], "--csv '{tmp}' is a folder; give a file path"),
    (["export", "{res}", "--parquet", "{tmp}/file.txt/rows.parquet"], "--parquet '{tmp}/file.txt/rows.parquet': "),
    (["compare", "{res}", "{res}", "--csv", "{tmp}"], "--csv '{tmp}' is a folder"),
    (["report", "{res}", "--out", "{tmp}/file.txt/report"], "{tmp}/file.txt/report: "),
    (["rescore", "{res}", "--evaluator", "smollm2", "--out", "{tmp}/file.txt"], "--out '{tmp}/file.txt' is a file; give a folder"),
])
def test_unusable_output_paths_are_one_line(results, tmp_path, capsys, argv, fragment):
    """A folder as --csv, a file as a folder: these raised IsADirectoryError, FileExistsError
    or NotADirectoryError as tracebacks."""
    (tmp_path / "file.txt").write_text("x")
    fill = {"res": str(results), "tmp": str(tmp_path)}
    line = refused(capsys, [a.format(**fill) for a in argv])
    assert fragment.format(**fill) in line, line


def test_an_os_error_names_the_path(results, tmp_path, capsys, monkeypatch):
    """A read-only folder (here simulated: tests run as root) raised PermissionError."""
    import harness.export as export

    def read_only(rows, path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(export, "write_csv", read_only)
    line = refused(capsys, ["export", str(results), "--csv", str(tmp_path / "rows.csv")])
    assert line == f"esolm: error: {tmp_path / 'rows.csv'}: Permission denied; check the path (a file, not a " \
                   "folder, in a folder you can write)"


def test_export_into_a_closed_pipe_exits_quietly(results):
    """`esolm export RES --csv - | head -1` raised BrokenPipeError.  The rows are copied under
    new keys until the CSV is well past a pipe's buffer, so the reader leaves mid-write."""
    import json

    rows = [json.loads(line) for line in (results / "points.jsonl").read_text().splitlines()]
    with open(results / "points.jsonl", "a") as fh:
        for i in range(40):
            fh.writelines(json.dumps({**row, "key": f"{row['key']}/copy{i}"}) + "\n" for row in rows)
    proc = subprocess.run(f"{sys.executable} -m harness.cli export {results} --csv - | head -c 10; "
                          "exit ${PIPESTATUS[0]}", shell=True, executable="/bin/bash", capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert len(proc.stdout) == 10 and proc.stderr == "" and proc.returncode == 0, proc.stderr


def test_a_tolerance_file_that_is_not_utf8_is_named(results, tmp_path, capsys):
    tol = tmp_path / "tol.yaml"
    tol.write_bytes("gen_ppl: {rel: 0.1}\n".encode("utf-16"))
    line = refused(capsys, ["compare", str(results), str(results), "--tolerances", str(tol)])
    assert line == f"esolm: error: --tolerances {str(tol)!r} is not UTF-8 text; save it as UTF-8 YAML"
