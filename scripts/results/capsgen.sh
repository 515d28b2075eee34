#!/bin/bash
# The capsule-generator experiment (docs/design.md, "Capsule generator"): the four generator x
# discriminator pairings of configs/compare_generators_mnist.yaml (and the capsule D with the DCGAN
# init) on the 10,000 MNIST digits,
# 3 seeds x 3,000 steps each, FID every 250 steps. One single-threaded lane per core: seeds 0 and 1
# at once, seed 2 on whichever core frees first, then the report of all three seeds (table.md,
# fid.png, grid_step_*.png, compare.json in $OUT). Finished runs are skipped and stopped ones
# resumed, so an interrupted experiment continues when the script is run again.
#
#   scripts/results/capsgen.sh                   # the experiment
#   OUT=runs/x CLASSIFIER=runs/x/lenet.safetensors CLASSIFIER_EPOCHS=1 \
#     scripts/results/capsgen.sh steps=20 eval_every=10 eval_n=200 grid_steps=[20]   # a smoke run
#
# Arguments are extra `capsgan compare` overrides. Environment: OUT (default
# runs/compare_generators_mnist), CLASSIFIER (LeNet for the metrics, trained here if missing;
# default runs/classifiers/mnist-lenet.safetensors), CLASSIFIER_EPOCHS (default 5), SEEDS (default
# "0 1 2"). Each lane's log, with /usr/bin/time's CPU time and peak memory: $OUT/lane_seed<N>.log.
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
export PYTHONPATH=$PWD WANDB_MODE=offline OMP_NUM_THREADS=1
CAP=(.venv/bin/python -m capsgan_dist)
OUT=${OUT:-runs/compare_generators_mnist}
CLASSIFIER=${CLASSIFIER:-runs/classifiers/mnist-lenet.safetensors}
read -r -a SEED_LIST <<< "${SEEDS:-0 1 2}"
ARGS=(configs/compare_generators_mnist.yaml "out_dir=$OUT" "classifier=$CLASSIFIER" "$@")
mkdir -p "$OUT"

if [ ! -f "$CLASSIFIER" ]; then
  "${CAP[@]}" classifier train --data ../shared/data/mnist --arch lenet --epochs "${CLASSIFIER_EPOCHS:-5}" \
    --out "$CLASSIFIER"
fi

lane() {  # one seed, every model, one after another
  /usr/bin/time -v "${CAP[@]}" compare "${ARGS[@]}" "seeds=[$1]" > "$OUT/lane_seed$1.log" 2>&1
}

running=0
for seed in "${SEED_LIST[@]}"; do
  if [ "$running" -ge 2 ]; then  # both cores busy: wait for a lane to end
    wait -n
    running=$((running - 1))
  fi
  lane "$seed" &
  running=$((running + 1))
done
wait  # the last lanes (a lane that failed says why in its log; the step below trains what is unfinished)

seeds=$(IFS=,; echo "${SEED_LIST[*]}")
"${CAP[@]}" compare "${ARGS[@]}" "seeds=[$seeds]"  # all runs finished: writes the report only
