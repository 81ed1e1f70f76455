#!/usr/bin/env bash
# One GPU lease's work for issue #6, run from the repository root on the GPU machine:
#   ESOLM_GIT_COMMIT=$(git rev-parse --short HEAD) BUDGET_S=570 OUT=/some/dir bash scripts/gpu_lease.sh STAGE...
# Stages (in the order given):
#   check   the CUDA tests of tests/test_steps.py (graph and compiled steps vs static; CI runs the rest) and nvidia-smi
#   bench   scripts/gpu_bench.py: ceilings, eager/graph/compiled steps against floors, training ms/step
#   compiled[=a,b]  scripts/gpu_bench.py --only samplers --modes graph,compiled [--samplers a,b]:
#           graph vs compiled samplers at L = 1024 (compiling adds to each warm-up; default: all five)
#   steps   scripts/gpu_bench.py --only steps: one step's cost by window width and cache range
#   train_compiled  scripts/gpu_bench.py --only training --train-compile: training ms/step, eager vs compiled
#   speed   esolm sweep configs/paper_speed.yaml (resumes from results/paper_speed)
#   quality[=a,b]  esolm sweep configs/paper_quality.yaml [--entries a,b] (trains, then samples; resumes)
#   speed_compiled[=a,b]  paper_speed with --set step_mode=compiled into results/paper_speed_compiled
#   likelihood  esolm bench-likelihood: passes and time to score a model's own samples (exact vs
#           NELBO, with backward) on the papers' trunk, L = 256 and 1024, batch 1 and 8, into
#           results/likelihood_gpu (resumes)
# Everything lands in $OUT (results folders as .tgz); a sweep that hits the budget stops
# between points and the next lease resumes it.  Python packages the machine lacks travel as
# wheels in .whl/ (see /work/.library/device/README.md).
set -u
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
end=$((SECONDS + ${BUDGET_S:-570}))
left() { echo $((end - SECONDS)); }
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-$PWD}
for stage in "$@"; do
  echo "=== $stage ($(left) s left) ==="
  case $stage in
    check)
      nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.csv"
      python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.csv"
      timeout "$(left)" python3 -m pytest tests/test_steps.py -k cuda -q -p no:cacheprovider 2>&1 | tail -4 | tee "$OUT/check.txt"
      ;;
    bench)
      timeout "$(left)" python3 scripts/gpu_bench.py --out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" | tail -20
      ;;
    compiled|compiled=*)
      samplers=()
      [[ $stage == *=* ]] && samplers=(--samplers "${stage#*=}")
      timeout "$(left)" python3 scripts/gpu_bench.py --only samplers --modes graph,compiled "${samplers[@]}" \
        --out "$OUT/compiled.json" 2>&1 | tee "$OUT/compiled.log" | tail -8
      ;;
    steps)
      timeout "$(left)" python3 scripts/gpu_bench.py --only steps --out "$OUT/steps.json" 2>&1 | tail -12
      ;;
    train_compiled)
      timeout "$(left)" python3 scripts/gpu_bench.py --only training --train-compile --out "$OUT/train_compiled.json" \
        2>&1 | tail -8
      ;;
    speed|quality|quality=*|speed_compiled|speed_compiled=*)
      name=paper_${stage%%=*}
      config=configs/$name.yaml
      args=()
      [[ $stage == *=* ]] && args=(--entries "${stage#*=}")
      [[ $name == paper_speed_compiled ]] && config=configs/paper_speed.yaml \
        && args+=(--set name=$name --set step_mode=compiled)
      timeout "$(($(left) - 15))" python3 -m harness.cli sweep "$config" "${args[@]}" --no-report --quiet \
        2>&1 | tail -15 | tee "$OUT/$name.log"
      tar czf "$OUT/$name.tgz" "results/$name"
      python3 -c "import json,sys; rows=[json.loads(l) for l in open('results/$name/points.jsonl')]; print(len(rows), 'points')"
      ;;
    likelihood)
      timeout "$(($(left) - 15))" python3 -m harness.cli bench-likelihood --out results/likelihood_gpu \
        --preset small --vocab 50258 --lengths 256,1024 --batch-sizes 1,8 --device cuda \
        2>&1 | tail -40 | tee "$OUT/likelihood_gpu.log"
      tar czf "$OUT/likelihood_gpu.tgz" results/likelihood_gpu
      ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
echo "=== done ($(left) s left) ==="
