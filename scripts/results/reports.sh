#!/bin/bash
# Reports of the finished CPU-scale runs (every run is skipped as finished; only the reports are written).
cd "$(dirname "$0")/../.."  # the repository root
export PYTHONPATH=$PWD WANDB_MODE=offline OMP_NUM_THREADS=1
CAP=".venv/bin/python -m capsgan_dist"
MN_OV='overrides=[data.name=idx,data.root=../shared/data/mnist,tracking.backend=local,train.checkpoint_every=250,train.progress=false]'
FA_OV='overrides=[data.name=idx,data.root=/usr/share/datasets/fashion-mnist,tracking.backend=local,train.checkpoint_every=250,train.progress=false]'
COMMON=(steps=2000 eval_every=250 eval_n=2000 grid_steps=[1000,2000])
set -e
# 1. routing ablation (seed 0), kept as ablation_table.md / ablation.png
$CAP compare configs/compare_mnist.yaml seeds=[0] "${COMMON[@]}" routing_ablation=[1,2,3,5] \
  classifier=runs/classifiers/mnist-lenet.safetensors out_dir=runs/compare_mnist "$MN_OV"
mv runs/compare_mnist/table.md runs/compare_mnist/ablation_table.md
mv runs/compare_mnist/compare.json runs/compare_mnist/ablation_compare.json
# 2. CapsuleGAN vs DCGAN, 3 seeds
$CAP compare configs/compare_mnist.yaml seeds=[0,1,2] "${COMMON[@]}" routing_ablation=[] \
  classifier=runs/classifiers/mnist-lenet.safetensors out_dir=runs/compare_mnist "$MN_OV"
# 3. Fashion-MNIST, 2 seeds
$CAP compare configs/compare_fashion.yaml seeds=[0,1] "${COMMON[@]}" \
  classifier=runs/classifiers/fashion-lenet.safetensors out_dir=runs/compare_fashion "$FA_OV"
