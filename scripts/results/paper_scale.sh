#!/usr/bin/env bash
# The paper-scale comparison of docs/results.md: CapsuleGAN (10,000 steps) vs DCGAN (30,000 steps),
# 3 seeds, on MNIST and Fashion-MNIST.
#
#   scripts/results/paper_scale.sh                # both datasets, the lanes moving from one to the next
#   scripts/results/paper_scale.sh mnist          # one dataset (about 2 hours on a 2-core CPU)
#
# Each dataset's compare is split into two shares, one per single-threaded lane at low priority:
# CapsuleGAN seeds 0 and 1 | CapsuleGAN seed 2, then DCGAN seeds 0-2 (about 6,000-6,600 training
# CPU-seconds each). A lane that finishes its share moves on to the next dataset at once, taking
# the other share there, so neither core waits and the lanes stay balanced. When both lanes end,
# the compare without --only writes each dataset's report and fights its GAM battles. Rerun the
# same command to continue after a stop: finished runs are skipped, a half-done run resumes from
# its newest checkpoint, evaluations and GAM battles already made are kept.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD WANDB_MODE=offline OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
CAPSGAN=${CAPSGAN:-.venv/bin/capsgan}
mkdir -p runs/classifiers
[ -f runs/classifiers/mnist-lenet.safetensors ] || $CAPSGAN classifier train --data ../shared/data/mnist \
  --arch lenet --epochs 5 --out runs/classifiers/mnist-lenet.safetensors
[ -f runs/classifiers/fashion-lenet.safetensors ] || $CAPSGAN classifier train \
  --data /usr/share/datasets/fashion-mnist --arch lenet --epochs 3 --out runs/classifiers/fashion-lenet.safetensors

datasets=("$@")
[ $# -gt 0 ] || datasets=(mnist fashion)
for dataset in "${datasets[@]}"; do
  [ -f "configs/compare_paper_$dataset.yaml" ] || {
    echo "paper_scale.sh: no configs/compare_paper_$dataset.yaml (datasets: mnist, fashion)" >&2; exit 2; }
done

share() {  # share DATASET N: share 0 (CapsuleGAN seeds 0-1) or 1 (CapsuleGAN seed 2, then DCGAN)
  local cfg=configs/compare_paper_$1.yaml
  if [ "$2" = 0 ]; then
    nice -n 10 $CAPSGAN compare "$cfg" --only capsgan 'seeds=[0,1]'
  else
    nice -n 10 $CAPSGAN compare "$cfg" --only capsgan 'seeds=[2]' && nice -n 10 $CAPSGAN compare "$cfg" --only dcgan
  fi
}
lane() {  # lane N DATASET...: share N of the first dataset, the other share of the next, and so on
  local n=$1 dataset
  shift
  for dataset in "$@"; do
    share "$dataset" "$n" >> "runs/paper_${dataset}_share_$n.log" 2>&1 || return 1
    n=$((1 - n))
  done
}
lane 0 "${datasets[@]}" &
a=$!
lane 1 "${datasets[@]}" &
b=$!
ok=1
wait "$a" || ok=0  # wait for both lanes, also when one has stopped
wait "$b" || ok=0
if [ "$ok" = 0 ]; then
  echo "paper_scale.sh: a lane stopped (see runs/paper_*_share_*.log); rerun to continue" >&2
  exit 1
fi
for dataset in "${datasets[@]}"; do  # everything trained: the reports and GAM battles
  nice -n 10 $CAPSGAN compare "configs/compare_paper_$dataset.yaml" >> "runs/paper_$dataset.log" 2>&1
done
