#!/usr/bin/env bash
# The Twemoji measurement of docs/results.md: configs/compare_twemoji64.yaml (CapsuleGAN 3,000 steps vs
# DCGAN 9,000, 3 seeds, 64x64 RGB, and the control with the paper's generator, 3,000) in two
# single-threaded lanes at low priority, CapsuleGAN's seeds on one core, DCGAN's and the control's on
# the other (about 3.5 and 4.5 CPU-hours on a 2-core CPU), then the report without --only.
# Rerun the same command to continue after a stop: finished runs are skipped, others resume.
set -euo pipefail
cd "$(dirname "$0")/../.."
CAPSGAN=${CAPSGAN:-.venv/bin/capsgan}
CLASSIFIER=runs/classifiers/twemoji64-lenet.safetensors
[ -d data/twemoji64 ] || bash scripts/get_twemoji.sh data/twemoji64
mkdir -p runs/classifiers
[ -f "$CLASSIFIER" ] || PYTHONPATH=$PWD OMP_NUM_THREADS=1 "$CAPSGAN" classifier train --data data/twemoji64 \
  --size 64 --channels 3 --arch lenet --holdout 500 --epochs 10 --out "$CLASSIFIER"
bash scripts/results/two_lanes.sh configs/compare_twemoji64.yaml twemoji64 capsgan dcgan_paperg,dcgan
