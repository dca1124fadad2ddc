#!/usr/bin/env bash
# The GPU measurements of one device session, in priority order, each under its own time limit so one
# slow step cannot starve the rest. Run from the repository root on the GPU machine (torch and triton
# installed there; rbgp is used from src/). Results go to $OUT/results.tgz (and a log on stdout).
#   bash scripts/gpu_session.sh STEP...   steps: env tests tune profile bench-bf16 bench-fp16 bench-fp32
#                                          models models-compile
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
R=/tmp/gpu-results
mkdir -p "$OUT" "$R"
step() {  # name, seconds, command...
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$R/$name.txt" 2>&1
    local rc=$?
    echo "== $name: rc=$rc in $((SECONDS - t0)) s"
    tail -n 25 "$R/$name.txt"
}
for s in "$@"; do
    case $s in
        env) step env 30 bash -c 'nvidia-smi; python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.version.cuda, torch.cuda.get_device_name())"; which ncu' ;;
        tests) step tests 150 python3 -m pytest tests/ops/test_triton_gpu.py -q -p no:cacheprovider -rs ;;
        tune) step tune 150 python3 benchmarks/gpu_tune.py --out "$R/gpu-tune.json" ;;
        profile) step profile 90 ncu --profile-from-start off --section SpeedOfLight --section Occupancy \
            --section LaunchStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
            python3 benchmarks/gpu_profile.py ;;
        bench-bf16) step bench-bf16 330 python3 -m rbgp.cli bench --device cuda --dtype bf16 --out-dir "$R" ;;
        bench-fp16) step bench-fp16 70 python3 -m rbgp.cli bench --device cuda --dtype fp16 --only linear --out-dir "$R" ;;
        bench-fp32) step bench-fp32 70 python3 -m rbgp.cli bench --device cuda --dtype fp32 --only linear --out-dir "$R" ;;
        models) step models 150 python3 -m rbgp.cli bench --suite models --device cuda --dtype bf16 --out-dir "$R" ;;
        models-compile) step models-compile 200 python3 -m rbgp.cli bench --suite models --device cuda --dtype bf16 \
            --compile yes --name models-compiled --out-dir "$R" ;;
        *) echo "unknown step $s" ;;
    esac
    tar czf "$OUT/results.tgz" -C "$R" .
done
