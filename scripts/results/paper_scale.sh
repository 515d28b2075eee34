#!/usr/bin/env bash
# The paper-scale comparison of docs/results.md: CapsuleGAN (10,000 steps) vs DCGAN (30,000 steps),
# 3 seeds, on MNIST and Fashion-MNIST; the two compares run side by side, one thread each, at low
# priority. Rerun the same command to continue after a stop: finished runs are skipped, a half-done
# run resumes from its newest checkpoint, evaluations and GAM battles already made are kept.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD WANDB_MODE=offline OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
CAPSGAN=.venv/bin/capsgan
mkdir -p runs/classifiers
[ -f runs/classifiers/mnist-lenet.safetensors ] || $CAPSGAN classifier train --data ../shared/data/mnist \
  --arch lenet --epochs 5 --out runs/classifiers/mnist-lenet.safetensors
[ -f runs/classifiers/fashion-lenet.safetensors ] || $CAPSGAN classifier train \
  --data /usr/share/datasets/fashion-mnist --arch lenet --epochs 3 --out runs/classifiers/fashion-lenet.safetensors
nice -n 10 $CAPSGAN compare configs/compare_paper_mnist.yaml >> runs/paper_mnist.log 2>&1 &
nice -n 10 $CAPSGAN compare configs/compare_paper_fashion.yaml >> runs/paper_fashion.log 2>&1 &
wait
