"""Re-score a finished sweep's saved samples with another evaluator (``esolm rescore``).

GPU sweeps often run where the SmolLM2 evaluator cannot be shipped, so they score
generative perplexity with the sweep's own AR model.  This reads ``RESULTS_DIR/samples/``
and writes a copy of the results folder (default ``RESULTS_DIR_<evaluator slug>``) whose
rows carry gen_ppl (and, with ``mauve=True``, MAUVE) under the new evaluator; every other
field (speed, test_ppl, entropy, ...) is copied unchanged.  RESULTS_DIR is never written.

The output is resumable: keys already re-scored there with the same evaluator, from the
same source row (its timestamp), are skipped and new rows are appended (the newest row of a
key wins on read, as in reports).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

from harness import results_store as store
from harness.config import ConfigError, resolve_device
from harness.data import test_texts
from harness.sweep.schema import entry_train_config, load_sweep_config

NO_SAMPLES = "no saved samples"


def evaluator_slug(spec: str) -> str:
    """Short folder suffix for an evaluator spec: 'smollm2', 'hf:/m/gpt2-large' -> 'gpt2-large',
    'ar:/runs/s/ar/checkpoint.pt' -> 'ar-ar'."""
    kind, sep, rest = spec.strip().partition(":")
    if not sep:
        name = spec.strip()
    else:
        path = Path(rest.strip())
        name = path.parent.name if path.suffix == ".pt" else path.name
        if kind.lower() == "ar":
            name = f"ar-{name}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip("_.") or "rescored"


class References:
    """Held-out test texts per (entry, length, n), from the entry's own data and tokenizer.

    The sweep's checkpoints are usually not on this machine, so trained and random-init
    entries rebuild their tokenizer from the train block (the tokenizer is a function of
    the data spec); checkpoint entries need their checkpoint file."""

    def __init__(self, results_dir: Path):
        path = results_dir / "config.yaml"
        if not path.is_file():
            raise ConfigError(f"--mauve: {str(path)!r} is missing; MAUVE needs the sweep config for the reference texts")
        self.cfg = load_sweep_config(path)
        self._data: dict[str, tuple] = {}
        self._tokenizers: dict[str, object] = {}  # a BPE takes seconds to train; entries usually share one

    def _entry_data(self, name: str):
        if name not in self._data:
            entry = next((m for m in self.cfg.models if m.name == name), None)
            if entry is None:
                raise ValueError(f"entry {name!r} is not in the saved config.yaml")
            if entry.train is not None:
                from harness.data import build_tokenizer

                spec = entry_train_config(self.cfg, entry).data
                key = spec.model_dump_json(exclude={"seq_len"})
                if key not in self._tokenizers:
                    self._tokenizers[key] = build_tokenizer(spec)
                self._data[name] = (spec, self._tokenizers[key])
            else:
                from harness.checkpoints.own_format import load_checkpoint
                from harness.config import DataSpec

                from harness.checkpoints.own_format import foreign_source

                path = entry.checkpoint  # a released file was imported into the sweep's run folder
                path = Path(self.cfg.runs_dir) / self.cfg.name / entry.name if foreign_source(path) else path
                ck = load_checkpoint(path, device="cpu")
                self._data[name] = (DataSpec(**ck.config["data"]), ck.tokenizer)
        return self._data[name]

    def texts(self, name: str, length: int, n: int) -> list[str]:
        """Same texts as :func:`harness.sweep.reference_texts` for that entry."""
        return test_texts(*self._entry_data(name), length, n)


def _command(results_dir, spec, out_dir, mauve, reference_samples) -> str:
    parts = ["esolm rescore", str(results_dir), "--evaluator", spec]
    if out_dir:
        parts += ["--out", str(out_dir)]
    if mauve:
        parts.append("--mauve")
    if reference_samples:
        parts += ["--reference-samples", str(reference_samples)]
    return " ".join(parts)


def rescore(results_dir, evaluator_spec: str, out_dir=None, mauve: bool = False, reference_samples: int | None = None,
            device: str = "cpu", progress: bool = True) -> Path:
    """Write a re-scored copy of ``results_dir``; returns the output folder."""
    from harness.evaluators import get_evaluator

    results_dir = Path(results_dir)
    if results_dir.name == store.POINTS_FILE and results_dir.is_file():  # as compare and report accept
        results_dir = results_dir.parent
    if not (results_dir / store.POINTS_FILE).is_file():
        raise ConfigError(f"RESULTS_DIR {str(results_dir)!r} has no {store.POINTS_FILE}; pass a sweep results folder")
    command = _command(results_dir, evaluator_spec, out_dir, mauve, reference_samples)
    out_dir = Path(out_dir) if out_dir else results_dir.with_name(f"{results_dir.name}_{evaluator_slug(evaluator_spec)}")
    store.check_output(out_dir, "--out", results=(results_dir,))
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {str(out_dir)!r} is a file; give a folder (new, or an earlier rescore's)")
    if reference_samples is not None and reference_samples < 2:
        raise ConfigError(f"--reference-samples {reference_samples}: MAUVE needs at least 2; raise it")
    dev = resolve_device(device, "--device")
    refs = References(results_dir) if mauve else None
    try:
        evaluator = get_evaluator(evaluator_spec, device=dev)
    except (ValueError, ImportError, FileNotFoundError) as err:
        raise ConfigError(f"--evaluator {evaluator_spec!r}: {str(err).splitlines()[0]}") from err

    rows = list(store.latest_rows(store.read_points(results_dir)).values())
    saved = {r["key"]: store.read_samples(store.sample_path(results_dir, r["key"])) for r in rows}
    if not any(saved.values()):
        raise ConfigError(f"RESULTS_DIR {str(results_dir)!r} has no saved samples in {store.SAMPLES_DIR}/; re-run its "
                          "sweep with save_samples: null (every text) or a count, then rescore")
    out_points = out_dir / store.POINTS_FILE
    foreign = [r["key"] for r in store.read_points(out_points) if "rescore_evaluator" not in r["metrics"]]
    if foreign:
        raise ConfigError(f"--out {str(out_dir)!r} holds results that are not a rescore ({foreign[0]!r} and "
                          f"{len(foreign) - 1} more); rescore never overwrites a sweep's results, pick another folder")
    unsaved = [k for k, records in saved.items() if not records]
    partial = [r["key"] for r in rows if 0 < len(saved[r["key"]]) < int(r.get("num_samples") or 0)]
    if unsaved:
        print(f"rescore: {len(unsaved)} of {len(rows)} points have no saved samples and keep their old gen PPL "
              f"(e.g. {unsaved[0]})", file=sys.stderr)
    if partial:
        print(f"rescore: {len(partial)} points are scored on fewer texts than the sweep drew (save_samples); "
              "gen_ppl_samples in each row gives the count", file=sys.stderr)
    out_dir.mkdir(parents=True, exist_ok=True)
    store.repair_tail(out_points)
    # A point is done when this evaluator scored the source row it has now: a point the sweep
    # has re-run since (a newer timestamp, e.g. after a sampler change) is scored again.
    source_time = {r["key"]: r.get("timestamp") for r in rows}
    done = {r["key"] for r in store.read_points(out_points)
            if r.get("metrics", {}).get("rescore_evaluator") == evaluator.name
            and r.get("timestamp") == source_time.get(r["key"])
            and (r["metrics"].get("rescore_mauve") or not mauve or r["metrics"].get("rescore_note") == NO_SAMPLES)}
    if (results_dir / "config.yaml").is_file():
        shutil.copyfile(results_dir / "config.yaml", out_dir / "config.yaml")
    readme = out_dir / "README.md"
    if not readme.exists():  # a README someone has written up since is kept
        readme.write_text(f"Re-scored copy of `{results_dir}`, written by:\n\n    {command}\n")

    from tqdm import tqdm

    todo = [r for r in rows if r["key"] not in done]
    if len(todo) < len(rows):
        print(f"rescore: {len(rows) - len(todo)} of {len(rows)} points already in {out_points}", file=sys.stderr)
    for row in tqdm(todo, desc=f"rescore {evaluator.name}", unit="pt", disable=not progress, dynamic_ncols=True):
        name = f"{store.safe_name(row['key'])}.jsonl"
        records = saved[row["key"]]  # read once, above
        row = json.loads(json.dumps(row))  # a deep copy
        metrics = row.setdefault("metrics", {})
        metrics["rescore_evaluator"] = evaluator.name
        if not records:
            metrics["rescore_note"] = NO_SAMPLES
            if (results_dir / store.SAMPLES_DIR / name).is_file():
                store.write_atomic(out_dir / store.SAMPLES_DIR / name, "")
            store.append_row(out_points, row)
            continue
        texts = [r["text"] for r in records]
        scored = evaluator.score(texts)
        metrics.update(rescored_from=metrics.get("evaluator"), gen_ppl=scored.ppl, gen_ppl_mean=scored.mean_sample_ppl,
                       gen_ppl_tokens=scored.n_tokens, gen_ppl_samples=len(texts), evaluator=scored.evaluator)
        for rec, p in zip(records, scored.sample_ppl):
            rec["gen_ppl"] = p
        if mauve:
            metrics.update(_mauve(evaluator, refs, row, texts, reference_samples))
        elif metrics.get("mauve") is not None:
            metrics.setdefault("mauve_evaluator", metrics["rescored_from"])  # old MAUVE keeps its own evaluator
        metrics["rescore_mauve"] = mauve
        store.write_atomic(out_dir / store.SAMPLES_DIR / name, "".join(json.dumps(r) + "\n" for r in records))
        store.append_row(out_points, row)
    return out_dir


def _mauve(evaluator, refs: References, row: dict, texts: list[str], reference_samples: int | None) -> dict:
    from harness.metrics.mauve import mauve_score

    n_ref = reference_samples or refs.cfg.mauve.reference_samples or len(texts)
    kwargs = {"num_buckets": refs.cfg.mauve.num_buckets} if refs.cfg.mauve.num_buckets else {}
    try:
        reference = refs.texts(row["model_entry"], row["length"], n_ref)
    except (ValueError, FileNotFoundError) as err:
        return {"mauve": None, "mauve_note": f"no reference texts: {str(err).splitlines()[0]}", "mauve_n": None,
                "mauve_degenerate": None}
    if len(texts) < 2:
        return {"mauve": None, "mauve_note": f"only {len(texts)} saved sample(s); MAUVE needs 2", "mauve_n": None,
                "mauve_degenerate": None}
    result = mauve_score(evaluator, texts, reference, **kwargs)
    return {"mauve": result["mauve"], "mauve_note": result.get("reason"), "mauve_n": [result["n_p"], result["n_q"]],
            "mauve_degenerate": result.get("degenerate"), "mauve_evaluator": evaluator.name}
