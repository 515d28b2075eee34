#!/bin/bash
# The 2-epoch CapsNet of docs/results.md with em routing under each EM convention (model.em_schedule):
# this project's ramp and the authors' schedule, MNIST, 250 steps of 64 on the seeded 8,000 / 2,000
# split, one after another, one thread unless OMP_NUM_THREADS says otherwise.
cd "$(dirname "$0")/../.." || exit  # the repository root
export PYTHONPATH=$PWD OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for schedule in ramp authors; do
  /usr/bin/time -f "$schedule: %e s wall, %U s user" .venv/bin/python -m capsgan_dist classifier train \
    --data ../shared/data/mnist --arch capsnet --routing em --em-schedule "$schedule" --epochs 2 \
    --holdout 2000 --seed 0 --out "runs/classifiers/mnist-capsnet-em-$schedule-2ep.safetensors"
done
