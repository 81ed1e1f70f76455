"""The two offline lm-eval tasks over the bundled corpus's TEST split (the split training
never sees), written as YAML + jsonl into a folder passed to lm-eval as ``include_path``:

- ``esolm_corpus_ppl`` (loglikelihood_rolling): word/byte perplexity and bits per byte of
  whole pieces of test documents;
- ``esolm_corpus_continue`` (generate_until): the first part of a piece is the prompt and
  the model continues it with its own sampler (AR greedy; the diffusion models sample from
  the prompt as a given prefix); scored against the true continuation by chrF and exact
  match.  It is there so generation through lm-eval can be tried on any model offline; at
  the bundled models' size the scores rank samplers, they say little about language.

Only lm-eval's built-in metrics are named, with their aggregation and direction spelled
out (lm-eval warns when a task leaves them to defaults), so nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

TASK_NAME = "esolm_corpus_ppl"
GENERATION_TASK = "esolm_corpus_continue"
TEMPLATES = Path(__file__).resolve().parent / "tasks"
PROMPT_CHARS, TARGET_CHARS = 200, 100  # continuation task: prompt and reference lengths, cut at a space


def corpus_test_documents(n_docs: int = 24, max_chars: int = 2000, seed: int = 0) -> list[dict]:
    """Pieces of the bundled corpus's TEST split.

    Each test document is cut at paragraph boundaries into pieces of at most ``max_chars``
    characters; pieces are taken round-robin across sources so every source is present.
    """
    from harness.data import load_bundled_corpus, split_documents

    test = split_documents(load_bundled_corpus(), seed=seed)["test"]
    per_source: dict[str, list[dict]] = {}
    for doc in test:
        pieces, current = [], ""
        for para in (p.strip() for p in doc.text.split("\n\n")):
            if not para:
                continue
            if current and len(current) + 2 + len(para) > max_chars:
                pieces.append(current)
                current = ""
            current = (current + "\n\n" + para) if current else para[:max_chars]
        if current:
            pieces.append(current)
        for k, text in enumerate(pieces):
            per_source.setdefault(doc.source, []).append({"source": doc.source, "title": f"{doc.title} #{k}",
                                                          "text": text})
    out: list[dict] = []
    sources = sorted(per_source)
    k = 0
    while len(out) < n_docs and any(k < len(per_source[s]) for s in sources):
        out += [per_source[s][k] for s in sources if k < len(per_source[s])]
        k += 1
    return out[:n_docs]


def cut_at_space(text: str, limit: int) -> tuple[str, str]:
    """(head, rest): head is at most ``limit`` characters, ending before a space where one is
    found, so no word is split between prompt and reference."""
    if len(text) <= limit:
        return text, ""
    cut = text.rfind(" ", 0, limit + 1)
    cut = cut if cut > 0 else limit
    return text[:cut], text[cut:]


def continuation_items(docs: list[dict]) -> list[dict]:
    """One prompt/reference pair per piece long enough to have both (paragraph breaks become
    spaces: the generation stops at a blank line)."""
    items = []
    for d in docs:
        flat = " ".join(d["text"].split())
        prompt, rest = cut_at_space(flat, PROMPT_CHARS)
        target = cut_at_space(rest, TARGET_CHARS)[0].strip()
        if prompt and target:
            items.append({"title": d.get("title", ""), "source": d.get("source", ""), "prompt": prompt,
                          "target": target})
    return items


def _write(directory: Path, task: str, rows: list[dict]) -> None:
    data = directory / f"{task}.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    template = (TEMPLATES / f"{task}.yaml.in").read_text(encoding="utf-8")
    (directory / f"{task}.yaml").write_text(template.replace("@DATA_FILE@", json.dumps(str(data))), encoding="utf-8")


def write_lm_eval_task(directory: str | Path, n_docs: int = 24, max_chars: int = 2000, seed: int = 0,
                       documents: list[dict] | None = None) -> Path:
    """Write both tasks (``<task>.yaml`` + ``<task>.jsonl`` each) into ``directory``; returns it.

    The YAML names its jsonl by ABSOLUTE path (lm-eval resolves relative data_files against
    the working directory).  Pass the directory as ``include_path``.
    """
    directory = Path(directory).expanduser().resolve()
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory} is a file; give a folder for the tasks' YAML and data")
    docs = documents if documents is not None else corpus_test_documents(n_docs, max_chars, seed)
    if not docs:
        raise ValueError("no documents to write for the lm-eval tasks")
    directory.mkdir(parents=True, exist_ok=True)
    _write(directory, TASK_NAME, [{"title": d.get("title", ""), "source": d.get("source", ""), "text": d["text"]}
                                  for d in docs])
    _write(directory, GENERATION_TASK, continuation_items(docs))
    return directory
