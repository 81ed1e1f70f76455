#!/usr/bin/env bash
# A batch of GPU work (checks, benches, the paper sweeps), run from the repository root on the GPU machine:
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
#   estimators  esolm bench-estimators: every likelihood estimator's forwards, time and memory with backward
#           (one graph vs streamed) on the papers' trunk with random weights, L = 256 and 1024, batch 1 and 8,
#           into results/estimators_gpu (resumes; a one-graph score that runs out of memory is a row saying so)
#   throughput  esolm ceilings (once) + esolm sweep configs/paper_throughput.yaml at L <= 8192
#           (entries $TP_ENTRIES), for at most $TP_SHARE % of the budget left (default 50; resumes)
#   decoders  esolm sweep configs/paper_decoders.yaml: the field's decoders and approximate caches beside
#           the exact caches, L = 1024, random weights (resumes)
#   paper   throughput, then the pending paper_quality runs ($QUALITY_LEASES, ';'-separated entry
#           lists; each resumes where the last call stopped) in the rest of the budget
# The paper's tables in pieces of ~9 minutes (BUDGET_S=540), each resuming from the results committed so far:
#   L1      the CUDA tests (as check) and the step profile (scripts/gpu_bench.py --only profile: kernels and
#           time by kernel class per sampling step, docs/floors.md §5) into results/paper_latency/step_profile.json,
#           both skipped once that file exists; then esolm sweep configs/paper_latency.yaml (Table 11)
#   L2      esolm ceilings (once) + configs/paper_throughput.yaml's L = 1024 points at batch 512 (Tables 13-15:
#           entries $L2_ENTRIES with --set lengths=[1024]; entries with lengths of their own keep them)
#   L3, L4  configs/paper_quality.yaml: the first and the second entry list of $QUALITY_LEASES
# DRY_RUN=1 runs the throughput, paper, decoders and L1-L4 stages on the CPU at tiny sizes (tests/test_gpu_lease.py);
# RESULTS (default results) is the results root, PYTHON (default python3) the interpreter.
# Everything lands in $OUT (results folders as .tgz); a sweep that hits the budget stops
# between points and the next call resumes it.  Python packages the machine lacks travel as
# wheels in .whl/.
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
PY=${PYTHON:-python3}
RESULTS=${RESULTS:-results}
TP_ENTRIES=${TP_ENTRIES:-esolm-b,esolm-b-long,mdlm,mdlm-long,ar,bd3lm-4,bd3lm-16}
QUALITY_LEASES=${QUALITY_LEASES:-ar,mdlm,esolm-a-a1,esolm-b-a1;bd3lm-4,bd3lm-16,esolm-a,esolm-b}
L2_ENTRIES=${L2_ENTRIES:-esolm-b,esolm-b-long,mdlm,ar,bd3lm-4,bd3lm-16,bd3lm-4-t4096,bd3lm-16-t4096}
tp_dry=() q_dry=() dec_dry=() lat_dry=() l2_dry=() prof_dry=()
# --set models.I.lengths=null for every entry of config $1 with lengths of its own (a dry run runs all at L = 32)
own_lengths() {
  $PY -c 'import sys, yaml
for i, m in enumerate(yaml.safe_load(open(sys.argv[1]))["models"]):
    if "lengths" in m:
        print(f"--set\nmodels.{i}.lengths=null")' "$1"
}
if [[ ${DRY_RUN:-0} == 1 ]]; then  # CPU, tiny trunk, L = 32, one thread: checks the plumbing, not the numbers
  tiny=(--set device=cpu --set precision=fp32 --set threads=1 --set lengths=[32]
        --set train_defaults.backbone.preset=tiny --set train_defaults.data.tokenizer=bpe
        --set train_defaults.data.bpe_vocab_size=300 --set runs_dir="$OUT/runs")
  tp_dry=("${tiny[@]}" --set batch_sizes=[2])  # entries with lengths of their own are checked, not run
  q_dry=("${tiny[@]}" --set train_defaults.backbone.max_len=32 --set train_defaults.data.seq_len=32
         --set num_samples=2 --set batch_size=2 --set test_ppl.max_sequences=4
         --set train_defaults.train.device=cpu --set train_defaults.train.steps=2 --set train_defaults.train.batch_size=4
         --set train_defaults.train.warmup_steps=1 --set train_defaults.train.eval_every=2
         --set train_defaults.train.ckpt_every=2)
  dec_dry=("${tiny[@]}" --set train_defaults.backbone.max_len=32 --set train_defaults.data.seq_len=32)
  mapfile -t lat_dry < <(own_lengths configs/paper_latency.yaml)
  mapfile -t l2_dry < <(own_lengths configs/paper_throughput.yaml)
  lat_dry+=("${tiny[@]}") l2_dry+=("${tp_dry[@]}") prof_dry=(--device cpu --length 32)
  TP_ENTRIES=${DRY_TP_ENTRIES:-esolm-b-long,ar} QUALITY_LEASES=${DRY_QUALITY_LEASES:-ar;mdlm}
  L2_ENTRIES=${DRY_L2_ENTRIES:-esolm-b-long,mdlm,bd3lm-4-t4096}
fi
# sweep NAME SECONDS ARGS...: esolm sweep for at most SECONDS, then pack results/NAME into $OUT/NAME.tgz
sweep() {
  local name=$1 seconds=$2
  shift 2
  timeout "$seconds" $PY -m harness.cli sweep "$@" --results "$RESULTS" --no-report --quiet 2>&1 | tail -15 \
    | tee -a "$OUT/$name.log"
  if [[ -f $RESULTS/$name/points.jsonl ]]; then
    tar czf "$OUT/$name.tgz" -C "$RESULTS" "$name"
    $PY -c "import sys; print(sum(1 for _ in open(sys.argv[1])), 'points in', sys.argv[1])" "$RESULTS/$name/points.jsonl"
  fi
}
tp_ceilings() {
  [[ -f $RESULTS/paper_throughput/ceilings.json ]] \
    || timeout "$(left)" $PY -m harness.cli ceilings configs/paper_throughput.yaml --results "$RESULTS" \
       "${tp_dry[@]}" 2>&1 | tee -a "$OUT/paper_throughput.log"
}
throughput() {
  local share=${TP_SHARE:-50}
  tp_ceilings
  sweep paper_throughput $(($(left) * share / 100)) configs/paper_throughput.yaml --entries "$TP_ENTRIES" "${tp_dry[@]}"
}
check() {  # check SECONDS: the GPU's name, driver and torch, then the CUDA tests of tests/test_steps.py
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.csv"
    $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.csv"
  fi
  timeout "$1" $PY -m pytest tests/test_steps.py -k cuda -q -p no:cacheprovider 2>&1 | tail -4 | tee "$OUT/check.txt"
}
# the N-th (1, 2) entry list of $QUALITY_LEASES
quality_half() {
  local lists
  IFS=';' read -ra lists <<< "$QUALITY_LEASES"
  echo "${lists[$1 - 1]}"
}
for stage in "$@"; do
  echo "=== $stage ($(left) s left) ==="
  case $stage in
    check) check "$(left)" ;;
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
    throughput) throughput ;;
    decoders) sweep paper_decoders $(($(left) - 15)) configs/paper_decoders.yaml "${dec_dry[@]}" ;;
    paper)
      throughput
      IFS=';' read -ra leases <<< "$QUALITY_LEASES"
      for entries in "${leases[@]}"; do
        (($(left) > 30)) || break
        sweep paper_quality $(($(left) - 15)) configs/paper_quality.yaml --entries "$entries" "${q_dry[@]}"
      done
      ;;
    L1)
      if [[ ! -f $RESULTS/paper_latency/step_profile.json ]]; then
        check $(($(left) / 3))
        timeout "$(($(left) / 2))" $PY scripts/gpu_bench.py --only profile "${prof_dry[@]}" \
          --out "$OUT/step_profile.json" 2>&1 | tail -6 | tee "$OUT/step_profile.log"
        mkdir -p "$RESULTS/paper_latency"
        [[ -f $OUT/step_profile.json ]] && cp "$OUT/step_profile.json" "$RESULTS/paper_latency/"
      fi
      sweep paper_latency $(($(left) - 15)) configs/paper_latency.yaml "${lat_dry[@]}"
      ;;
    L2)
      tp_ceilings
      sweep paper_throughput $(($(left) - 15)) configs/paper_throughput.yaml --entries "$L2_ENTRIES" \
        --set 'lengths=[1024]' "${l2_dry[@]}"
      ;;
    L3|L4)
      sweep paper_quality $(($(left) - 15)) configs/paper_quality.yaml --entries "$(quality_half $((${stage#L} - 2)))" \
        "${q_dry[@]}"
      ;;
    likelihood)
      timeout "$(($(left) - 15))" python3 -m harness.cli bench-likelihood --out results/likelihood_gpu \
        --preset small --vocab 50258 --lengths 256,1024 --batch-sizes 1,8 --device cuda \
        2>&1 | tail -40 | tee "$OUT/likelihood_gpu.log"
      tar czf "$OUT/likelihood_gpu.tgz" results/likelihood_gpu
      ;;
    estimators)
      timeout "$(($(left) - 15))" python3 -m harness.cli bench-estimators --out results/estimators_gpu \
        --models random:ar,random:mdlm,random:bd3lm,random:esolm-b --preset small --vocab 50258 \
        --lengths 256,1024 --batch-sizes 1,8 --seeds 2 --reference-orders 1 --reference-chunk 1 \
        --estimators exact,exact-streamed,mean_field,elbo_mc-4,elbo_mc-4-streamed,coupled-1 --device cuda \
        2>&1 | tail -40 | tee "$OUT/estimators_gpu.log"
      tar czf "$OUT/estimators_gpu.tgz" results/estimators_gpu
      ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
echo "=== done ($(left) s left) ==="
