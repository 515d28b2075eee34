#!/usr/bin/env bash
# The conv-D ablation of docs/design.md: configs/compare_ablation_conv_d_mnist.yaml in two single-threaded lanes
# at low priority (about 50 min on a 2-core CPU), then the report (table.md, fid.png) without --only.
# Rerun the same command to continue after a stop: finished runs are skipped, others resume.
set -euo pipefail
cd "$(dirname "$0")/../.."
CAPSGAN=${CAPSGAN:-.venv/bin/capsgan}
mkdir -p runs/classifiers
[ -f runs/classifiers/mnist-lenet.safetensors ] || PYTHONPATH=$PWD "$CAPSGAN" classifier train \
  --data ../shared/data/mnist --arch lenet --epochs 5 --out runs/classifiers/mnist-lenet.safetensors
bash scripts/results/two_lanes.sh configs/compare_ablation_conv_d_mnist.yaml ablation_conv_d \
  dcgan,conv,conv_k4,conv_nobias,conv_bn dcgan_nobn,conv_3convs,conv_init
