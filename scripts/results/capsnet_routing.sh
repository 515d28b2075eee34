#!/bin/bash
# CapsNet classifiers per routing kind at the budget of the CapsNet row of docs/results.md (MNIST,
# 2 epochs = 250 steps of 64 on the seeded 8,000 / 2,000 split), one after another, 2 threads unless
# OMP_NUM_THREADS says otherwise.
cd "$(dirname "$0")/../.." || exit  # the repository root
export PYTHONPATH=$PWD OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
for routing in dynamic em attention; do
  /usr/bin/time -f "$routing: %e s wall, %U s user" .venv/bin/python -m capsgan_dist classifier train \
    --data ../shared/data/mnist --arch capsnet --routing "$routing" --epochs 2 --holdout 2000 --seed 0 \
    --out "runs/classifiers/mnist-capsnet-$routing-2ep.safetensors"
done
