#!/bin/bash
# Second Fashion-MNIST seed, started when lane B finished.
cd "$(dirname "$0")/../.."  # the repository root
export PYTHONPATH=$PWD WANDB_MODE=offline OMP_NUM_THREADS=1
while pgrep -f "scripts/results/lanes.sh B" > /dev/null; do sleep 5; done
/usr/bin/time -v .venv/bin/python -m capsgan_dist compare configs/compare_fashion.yaml seeds=[1] steps=2000 eval_every=250 \
  eval_n=2000 grid_steps=[1000,2000] classifier=runs/classifiers/fashion-lenet.safetensors out_dir=runs/compare_fashion \
  'overrides=[data.name=idx,data.root=/usr/share/datasets/fashion-mnist,tracking.backend=local,train.checkpoint_every=250,train.progress=false]'
