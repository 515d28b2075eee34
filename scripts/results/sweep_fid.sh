#!/bin/bash
# The classifier-FID sweep of docs/results.md (metric auto): routing 1-5 x 2 learning-rate draws, ASHA.
cd "$(dirname "$0")/../.."  # the repository root
export PYTHONPATH=$PWD WANDB_MODE=offline OMP_NUM_THREADS=1
/usr/bin/time -v .venv/bin/python -m capsgan_dist sweep configs/sweep_mnist.yaml name=mnist_fid trials=2 \
  'space.model.routing_iters.grid=[1,2,3,4,5]' scheduler.grace_period=500 \
  data.name=idx data.root=../shared/data/mnist train.steps=2000 train.log_every=20 \
  train.checkpoint_every=250 train.sample_every=500 tracking.grid_every=500 tracking.backend=local \
  eval.every=250 eval.n=2000 train.progress=false \
  model.conv1_channels=32 model.primary_channels=8 model.caps_dim=8 model.dense=32
