"""scripts/gpu_lease.sh's stages dry-run on the CPU at tiny sizes: the paper stage (paper_throughput
at L <= 8192, then paper_quality), the decoders stage and the L1-L4 pieces each run their sweeps and
pack results that esolm report reads; L1 writes the step profile. The arguments the GPU runs use
select the points the paper's tables need."""

import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = (REPO / "scripts" / "gpu_lease.sh").read_text()


def run_stages(tmp_path, *stages):
    out, results = tmp_path / "out", tmp_path / "results"
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(out), "RESULTS": str(results), "BUDGET_S": "500",
           "PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["bash", "scripts/gpu_lease.sh", *stages], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "=== done" in proc.stdout
    return out, results


def unpack_and_report(out: Path, name: str, tmp_path: Path) -> list[dict]:
    """$OUT/NAME.tgz unpacked and reported on as a fresh checkout would: its rows."""
    from harness.report import write_report

    with tarfile.open(out / f"{name}.tgz") as tgz:
        tgz.extractall(tmp_path / "unpacked", filter="data")
    folder = tmp_path / "unpacked" / name
    report = Path(write_report(folder, out_dir=tmp_path / "reports" / name))
    assert report.name == "report.md" and report.is_file()
    return [json.loads(r) for r in (folder / "points.jsonl").read_text().splitlines()]


def test_paper_stage_dry_run_packs_both_sweeps(tmp_path):
    out, results = run_stages(tmp_path, "paper")
    assert (results / "paper_throughput" / "ceilings.json").is_file()
    for name, entries in (("paper_throughput", {"esolm-b-long", "ar"}), ("paper_quality", {"ar", "mdlm"})):
        with tarfile.open(out / f"{name}.tgz") as tgz:
            members = set(tgz.getnames())
        assert f"{name}/points.jsonl" in members
        rows = (results / name / "points.jsonl").read_text().splitlines()
        assert {json.loads(r)["model_entry"] for r in rows} == entries


def test_decoders_stage_dry_run_sweeps_every_entry(tmp_path):
    """The decoders stage (configs/paper_decoders.yaml) at tiny sizes on the CPU: every entry runs,
    every row carries its cache error, and the results are packed."""
    out, results = run_stages(tmp_path, "decoders")
    rows = [json.loads(r) for r in (results / "paper_decoders" / "points.jsonl").read_text().splitlines()]
    assert {r["model_entry"] for r in rows} == {"ar", "mdlm", "bd3lm-4", "bd3lm-16", "esolm-b"}
    assert len(rows) == 16 and all(r["metrics"]["cache_error_draws"] >= 0 for r in rows)
    exact = [r for r in rows if r["model_entry"] in ("ar", "bd3lm-4", "bd3lm-16", "esolm-b")]
    assert all(r["metrics"]["cache_error_max_logit"] < 1e-3 for r in exact)
    # probed in the sampler (at L = 32 a block of 32 is the whole sequence: nothing is stale, tests/test_decoders.py
    # checks the error is positive where it is)
    approximate = [r for r in rows if r["schedule_fields"].get("cache")]
    assert len(approximate) == 4 and all(r["metrics"]["cache_error_draws"] > 0 for r in approximate)
    assert all(r["metrics"]["cache_error_method"].startswith("in-sampler") for r in approximate)
    with tarfile.open(out / "paper_decoders.tgz") as tgz:
        assert "paper_decoders/points.jsonl" in tgz.getnames()


def test_l1_l2_dry_run_profile_latency_and_throughput(tmp_path):
    """L1: the step profile (one record per latency sampler, per-step counts whose classes sum to
    the totals) and every paper_latency entry; L2: ceilings and the L = 1024 throughput entries."""
    out, results = run_stages(tmp_path, "L1", "L2")
    profile = json.loads((out / "step_profile.json").read_text())
    records = profile["profile"]
    assert [r["sampler"] for r in records] == ["ar", "mdlm", "bd3lm-4", "bd3lm-16", "esolm-b"]
    for r in records:
        assert r["step_mode"] == "dynamic" and r["steps_profiled"] > 1 and r["forwards"] >= r["steps_profiled"]
        assert r["kernels_per_step"] > 0 and r["time_us_per_step"] > 0 and r["host_syncs_per_step"] >= 0
        assert abs(sum(r["kernels_by_class"].values()) - r["kernels_per_step"]) < 1e-6
        assert abs(sum(r["time_us_by_class"].values()) - r["time_us_per_step"]) < 1e-3 * r["time_us_per_step"]
        assert r["kernels_by_class"]["matmul"] > 0 and r["kernels_by_class"]["attention"] > 0
    assert (results / "paper_latency" / "step_profile.json").is_file()
    with tarfile.open(out / "paper_latency.tgz") as tgz:
        assert "paper_latency/step_profile.json" in tgz.getnames()
    rows = unpack_and_report(out, "paper_latency", tmp_path)
    assert {r["model_entry"] for r in rows} == {"ar", "esolm-b", "bd3lm-4", "bd3lm-16", "mdlm", "mdlm-8k"}
    assert (results / "paper_throughput" / "ceilings.json").is_file()
    rows = unpack_and_report(out, "paper_throughput", tmp_path)
    assert {r["model_entry"] for r in rows} == {"esolm-b-long", "mdlm", "bd3lm-4-t4096"}


def test_l3_l4_dry_run_each_half_of_paper_quality(tmp_path):
    out, _ = run_stages(tmp_path, "L3", "L4")
    rows = unpack_and_report(out, "paper_quality", tmp_path)
    assert {r["model_entry"] for r in rows} == {"ar", "mdlm"}


def test_gpu_arguments_select_the_paper_tables_points():
    """L2's entries with --set lengths=[1024] are every L = 1024 point of paper_throughput (batch
    512) and nothing else; L3 and L4 together train each paper_quality entry once."""
    from harness.sweep.grid import expand_points
    from harness.sweep.schema import load_sweep_config

    config = REPO / "configs" / "paper_throughput.yaml"
    entries = re.search(r"L2_ENTRIES=\$\{L2_ENTRIES:-([\w,-]+)\}", SCRIPT).group(1).split(",")
    l2 = [p for p in expand_points(load_sweep_config(config, ["lengths=[1024]"])) if p.entry in entries]
    every = [p for p in expand_points(load_sweep_config(config)) if p.length == 1024]
    assert {p.key for p in l2} == {p.key for p in every} and {p.batch_size for p in l2} == {512}
    halves = re.search(r"QUALITY_LEASES=\$\{QUALITY_LEASES:-([\w,;-]+)\}", SCRIPT).group(1).split(";")
    names = [n for half in halves for n in half.split(",")]
    quality = load_sweep_config(REPO / "configs" / "paper_quality.yaml")
    assert len(halves) == 2 and sorted(names) == sorted(m.name for m in quality.models)


def test_step_profile_classes_kernel_names():
    spec = importlib.util.spec_from_file_location("gpu_bench", REPO / "scripts" / "gpu_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    names = {
        "matmul": ["nvjet_tst_64x8_64x16_4x1_v_bz_TNT", "void gemv2T_kernel_val<int, int, __nv_bfloat16>",
                   "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize64x64x64_cublas",
                   "void cublasLt::splitKreduce_kernel<32, 16, int, float>", "aten::linear"],
        "attention": ["fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel)",
                      "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits>",
                      "aten::scaled_dot_product_attention"],
        "reduction": ["void at::native::(anonymous namespace)::cunn_SoftMaxForward<8, float>",
                      "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, ArgMaxOps<float>>>",
                      "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16>",
                      "aten::layer_norm", "aten::argmax", "aten::log_softmax"],
        "copy": ["void at::native::elementwise_kernel<128, 4, gpu_kernel_impl_nocast<direct_copy_kernel_cuda>>",
                 "Memcpy HtoD (Pageable -> Device)", "Memset (Device)", "void at::native::(anonymous namespace)::"
                 "indexSelectSmallIndex<c10::BFloat16, long>", "CatArrayBatchedCopy<float>", "aten::embedding",
                 "aten::cat", "aten::to"],
        "elementwise": ["void at::native::vectorized_elementwise_kernel<4, BinaryFunctor<MulFunctor<float>>>",
                        "void at::native::distribution_elementwise_grid_stride_kernel<float, 4>", "aten::add",
                        "aten::masked_fill_", "aten::gelu", "aten::exponential_", "aten::maximum"],
        "other": ["aten::view", "aten::slice", "aten::expand", "aten::dropout", "aten::empty"],
    }
    assert set(names) == set(bench.KERNEL_CLASSES)
    wrong = {n: bench.op_class(n) for cls, ns in names.items() for n in ns if bench.op_class(n) != cls}
    assert not wrong, wrong
