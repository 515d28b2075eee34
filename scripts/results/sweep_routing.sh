#!/bin/bash
# Routing iterations alone: 1-5 x seeds 0-2 at the paper's learning rates, every trial run to the end (FIFO).
cd "$(dirname "$0")/../.."  # the repository root
export PYTHONPATH=$PWD WANDB_MODE=offline OMP_NUM_THREADS=1
while pgrep -f "scripts/results/sweep_fid.sh" > /dev/null; do sleep 5; done
/usr/bin/time -v .venv/bin/python -m capsgan_dist sweep configs/sweep_mnist.yaml name=mnist_routing_seeds trials=1 \
  'space.model.routing_iters.grid=[1,2,3,4,5]' 'space.seed.grid=[0,1,2]' space.optim.lr_d=null space.optim.lr_g=null \
  scheduler.name=fifo \
  data.name=idx data.root=../shared/data/mnist train.steps=2000 train.log_every=20 \
  train.checkpoint_every=250 train.sample_every=500 tracking.grid_every=500 tracking.backend=local \
  eval.every=250 eval.n=2000 train.progress=false \
  model.conv1_channels=32 model.primary_channels=8 model.caps_dim=8 model.dense=32
