#!/usr/bin/env bash
# The conv-D ablation of docs/design.md: configs/compare_ablation_conv_d_mnist.yaml in two single-threaded lanes
# at low priority (about 50 min on a 2-core CPU), then the report (table.md, fid.png) without --only.
# Rerun the same command to continue after a stop: finished runs are skipped, others resume.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD WANDB_MODE=offline OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
CAPSGAN=${CAPSGAN:-.venv/bin/capsgan}
CFG=configs/compare_ablation_conv_d_mnist.yaml
mkdir -p runs/classifiers
[ -f runs/classifiers/mnist-lenet.safetensors ] || "$CAPSGAN" classifier train --data ../shared/data/mnist \
  --arch lenet --epochs 5 --out runs/classifiers/mnist-lenet.safetensors
nice -n 10 "$CAPSGAN" compare "$CFG" --only dcgan,conv,conv_k4,conv_nobias,conv_bn >> runs/ablation_conv_d_lane0.log 2>&1 &
a=$!
nice -n 10 "$CAPSGAN" compare "$CFG" --only dcgan_nobn,conv_3convs,conv_init >> runs/ablation_conv_d_lane1.log 2>&1 &
b=$!
ok=1
wait "$a" || ok=0
wait "$b" || ok=0
[ "$ok" = 1 ] || { echo "ablation_conv_d.sh: a lane stopped (runs/ablation_conv_d_lane*.log); rerun to continue" >&2; exit 1; }
nice -n 10 "$CAPSGAN" compare "$CFG" >> runs/ablation_conv_d.log 2>&1
