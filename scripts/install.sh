#!/usr/bin/env bash
# Install everything into .venv (Python stack) and, when run as root with apt, the system packages
# the test suite uses (SLURM + munge for launch tests, Chromium for the report test, Fashion-MNIST).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ "${CAPSGAN_SKIP_APT:-0}" != 1 ]; then
  echo "+ apt-get install slurm, munge, chromium, dataset-fashion-mnist"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || echo "apt-get update failed; trying the install with the cached lists"
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge chromium \
    dataset-fashion-mnist >/dev/null
else
  echo "skipping system packages (needs root and apt; set CAPSGAN_SKIP_APT=0): SLURM, Chromium and Fashion-MNIST tests will skip"
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch and torchvision first and pinned, so no later range pulls another torch.
.venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/pip install -q -e ".[deepspeed,tune,metrics,report,dev]"
.venv/bin/python -c "import torch, torchvision, accelerate; print('installed: torch', torch.__version__, 'accelerate', accelerate.__version__)"
# Real colour images for the folder-source test and the Twemoji presets (optional: that test skips without them).
if command -v npm >/dev/null; then
  bash scripts/get_twemoji.sh data/twemoji64 || echo "Twemoji not fetched (npm registry unreachable?): its test will skip"
else
  echo "npm not found: Twemoji not fetched (make data-twemoji); its test will skip"
fi
echo "run \`source .venv/bin/activate\` to put capsgan on PATH (or call .venv/bin/capsgan)"
