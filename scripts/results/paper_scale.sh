#!/usr/bin/env bash
# The paper-scale comparison of docs/results.md: CapsuleGAN (10,000 steps) vs DCGAN (30,000 steps),
# 3 seeds, on MNIST and Fashion-MNIST.
#
#   scripts/results/paper_scale.sh                # both datasets, one after the other
#   scripts/results/paper_scale.sh mnist          # one dataset (about 2 hours on a 2-core CPU)
#
# Each dataset's compare is split over two single-threaded lanes at low priority, one per core:
# CapsuleGAN seeds 0 and 1 | CapsuleGAN seed 2, then DCGAN seeds 0-2 (about 6,000-6,600 training
# CPU-seconds each). When both end, the compare without --only writes the report and fights the GAM
# battles. Rerun the same command to continue after a stop: finished runs are skipped, a half-done
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

datasets=("$@")
[ $# -gt 0 ] || datasets=(mnist fashion)
for dataset in "${datasets[@]}"; do
  cfg=configs/compare_paper_$dataset.yaml
  [ -f "$cfg" ] || { echo "paper_scale.sh: no $cfg (datasets: mnist, fashion)" >&2; exit 2; }
  log=runs/paper_$dataset
  nice -n 10 $CAPSGAN compare "$cfg" --only capsgan 'seeds=[0,1]' >> "${log}_lane_a.log" 2>&1 &
  a=$!
  (nice -n 10 $CAPSGAN compare "$cfg" --only capsgan 'seeds=[2]' &&
    nice -n 10 $CAPSGAN compare "$cfg" --only dcgan) >> "${log}_lane_b.log" 2>&1 &
  b=$!
  if ! wait "$a" || ! wait "$b"; then
    echo "paper_scale.sh: a $dataset lane stopped (see ${log}_lane_*.log); rerun to continue" >&2
    exit 1
  fi
  nice -n 10 $CAPSGAN compare "$cfg" >> "$log.log" 2>&1  # everything trained: the report and GAM battles
done
