#!/usr/bin/env bash
# The Twemoji measurement of docs/results.md: configs/compare_twemoji64.yaml (CapsuleGAN 3,000 steps vs
# DCGAN 9,000, 3 seeds, 64x64 RGB) in two single-threaded lanes at low priority, CapsuleGAN's seeds on
# one core and DCGAN's on the other (about the same CPU time each), then the report without --only.
# Rerun the same command to continue after a stop: finished runs are skipped, others resume.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD WANDB_MODE=offline OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
CAPSGAN=${CAPSGAN:-.venv/bin/capsgan}
CFG=configs/compare_twemoji64.yaml
CLASSIFIER=runs/classifiers/twemoji64-lenet.safetensors
[ -d data/twemoji64 ] || bash scripts/get_twemoji.sh data/twemoji64
mkdir -p runs/classifiers
[ -f "$CLASSIFIER" ] || "$CAPSGAN" classifier train --data data/twemoji64 --size 64 --channels 3 --arch lenet \
  --holdout 500 --epochs 10 --out "$CLASSIFIER"
nice -n 10 "$CAPSGAN" compare "$CFG" --only capsgan >> runs/twemoji64_lane0.log 2>&1 &
a=$!
nice -n 10 "$CAPSGAN" compare "$CFG" --only dcgan >> runs/twemoji64_lane1.log 2>&1 &
b=$!
ok=1
wait "$a" || ok=0
wait "$b" || ok=0
[ "$ok" = 1 ] || { echo "twemoji64.sh: a lane stopped (runs/twemoji64_lane*.log); rerun to continue" >&2; exit 1; }
nice -n 10 "$CAPSGAN" compare "$CFG" >> runs/twemoji64.log 2>&1
