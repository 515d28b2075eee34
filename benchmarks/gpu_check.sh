#!/usr/bin/env bash
# The GPU checks in one run: numerics, CUDA graphs, the two GPU targets, the step grid.
# NOT RUN YET: no GPU was available (see docs/benchmarks.md).
#
# 1. Once, on a machine that reaches the package index: bash benchmarks/gpu_check.sh --prepare
#    -> .gpu_wheels/ with omegaconf (pure Python, needs only PyYAML), for GPU images that have
#    torch, accelerate and PyYAML but not omegaconf; copy it along with the repository.
# 2. On the GPU machine, from the repository root: bash benchmarks/gpu_check.sh
#    About 8 minutes; the python part stops itself at GPU_CHECK_BUDGET_S (default 500 s).
# 3. Three files in $OUT: gpu_check.md (the report, with nvidia-smi and every step.py table: paste
#    it into docs/benchmarks.md with the card's name), gpu_check.json (all raw numbers) and
#    gpu_check.log (everything printed, pip's output included).
#    Rerun single sections with GPU_CHECK_ONLY=4,5 (section numbers in benchmarks/gpu_check.py).
# Uses $PYTHON, else `python`, else `python3`. Arguments go to gpu_check.py (--smoke: the plumbing on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python || command -v python3 || echo python3)}
if [[ "${1:-}" == "--prepare" ]]; then
  "$PY" -m pip download --no-deps --only-binary=:all: -d .gpu_wheels "omegaconf>=2.4"
  ls -l .gpu_wheels
  exit 0
fi
export OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"
if ! "$PY" -c "import omegaconf" 2>/dev/null; then
  "$PY" -m pip install --no-index --find-links .gpu_wheels omegaconf >> "$LOG" 2>&1 || {
    echo "omegaconf missing and not installable from .gpu_wheels (run --prepare, carry .gpu_wheels)" | tee -a "$LOG"
    exit 1; }
fi
PYTHONPATH=$PWD timeout 570 "$PY" benchmarks/gpu_check.py "$@" 2>&1 | tee -a "$LOG" | tail -n 60
