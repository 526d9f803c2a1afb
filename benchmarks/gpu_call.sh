#!/usr/bin/env bash
# One lent-GPU call: install the travelling wheels, then run the named stages in order, each
# under what is left of the call's time, its output in $OUT/<stage>.log (and on stdout).
#   bash benchmarks/gpu_call.sh 560 train generate qlora profile
# Stages: train (throughput.py: plain TRL vs ours, LoRA and QLoRA; saves the 8B base), generate
# (generate.py --quick), qlora (qlora_decode.py, 256 tokens; qlora-vl on an 8B-shaped Qwen3-VL), profile (decode_profile.py),
# loaded (loaded_decode.py), compile (compile_cache.py), step (step_profile.py ours),
# keys (probe_keys.py: keys during on-save probes, QLoRA on an 8B-shaped Qwen3-VL; the first probe's
# Triton builds in $OUT/first_probe_profile.txt, under cProfile with CPROFILE=1).
set -u
budget=$1; shift
start=$(date +%s)
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader
python3 -c "import torch, transformers, peft, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'trl', trl.__version__)"
B=/tmp/base
for stage in "$@"; do
  left=$((budget - ($(date +%s) - start)))
  [ "$left" -lt 30 ] && { echo "== $stage skipped: ${left}s left"; continue; }
  case $stage in
    train) cmd="python3 benchmarks/throughput.py --variants ${VARIANTS:-trl,ours,ours-qlora} --steps ${STEPS:-10} --warmup ${WARMUP:-3} --save-dir $B" ;;
    generate) cmd="python3 benchmarks/generate.py --quick --no-compile" ;;
    qlora) cmd="python3 benchmarks/qlora_decode.py --base $B --new-tokens 256" ;;
    qlora-vl) cmd="python3 benchmarks/qlora_decode.py --vl --new-tokens 256" ;;
    profile) cmd="python3 benchmarks/decode_profile.py" ;;
    loaded) cmd="python3 benchmarks/loaded_decode.py --model $B" ;;
    compile) cmd="python3 benchmarks/compile_cache.py" ;;
    step) cmd="python3 benchmarks/step_profile.py --variants ${STEP_VARIANTS:-ours} --save-dir $B" ;;
    keys) export LEV_FIRST_PROBE_CPROFILE=${CPROFILE:-0}; cmd="python3 benchmarks/probe_keys.py --budget $((left - 15)) --profile $OUT/first_probe_profile.txt" ;;
    *) echo "unknown stage $stage"; continue ;;
  esac
  echo "== $stage (${left}s left): $cmd"
  t0=$(date +%s)
  timeout "$left" $cmd > >(tee "$OUT/$stage.log") 2> "$OUT/$stage.err"
  echo "== $stage rc $? in $(( $(date +%s) - t0 ))s"
  grep -v "^\s*$" "$OUT/$stage.err" | sort | uniq -c | sort -rn | head -3
done
