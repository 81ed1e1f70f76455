"""The documentation the code cites lives in docs/: every citation of a docs page (and of a
numbered section of it) resolves, no code cites documents outside the repository, and the
guide's example model runs."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
TEXT_SUFFIXES = {".py", ".sh", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg"}

# A citation: the path of a docs page, optionally followed (after a closing backquote, in
# Markdown) by a section number.
CITATION = re.compile(r"docs/([\w-]+\.md)`?(?:\s*§\s*(\d+(?:\.\d+)*))?")
# Documents that are not part of the repository, and tracker numbers.
OUTSIDE = re.compile(r"\bSPEC(?:\s*§|\.md\b)|(?<![\w/.-])(?:PERF|CHECKPOINTS|DATA|ARCHITECTURE)\.md\b"
                     r"|\b[Ii]ssue\s*#\s*\d+")
PROCESS_WORDS = re.compile(r"(?<![\w/-])#\d+\b|\bsessions?\b|\bleases?\b|\bleased\b", re.I)


def text_files(*roots: str):
    for root in roots:
        path = REPO / root
        if path.is_file():
            yield path
            continue
        for file in sorted(path.rglob("*")):
            if file.is_file() and file.suffix in TEXT_SUFFIXES and "assets" not in file.relative_to(REPO).parts:
                yield file


def lines(path: Path):
    yield from enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)


def section_numbers(page: Path) -> set[str]:
    """The numbers headings start with: '## 4. Eso-LM' -> '4', '### 4.4 Training' -> '4.4'."""
    numbers = set()
    for _, line in lines(page):
        match = re.match(r"#{1,6}\s+§?(\d+(?:\.\d+)*)\.?(?:\s|$)", line)
        if match:
            numbers.add(match.group(1))
    return numbers


def test_every_docs_citation_points_at_a_page_and_section_that_exist():
    pages = {p.name: section_numbers(p) for p in DOCS.glob("*.md")}
    bad, seen = [], 0
    for path in text_files("harness", "baselines", "scripts", "tests", "configs", "docs", "README.md"):
        for i, line in lines(path):
            for match in CITATION.finditer(line):
                seen += 1
                page, section = match.groups()
                where = f"{path.relative_to(REPO)}:{i}: {match.group(0)}"
                if page not in pages:
                    bad.append(f"{where}: no docs/{page}")
                elif section is not None and section not in pages[page]:
                    bad.append(f"{where}: docs/{page} has no heading numbered {section}")
    assert seen, "no docs citation found at all: the pattern is broken"
    assert not bad, "\n".join(bad)


def test_links_between_docs_pages_resolve():
    bad = []
    for page in sorted(DOCS.glob("*.md")):
        for i, line in lines(page):
            for target in re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", line):
                if "://" not in target and not (page.parent / target).exists():
                    bad.append(f"{page.relative_to(REPO)}:{i}: {target}")
    assert not bad, bad


def test_code_cites_no_document_outside_the_repository():
    hits = [f"{path.relative_to(REPO)}:{i}: {match.group(0)}"
            for path in text_files("harness", "baselines", "scripts", "docs")
            for i, line in lines(path) for match in OUTSIDE.finditer(line)]
    assert not hits, hits


def test_docs_speak_of_the_project_only():
    hits = [f"{path.relative_to(REPO)}:{i}: {match.group(0)}" for path in sorted(DOCS.glob("*.md"))
            for i, line in lines(path) for match in PROCESS_WORDS.finditer(line)]
    assert not hits, hits


def test_the_guide_example_model_trains_scores_and_samples(tmp_path, monkeypatch):
    """docs/adding_a_model.md's example, written to a package and named by dotted path."""
    from harness.models import SpecialTokens, build_model
    from harness.nn.transformer import BackboneConfig
    from harness.schedules import SamplingSchedule

    code = re.search(r"```python\n(.*?)```", (DOCS / "adding_a_model.md").read_text(), re.S).group(1)
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "plain.py").write_text(code)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("mypkg", "mypkg.plain"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    try:
        torch.manual_seed(0)
        model = build_model("mypkg.plain:PlainCausal", BackboneConfig(vocab_size=50, max_len=16),
                            SpecialTokens(bos=48, eos=48, mask=49))
        x = torch.randint(0, 48, (4, 16))
        x[:, 0] = 48
        model.loss(x).backward()
        nll = model.nll(x)
        assert nll.exact and nll.nats.shape == (4,) and nll.tokens == 15
        gen = model.sample(3, 16, SamplingSchedule(top_p=0.9), torch.Generator().manual_seed(0))
        assert gen.tokens.shape == (3, 16) and gen.nfe == 15 and not (gen.tokens == 49).any()
    finally:
        for name in ("mypkg.plain", "mypkg"):
            sys.modules.pop(name, None)
