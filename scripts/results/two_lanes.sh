#!/usr/bin/env bash
# Shared by the results scripts: one compare config in two single-threaded lanes at low priority, then
# its report. Usage: two_lanes.sh CONFIG LOG_PREFIX MODELS_LANE0 MODELS_LANE1 (comma-separated `--only`
# lists). Lane logs: runs/LOG_PREFIX_lane0.log, _lane1.log; the report's: runs/LOG_PREFIX.log.
# Rerun the same command to continue after a stop: finished runs are skipped, others resume.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD WANDB_MODE=offline OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
CAPSGAN=${CAPSGAN:-.venv/bin/capsgan}
[ $# = 4 ] || { echo "usage: two_lanes.sh CONFIG LOG_PREFIX MODELS_LANE0 MODELS_LANE1" >&2; exit 2; }
cfg=$1 log=runs/$2
mkdir -p runs
nice -n 10 "$CAPSGAN" compare "$cfg" --only "$3" >> "${log}_lane0.log" 2>&1 &
a=$!
nice -n 10 "$CAPSGAN" compare "$cfg" --only "$4" >> "${log}_lane1.log" 2>&1 &
b=$!
ok=1
wait "$a" || ok=0
wait "$b" || ok=0
[ "$ok" = 1 ] || { echo "$2: a lane stopped (${log}_lane*.log); rerun to continue" >&2; exit 1; }
nice -n 10 "$CAPSGAN" compare "$cfg" >> "$log.log" 2>&1
