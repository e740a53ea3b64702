#!/usr/bin/env bash
# The GPU acceptance check: every GPU path of trainguard, on a machine with an NVIDIA GPU, in
# one command of under 8 minutes. Figures and logs go to the folder given (default $OUT, else
# ./gpu-check); summary.txt lists each step with its exit code and time.
#
#   bench/gpu_check.sh [OUT_DIR]
#
# Steps: nvidia-smi's own view; the gpu-marked tests (NVML against nvidia-smi's XML, trainkit's
# device_memory event, the GPU-memory watchdog stopping a real run, a 1-GPU NCCL torchrun run
# through the launcher); the memory estimate against torch.cuda.max_memory_allocated at three
# batch sizes; gpu_status latency and the cost of 1 Hz sampling; autoencoder throughput with and
# without AMP. Python: $PYTHON, else .venv/bin/python, else python3, which needs torch (CUDA)
# and trainguard's packages; on a machine without an index, install them first from a wheel
# folder: WHEELS=dir bench/gpu_check.sh (pip install --no-index --find-links dir -e .[dev]).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-check}}
mkdir -p "$out"
py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OUT="$out"
summary="$out/summary.txt"
: > "$summary"

step() {  # step NAME SECONDS COMMAND...: its output in NAME.log, its code and time in summary.txt
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  printf '%-14s rc=%-3s %4ss\n' "$name" "$rc" "$((SECONDS - t0))" | tee -a "$summary"
}

if [ -n "${WHEELS:-}" ]; then
  step install 120 "$py" -m pip install --no-index --find-links "$WHEELS" -e ".[dev]"
fi
step nvidia-smi 30 nvidia-smi
step gpu-tests 240 "$py" -m pytest -m gpu -v -p no:cacheprovider -o addopts="" tests
step memory 150 "$py" bench/bench_memory.py --device cuda
step monitoring 90 "$py" bench/bench_gpu.py --calls 200
step amp 90 "$py" bench/bench_amp.py
echo "logs and figures in $out" | tee -a "$summary"
! grep -q "rc=[1-9]" "$summary"
