"""The results figures of results/README.md are generated from the committed results (and are
current), the top-level README keeps none of its own, and the documentation speaks of the
project only."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS_README = REPO / "results" / "README.md"
BLOCK = r"<!-- figures:([A-Za-z0-9_]+) -->"


def figures():
    spec = importlib.util.spec_from_file_location("readme_figures", REPO / "scripts" / "readme_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_readme_figures_match_the_committed_results():
    text = RESULTS_README.read_text()
    mod = figures()
    assert mod.README == RESULTS_README  # the file the script writes by default
    names = re.findall(BLOCK, text)
    assert sorted(names) == sorted(mod.FIGURES)  # every generator has one place, and each place a generator
    updated, changed = mod.update(text)
    assert not changed, f"results/README.md figures out of date: {changed}; run python scripts/readme_figures.py"
    assert updated == text
    assert mod.main(["--check"]) == 0


def test_the_top_level_readme_keeps_no_figures_and_links_the_results():
    """Its tables moved to results/README.md: a block left here would never be checked."""
    text = (REPO / "README.md").read_text()
    assert not re.findall(BLOCK, text) and "figures:" not in text
    assert "(results/README.md)" in text


def test_a_stale_block_is_rewritten_and_reported(tmp_path):
    mod = figures()
    readme = tmp_path / "README.md"
    current = RESULTS_README.read_text()
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
    docs = [REPO / "README.md", RESULTS_README, *sorted((REPO / "results").glob("*/README.md")),
            *sorted((REPO / "configs").glob("*.yaml"))]
    hits = [f"{p.relative_to(REPO)}:{i}: {m.group(0)}" for p in docs
            for i, line in enumerate(p.read_text().splitlines(), 1) for m in PROCESS_WORDS.finditer(line)]
    assert not hits, hits


def test_readme_links_resolve():
    """Relative links of README.md and results/README.md (whose links are relative to results/)."""
    bad = []
    for page in (REPO / "README.md", RESULTS_README):
        for i, line in enumerate(page.read_text().splitlines(), 1):
            for target in re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", line):
                if "://" not in target and not (page.parent / target).exists():
                    bad.append(f"{page.relative_to(REPO)}:{i}: {target}")
    assert not bad, bad
