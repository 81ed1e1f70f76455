"""The README's results figures are generated from the committed results (and are current),
and the documentation speaks of the project only."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def figures():
    spec = importlib.util.spec_from_file_location("readme_figures", REPO / "scripts" / "readme_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_figures_match_the_committed_results():
    text = (REPO / "README.md").read_text()
    mod = figures()
    names = re.findall(r"<!-- figures:([A-Za-z0-9_]+) -->", text)
    assert set(names) == set(mod.FIGURES)  # every generator has its place, and each place a generator
    updated, changed = mod.update(text)
    assert not changed, f"README figures out of date: {changed}; run python scripts/readme_figures.py"
    assert updated == text


def test_a_stale_block_is_rewritten_and_reported(tmp_path):
    mod = figures()
    readme = tmp_path / "README.md"
    current = (REPO / "README.md").read_text()
    stale = current.replace("| 8192 | 17.1 | 2.37 | 7.2× |", "| 8192 | 17.1 | 2.37 | 9.9× |")
    assert stale != current
    readme.write_text(stale)
    assert mod.main(["--check", "--readme", str(readme)]) == 1
    assert readme.read_text() == stale  # --check writes nothing
    assert mod.main(["--readme", str(readme)]) == 0 and readme.read_text() == current
    with pytest.raises(ValueError, match="figures:nope has no generator"):
        mod.update("<!-- figures:nope -->\nx\n<!-- /figures:nope -->\n")


PROCESS_WORDS = re.compile(r"(?<![\w/-])#\d+\b|\bsessions?\b|\bleases?\b|\bleased\b", re.I)


def test_docs_speak_of_the_project_only():
    docs = [REPO / "README.md", *sorted((REPO / "results").glob("*/README.md")), *sorted((REPO / "configs").glob("*.yaml"))]
    hits = [f"{p.relative_to(REPO)}:{i}: {m.group(0)}" for p in docs
            for i, line in enumerate(p.read_text().splitlines(), 1) for m in PROCESS_WORDS.finditer(line)]
    assert not hits, hits
