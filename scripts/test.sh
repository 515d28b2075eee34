#!/usr/bin/env bash
# Run the test suite. Fails when pytest collects no tests (its exit code 5).
set -uo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=${WANDB_MODE:-offline} WANDB_SILENT=true RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
.venv/bin/python -m pytest tests --durations=15 "$@"  # the slowest 15 tests at the end
rc=$?
if [ $rc -eq 5 ]; then
  echo "ERROR: pytest collected no tests" >&2
  exit 1
fi
exit $rc
