#!/usr/bin/env bash
# The GPU checks in one run: numerics, CUDA graphs, the two GPU targets, the step grid.
# NOT RUN YET: no GPU was available (see docs/benchmarks.md).
#
# 1. Once, on a machine that reaches the package index: bash benchmarks/gpu_check.sh --prepare
#    -> .gpu_wheels/ with omegaconf (pure Python, needs only PyYAML), for GPU images that have
#    torch, accelerate and PyYAML but not omegaconf; copy it along with the repository.
# 2. On the GPU machine, from the repository root: bash benchmarks/gpu_check.sh
#    About 8 minutes; the python part stops itself at GPU_CHECK_BUDGET_S (default 500 s).
# 3. Results in $OUT: gpu_check.md (the report: paste it into docs/benchmarks.md with the card's
#    name), gpu_check.json, d1024.md, d1024_compile.md, step_grid.md, gpu_check.log, nvidia-smi.txt.
#    Rerun single sections with GPU_CHECK_ONLY=4,5 (section numbers in benchmarks/gpu_check.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if [[ "${1:-}" == "--prepare" ]]; then
  $PY -m pip download --no-deps --only-binary=:all: -d .gpu_wheels "omegaconf>=2.4"
  ls -l .gpu_wheels
  exit 0
fi
export OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
if ! $PY -c "import omegaconf" 2>/dev/null; then
  $PY -m pip install --no-index --find-links .gpu_wheels omegaconf > "$OUT/pip.log" 2>&1 || {
    echo "omegaconf missing and not installable from .gpu_wheels (run --prepare, carry .gpu_wheels)"; exit 1; }
fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
PYTHONPATH=$PWD timeout 570 $PY benchmarks/gpu_check.py 2>&1 | tee "$OUT/gpu_check.log" | tail -n 60
