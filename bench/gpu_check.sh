#!/usr/bin/env bash
# Every check that needs a CUDA device, in one run, each step under its own time limit, all output kept:
#   1. the `gpu`-marked tests (real launches of the fused kernels, cuFFT, the cupy backend of every operator);
#   2. bench/bench_gpu.py: ADMM per iteration on the GPU against 2 CPU threads, the FFT pair, parity, pool memory;
#   3. `deconv learn` of the demo's first layer on a private Ray cluster: its shard actor gets num_gpus=1 and says
#      which device it computes on; the time per outer iteration is read off history.json;
#   4. `deconv learn` of the online preset (coding actors on the GPU);
#   5. `deconv demo`: the two-layer demo job through the service, with its default backend (auto: the GPU).
# Usage: bench/gpu_check.sh [OUT_DIR] (default bench/results/gpu), from the repository root, with the project's
# requirements importable by $PYTHON (default python3). nvidia-smi samples the GPU's memory throughout; each step's
# line in the summary gives its exit status, its seconds and the most GPU memory used while it ran.
set -u
out=${1:-${OUT:-bench/results/gpu}}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}  # Ray counts the GPUs it may hand out from this
work=$(mktemp -d)
summary=()

smi=$work/smi.csv
nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader,nounits -lms 200 >"$smi" 2>/dev/null &
sampler=$!
trap 'kill $sampler 2>/dev/null; rm -rf "$work"' EXIT

# step NAME SECONDS COMMAND...: run COMMAND under a limit, output in $out/NAME.log; the summary line records it
step() {
    local name=$1 limit=$2
    shift 2
    local from start rc
    from=$(wc -l <"$smi")
    start=$(date +%s.%N)
    echo "== $name (limit ${limit} s): $*"
    timeout -k 10 "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    local took peak
    took=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b - a}')
    peak=$(tail -n +"$((from + 1))" "$smi" | awk -F', ' '$2 > m {m = $2} END {print m + 0}')
    tail -n 25 "$out/$name.log"
    summary+=("$(printf '%-10s exit %3d  %7s s  peak GPU memory %6s MiB' "$name" "$rc" "$took" "$peak")")
}

{
    date -u
    nvidia-smi
    $py -c 'import sys, numpy, scipy, cupy; print(sys.version); print("numpy", numpy.__version__, "scipy",
scipy.__version__, "cupy", cupy.__version__, "CUDA runtime", cupy.cuda.runtime.runtimeGetVersion());
from solver.backend import get_backend, gpu_available; print("gpu_available", gpu_available());
print(get_backend("cupy").describe())'
    nproc
} >"$out/env.log" 2>&1
cat "$out/env.log"

xdist=$($py -c 'import xdist' 2>/dev/null && echo "-n 4")  # the tests' kernel compiles side by side, where it is installed
step tests 170 $py -m pytest -m gpu tests/solver -p no:cacheprovider -q $xdist --timeout 120 --maxfail 30 -rf
step bench 90 $py bench/bench_gpu.py --iters 150 --threads 2

# the demo's first layer (deconv learn runs one layer); Ray's log shows the actor's request and its device
samples=$($py -c 'from configs import sample_paths; print(sample_paths()[0].parent)')
layer1=$work/layer1.yaml
$py - "$layer1" "$samples" <<'EOF'
import sys, yaml
config = yaml.safe_load(open("configs/demo.yaml"))
config["layers"] = config["layers"][:1]
config["images"] = sys.argv[2]
yaml.safe_dump(config, open(sys.argv[1], "w"))
EOF
step learn 90 $py -m api.cli -v learn "$layer1" --out "$work/learn" --no-progress
$py - "$work/learn/history.json" >>"$out/learn.log" 2>&1 <<'EOF'
import json, sys
h = json.load(open(sys.argv[1]))
e = [s["elapsed_s"] for s in h]
print(f"outer iterations {len(h)}; E {h[0]['objective']:.6g} -> {h[-1]['objective']:.6g}; "
      f"{(e[-1] - e[0]) / max(1, len(e) - 1) * 1e3:.1f} ms per outer iteration after the first ({e[0]:.2f} s)")
EOF
tail -n 1 "$out/learn.log"
step online 60 $py -m api.cli -v learn configs/online.yaml --images "$samples" --out "$work/online" --no-progress
step demo 120 $py -m api.cli demo --out "$work/demo"
cp "$work/demo/filters.png" "$out/demo-filters.png" 2>/dev/null
cp "$smi" "$out/smi.csv"

echo "== summary"
printf '%s\n' "${summary[@]}"
