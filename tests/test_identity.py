"""Point identity (harness/sweep/identity.py): one versioned rule hashing non-default fields and
resolved meanings, and scripts/rehash_results.py, which rewrites version-1 hashes only once
they are verified against the point each row ran."""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from harness import sweep as sw
from harness.sweep import identity

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("rehash_results", REPO / "scripts" / "rehash_results.py")
rehash = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rehash)

CPU = torch.device("cpu")


def config(**over) -> dict:
    cfg = {"name": "t", "lengths": [16], "num_samples": 2, "batch_size": 2, "seeds": [0],
           "metrics": ["entropy", "test_ppl"], "device": "cpu",
           "train_defaults": {"backbone": {"preset": "tiny"}, "data": {"tokenizer": "gpt2", "seq_len": 16}},
           "models": [{"name": "m", "train": {"model": "mdlm"}, "schedules": [{"steps": 4}]}]}
    return {**cfg, **over}


def hashes(raw: dict) -> dict[str, str]:
    cfg = sw.parse_sweep_config(copy.deepcopy(raw))
    entries = {m.name: m for m in cfg.models}
    return {p.key: sw.point_hash(cfg, entries[p.entry], p, CPU) for p in sw.expand_points(cfg)}


def with_entry(raw: dict, **entry) -> dict:
    return {**raw, "models": [{**raw["models"][0], **entry}]}


@pytest.mark.parametrize("over", [
    {"test_ppl": {"batch_size": 16, "split": "test"}}, {"step_mode": "auto"}, {"max_memory": None},
    {"precision": "auto"}, {"speed": {"repeats": 5}},  # speed is not measured here
])
def test_a_field_at_its_default_leaves_the_hash(over):
    assert hashes(config(**over)) == hashes(config())


@pytest.mark.parametrize("over", [
    {"test_ppl": {"batch_size": 8}}, {"step_mode": "static"}, {"max_memory": "1GB"}, {"precision": "fp32"},
    {"num_samples": 4},
])
def test_a_field_away_from_its_default_changes_the_hash(over):
    base, changed = hashes(config()), hashes(config(**over))
    assert list(base) == list(changed) and base != changed


def test_recipe_and_schedule_fields_at_their_defaults_leave_the_hash():
    base = config()
    same = with_entry(base, train={"model": "mdlm", "model_args": {}, "data": {"protocol": "documents",
                      "framing": None}, "train": {"compile": False, "seed": 0}},
                      schedules=[{"steps": 4, "row_noise": False, "top_p": 1.0}])
    assert hashes(same) == hashes(base)
    assert hashes(with_entry(base, train={"model": "mdlm", "train": {"compile": True}})) != hashes(base)
    noisy = hashes(with_entry(base, schedules=[{"steps": 4, "row_noise": True}]))
    assert list(noisy) == ["m/T=4,rows=True/L16/s0"]


def test_the_version_is_hashed(monkeypatch):
    cfg = sw.parse_sweep_config(config())
    (point,) = sw.expand_points(cfg)
    assert identity.point_identity(cfg, cfg.models[0], point, CPU)["identity_version"] == 2
    before = sw.point_hash(cfg, cfg.models[0], point, CPU)
    ppl = sw.ppl_cache_key(cfg, cfg.models[0], 16, None, CPU)
    monkeypatch.setattr(identity, "IDENTITY_VERSION", 3)
    assert sw.point_hash(cfg, cfg.models[0], point, CPU) != before
    assert sw.ppl_cache_key(cfg, cfg.models[0], 16, None, CPU) != ppl


def test_resolved_meanings_are_hashed():
    """The split an Eso-LM sampler runs, and the options whose default changed, as they resolve."""
    esolm = with_entry(config(), train={"model": "esolm-b", "model_args": {"alpha_0": 0.25}})
    split = {s: hashes(with_entry(esolm, schedules=[{"alpha_0": 1.0, "steps": 4, **({"split": s} if s else {})}]))
             for s in (None, "binomial", "fixed")}
    assert list(split[None].values()) == list(split["binomial"].values())  # the same run (its label says so)
    assert list(split["fixed"]) == list(split[None]) == ["m/T=4,a0=1/L16/s0"]
    assert split["fixed"] != split[None]  # the same key, never resumed for the other

    def bd3lm(init, **args):
        return hashes(with_entry(config(), init=init, train={"model": "bd3lm", "model_args": {"block_size": 4, **args}},
                                 schedules=[{"steps": 4}]))

    for init in ("trained", "random"):  # ignore_bos: true is the default now, false the legacy value
        assert bd3lm(init) == bd3lm(init, ignore_bos=True) != bd3lm(init, ignore_bos=False)


# --- scripts/rehash_results.py ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory) -> Path:
    """A tiny sweep's folder (random weights, no training): AR, BD3-LM and Eso-LM (B)."""
    tmp = tmp_path_factory.mktemp("rehash")
    entry = lambda model, schedules, **args: {"name": model, "init": "random", "schedules": schedules,  # noqa: E731
                                              "train": {"model": model, "model_args": args}}
    cfg = config(metrics=["entropy"], runs_dir=str(tmp / "runs"), save_samples=0,
                 models=[entry("ar", [{}]), entry("bd3lm", [{"first_hitting": True}], block_size=4),
                         entry("esolm-b", [{"alpha_0": 1.0, "steps": 4}], alpha_0=0.25)])
    path = tmp / "t.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return sw.run_sweep(path, results_root=tmp / "results", report=False, progress=False)


def as_version_1(folder: Path, edit=None) -> list[str]:
    """Rewrite the folder's rows as the version-1 rule hashed them (``edit`` a row first)."""
    cfg = sw.load_sweep_config(folder / "config.yaml")
    points = {p.key: p for p in sw.expand_points(cfg)}
    lines = []
    for line in (folder / "points.jsonl").read_text().splitlines():
        row = json.loads(line)
        if edit:
            edit(row)
        row["config_hash"] = rehash.hashes(cfg, rehash.as_run(cfg, points, row), row, 1)["config_hash"]
        lines.append(json.dumps(row))
    return lines


def copy_results(source: Path, folder: Path) -> tuple[Path, str]:
    """A copy of a results folder's config and rows to rewrite: (the folder, its rows' text)."""
    folder.mkdir()
    shutil.copy(source / "config.yaml", folder / "config.yaml")
    current = (source / "points.jsonl").read_text()
    (folder / "points.jsonl").write_text(current)
    return folder, current


def test_rehash_verifies_rewrites_and_leaves_the_unverified(tiny_results, tmp_path, capsys):
    folder, current = copy_results(tiny_results, tmp_path / "t")

    def predate_the_fields(row):  # as rows made before the split and the BD3-LM options existed
        if row["family"] == "esolm-b":
            del row["diffusion_split"]
        if row["family"] == "bd3lm":
            for option in ("ignore_bos", "mask_rate"):
                del row["model_options"][option]

    old = as_version_1(folder, predate_the_fields)
    old[0] = old[0].replace(json.loads(old[0])["config_hash"], "0123456789abcdef")  # matches no rule
    (folder / "points.jsonl").write_text("\n".join(old) + "\n")
    assert rehash.main([str(folder)]) == 1
    out = capsys.readouterr().out
    assert f"{folder}: 3 rows: 2 verified, 2 rewritten, 0 already current, 1 unverified" in out
    assert f"unverified {folder} ar/default/L16/s0" in out
    new = (folder / "points.jsonl").read_text().splitlines()
    assert new[0] == old[0]  # left as it was
    rehash.check_only_hashes_differ("\n".join(old), "\n".join(new))
    # the rows that ran what the config no longer means keep their keys, but not its hashes
    made = {json.loads(line)["key"]: json.loads(line)["config_hash"] for line in current.splitlines()}
    for before, after in zip(old[1:], new[1:]):
        b, a = json.loads(before), json.loads(after)
        assert a["key"] == b["key"] and a["config_hash"] not in (b["config_hash"], made[a["key"]])
    # idempotent; --allow-unverified exits 0
    assert rehash.main([str(folder), "--allow-unverified"]) == 0
    assert f"{folder}: 3 rows: 0 verified, 0 rewritten, 2 already current, 1 unverified" in capsys.readouterr().out
    assert (folder / "points.jsonl").read_text().splitlines() == new


def test_rehash_gives_rows_that_ran_the_config_its_own_hashes(tiny_results, tmp_path, capsys):
    folder, current = copy_results(tiny_results, tmp_path / "t")
    (folder / "points.jsonl").write_text("\n".join(as_version_1(folder)) + "\n")
    assert rehash.main([str(folder), "--dry-run"]) == 0
    assert "3 verified, 0 rewritten" in capsys.readouterr().out
    assert rehash.main([str(folder)]) == 0
    assert [json.loads(x) for x in (folder / "points.jsonl").read_text().splitlines()] == \
        [json.loads(x) for x in current.splitlines()]  # what the sweep writes now, exactly


def test_only_hash_fields_may_differ():
    row = {"key": "k", "config_hash": "a" * 16, "metrics": {"test_ppl": 3.0, "test_ppl_key": "b" * 16}}
    other = {**row, "config_hash": "c" * 16, "metrics": {**row["metrics"], "test_ppl_key": "d" * 16}}
    rehash.check_only_hashes_differ(json.dumps(row), json.dumps(other))
    with pytest.raises(ValueError, match="changes more than config_hash"):
        rehash.check_only_hashes_differ(json.dumps(row), json.dumps({**other, "metrics": {"test_ppl": 3.5}}))
    with pytest.raises(ValueError, match="lines"):
        rehash.check_only_hashes_differ(json.dumps(row), json.dumps(row) + "\n" + json.dumps(row))
