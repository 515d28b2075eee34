#!/bin/bash
# The CPU-scale comparison runs of docs/results.md, in two single-threaded lanes (one per core).
cd "$(dirname "$0")/../.."  # the repository root
export PYTHONPATH=$PWD WANDB_MODE=offline OMP_NUM_THREADS=1
CAP=".venv/bin/python -m capsgan_dist"
COMMON=(steps=2000 eval_every=250 eval_n=2000 grid_steps=[1000,2000])
MN_OV='overrides=[data.name=idx,data.root=../shared/data/mnist,tracking.backend=local,train.checkpoint_every=250,train.progress=false]'
FA_OV='overrides=[data.name=idx,data.root=/usr/share/datasets/fashion-mnist,tracking.backend=local,train.checkpoint_every=250,train.progress=false]'
if [ "$1" = A ]; then
  /usr/bin/time -v $CAP compare configs/compare_mnist.yaml seeds=[0] "${COMMON[@]}" routing_ablation=[1,2,3,5] \
    classifier=runs/classifiers/mnist-lenet.safetensors out_dir=runs/compare_mnist "$MN_OV"
else
  /usr/bin/time -v $CAP compare configs/compare_mnist.yaml seeds=[1,2] "${COMMON[@]}" routing_ablation=[] \
    classifier=runs/classifiers/mnist-lenet.safetensors out_dir=runs/compare_mnist "$MN_OV"
  /usr/bin/time -v $CAP compare configs/compare_fashion.yaml seeds=[0] "${COMMON[@]}" \
    classifier=runs/classifiers/fashion-lenet.safetensors out_dir=runs/compare_fashion "$FA_OV"
fi
