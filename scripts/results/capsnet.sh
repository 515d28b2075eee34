#!/bin/bash
# CapsNet classifiers (paper-size, 3 routings, margin loss + 0.0005 x reconstruction), 2 threads, one after another.
cd "$(dirname "$0")/../.."  # the repository root
export PYTHONPATH=$PWD OMP_NUM_THREADS=2
CAP=".venv/bin/python -m capsgan_dist"
/usr/bin/time -f "%e s wall, %U s user" $CAP classifier train --data ../shared/data/mnist --arch capsnet --epochs 2 \
  --holdout 2000 --seed 0 --out runs/classifiers/mnist-capsnet-2ep.safetensors
/usr/bin/time -f "%e s wall, %U s user" $CAP classifier train --data /usr/share/datasets/fashion-mnist --arch capsnet \
  --epochs 1 --out runs/classifiers/fashion-capsnet-1ep.safetensors
