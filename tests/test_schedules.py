"""Sampling-schedule fields that keep committed results addressable: Eso-LM's diffusion split
(labels, point keys and hashes) and the one-line errors of its diffusion-phase fields."""

import pytest
import torch

from harness import sweep as sw
from harness.config import ConfigError
from harness.schedules import SamplingSchedule


def test_split_labels_keep_the_names_results_had_before_the_field():
    plain = SamplingSchedule(alpha_0=0.25, steps=16)
    assert plain.diffusion_split() == "binomial" and plain.label() == "T=16,a0=0.25"
    fixed = SamplingSchedule(alpha_0=0.25, steps=16, split="fixed")
    assert fixed.diffusion_split() == "fixed" and fixed.label() == "T=16,a0=0.25"  # the legacy name
    assert SamplingSchedule(alpha_0=0.25, steps=16, split="binomial").label() == "T=16,a0=0.25,split=binomial"
    assert SamplingSchedule(blocks=4).diffusion_split() == "fixed"
    assert SamplingSchedule(stride=4, shuffle=True).label() == "stride=4,shuffle=True"


def test_the_split_is_hashed_as_the_sampler_runs_it():
    from harness.sweep.identity import schedule_identity

    # families that read the split: the one they run, given or not
    assert schedule_identity({"steps": 8}, "esolm-b") == {"steps": 8, "split": "binomial"}
    assert schedule_identity({"steps": 8, "split": "binomial"}, "esolm-b") == {"steps": 8, "split": "binomial"}
    assert schedule_identity({"steps": 8, "split": "fixed"}, "esolm-b") == {"steps": 8, "split": "fixed"}
    assert schedule_identity({"blocks": 2}, "esolm-a") == {"blocks": 2, "split": "fixed"}
    # the others never see it
    assert schedule_identity({"steps": 8}, "mdlm") == {"steps": 8}


@pytest.mark.parametrize("name", ["cpu_quality", "cpu_quality_bos", "cpu_speed", "paper_speed"])
def test_pinned_configs_resume_their_committed_rows(name):
    """Every point of a config that pins split: fixed has the key and hash of a committed row,
    so the same command skips it (and reports the committed numbers), except a row whose model
    was built before one of its defaults changed (paper_speed's BD3-LM generated position 0):
    the config now means the new default, so that point runs again."""
    from harness.models import resolve_model_class

    cfg = sw.load_sweep_config(f"configs/{name}.yaml")
    entries = {m.name: m for m in cfg.models}
    device = torch.device("cuda" if cfg.device == "cuda" else "cpu")  # hashed by type only; no GPU needed
    rows = {(r["key"], r["config_hash"]) for r in sw.read_points(f"results/{name}")}
    latest = sw.latest_rows(sw.read_points(f"results/{name}"))
    points = sw.expand_points(cfg)

    def predates_a_default(p):
        tracked = resolve_model_class(entries[p.entry].model_name).legacy_options
        return not set(tracked) <= set(latest[p.key]["model_options"])

    old = {p.key for p in points if predates_a_default(p)}
    assert {k.split("/")[0] for k in old} == ({"bd3lm-4", "bd3lm-16"} if name == "paper_speed" else set())
    assert points and all(((p.key, sw.point_hash(cfg, entries[p.entry], p, device)) in rows) == (p.key not in old)
                          for p in points)
    esolm = [p for p in points if entries[p.entry].family.startswith("esolm") and "steps" in p.schedule]
    assert esolm and all(p.schedule.get("split") == "fixed" for p in esolm)


def test_binomial_points_get_new_hashes_but_keep_their_keys():
    cfg = sw.load_sweep_config("configs/smoke.yaml")
    entries = {m.name: m for m in cfg.models}
    device = torch.device("cpu")
    rows = sw.latest_rows(sw.read_points("results/smoke"))
    for p in sw.expand_points(cfg):
        assert p.key in rows
        same = sw.point_hash(cfg, entries[p.entry], p, device) == rows[p.key]["config_hash"]
        # rows older than the split field have no diffusion_split: they ran the fixed split, so
        # the binomial default must not resume them (rows made since then do match)
        assert same == (not entries[p.entry].family.startswith("esolm") or "diffusion_split" in rows[p.key])


@pytest.mark.parametrize("fields,match", [
    ({"steps": 4, "blocks": 2}, r"one of schedule fields 'steps', 'blocks' or 'stride', not \['steps', 'blocks'\]"),
    ({"steps": 4, "stride": 2}, r"not \['steps', 'stride'\]"),
    ({"alpha_0": 0.5}, "needs schedule 'steps', 'blocks' or 'stride'"),
    ({"blocks": 2, "split": "binomial"}, "'split': 'binomial' needs 'steps'"),
    ({"steps": 4, "shuffle": True}, "'shuffle' shuffles the sets of 'stride'"),
    ({"alpha_0": 0.25, "stride": 2}, "'stride': alpha_0 · stride = 0.5 sets is not a whole number"),
])
def test_diffusion_phase_errors(fields, match):
    with pytest.raises(ValueError, match=match):
        SamplingSchedule(**fields).check_diffusion_phase("esolm-b", fields.get("alpha_0", 0.25))


def test_sweep_config_names_a_bad_split(tmp_path):
    import yaml

    from harness.cli import main

    cfg = yaml.safe_load(open("configs/smoke.yaml"))
    cfg["models"][4]["schedules"] = [{"alpha_0": 0.5, "steps": 8, "split": "exact"}]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as err:
        main(["sweep", str(path), "--results", str(tmp_path / "r")])
    assert err.value.code == 2
    cfg["models"][1]["schedules"] = [{"steps": 8, "split": "fixed"}]  # mdlm has no diffusion split
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"mdlm does not use schedule field\(s\) \['split'\]"):
        sw.load_sweep_config(path)


def test_sample_flags_build_the_schedule():
    from harness.cli import build_parser, schedule_from_args

    args = build_parser().parse_args(["sample", "run", "--alpha-0", "0.5", "--steps", "8", "--split", "fixed"])
    assert schedule_from_args(args) == SamplingSchedule(alpha_0=0.5, steps=8, split="fixed")
    args = build_parser().parse_args(["sample", "run", "--stride", "4", "--shuffle"])
    assert schedule_from_args(args) == SamplingSchedule(stride=4, shuffle=True)
    with pytest.raises(ValueError, match="--stride"):
        schedule_from_args(build_parser().parse_args(["sample", "run", "--stride", "0"]))
