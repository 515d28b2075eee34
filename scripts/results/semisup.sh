#!/bin/bash
# Semi-supervised classification: capsule D vs conv D vs supervised-only baselines, test error over seeds.
#
#   bash scripts/results/semisup.sh                 # the full experiment (hours per run on a CPU)
#   bash scripts/results/semisup.sh smoke           # the same commands at tiny scale (minutes)
#
# Groups: MNIST split (8,000 train / 2,000 test, ../shared/data/mnist) with 100 and 1,000 labels,
# Fashion-MNIST (official 60,000 / 10,000) with 100 labels. In each, per seed:
#   capsule_ssl  capsule D, semi-supervised (configs/*_semisup.yaml: CE + GAN loss, feature matching)
#   conv_ssl     conv D, the same
#   capsule_sup  capsule D on the labeled images alone (loss.unsup_weight=0: no GAN, same labeled batches)
#   conv_sup     conv D, the same
#   capsnet      the CapsNet classifier (capsgan classifier train) on the same labeled images
# Runs resume where they stopped (resume=auto); the table comes from scripts/results/semisup_table.py.
# Knobs (environment): SEEDS, STEPS, EVAL_EVERY, CAPSNET_VIEWS (labeled images the CapsNet sees), SETS,
# MODELS (which of the five above to train; the table needs all), OUT, EXTRA (overrides for every GAN run),
# RECORD (the record file; a variant with its own EXTRA wants its own OUT and RECORD).
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
export PYTHONPATH=$PWD WANDB_MODE=offline OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
CAP=".venv/bin/python -m capsgan_dist"
MNIST=../shared/data/mnist
FASHION=/usr/share/datasets/fashion-mnist

if [ "${1:-}" = smoke ]; then  # tiny models and few steps: proves every command runs, measures nothing
  SEEDS=${SEEDS:-0} STEPS=${STEPS:-20} EVAL_EVERY=${EVAL_EVERY:-10} CAPSNET_VIEWS=${CAPSNET_VIEWS:-128}
  OUT=${OUT:-runs/semisup_smoke} RECORD=${RECORD:-}
  EXTRA=${EXTRA:-"model.conv1_channels=16 model.conv1_kernel=5 model.primary_kernel=5 model.primary_channels=4
    model.primary_dim=4 model.caps_dim=8 model.routing_iters=2 model.g_widths=[32,16,8,3] model.d_widths=[8,16,32,32]
    train.sample_every=1000 tracking.grid_every=1000"}
fi
SEEDS=${SEEDS:-"0 1 2"}
STEPS=${STEPS:-10000}          # alternate schedule: 5,000 D and 5,000 G updates (the paper's iterations)
EVAL_EVERY=${EVAL_EVERY:-500}
CAPSNET_VIEWS=${CAPSNET_VIEWS:-80000}  # = 5,000 D updates x 16 labeled images: the D's labeled views
SETS=${SETS:-"mnist_100 mnist_1000 fashion_100"}
MODELS=${MODELS:-"capsule_ssl conv_ssl capsule_sup conv_sup capsnet"}  # a subset: split the work over cores
OUT=${OUT:-runs/semisup}
EXTRA=${EXTRA:-}
# Finished runs are recorded in a committed file and skipped later: the experiment takes several
# runs of this script on a CPU, and run folders do not outlive the machine. The smoke run records nothing.
RECORD=${RECORD-docs/data/semisup_runs.jsonl}
recorded() { [ -n "$RECORD" ] && [ -f "$RECORD" ] && grep -qF "\"key\": \"$1\"" "$RECORD"; }
# Each run is recorded as it finishes, so a stop loses at most the run in progress; lanes that
# finish together take turns on the record.
record_now() {
  [ -n "$RECORD" ] || return 0
  flock "$OUT/.record.lock" .venv/bin/python scripts/results/semisup_table.py "$OUT" --record "$RECORD" > /dev/null
}

for group in $SETS; do
  case $group in
    mnist_100)   cfg=configs/mnist_semisup.yaml;   data=$MNIST;   per_class=10 ;;
    mnist_1000)  cfg=configs/mnist_semisup.yaml;   data=$MNIST;   per_class=100 ;;
    fashion_100) cfg=configs/fashion_semisup.yaml; data=$FASHION; per_class=10 ;;
    *) echo "unknown group $group (mnist_100, mnist_1000, fashion_100)" >&2; exit 2 ;;
  esac
  for seed in $SEEDS; do
    for model in $MODELS; do
      [ "$model" = capsnet ] && continue  # trained below
      recorded "$group/$model/seed$seed" && { echo "$group/$model/seed$seed: recorded in $RECORD, skipped"; continue; }
      case $model in
        capsule_*) d=capsule ;;
        conv_*)    d=conv ;;
      esac
      case $model in
        *_ssl) mode=() ;;
        *_sup) mode=(loss.unsup_weight=0) ;;
      esac
      run=$OUT/$group/$model/seed$seed
      # shellcheck disable=SC2086  # EXTRA is a list of overrides
      /usr/bin/time -f "$run: %e s wall, %U s user" $CAP train $cfg data.name=idx data.root=$data \
        data.labels_per_class=$per_class model.discriminator=$d "${mode[@]}" seed=$seed \
        train.steps=$STEPS eval.every=$EVAL_EVERY train.run_dir=$run resume=auto tracking.backend=local \
        train.progress=false name=${group}_${model} $EXTRA
      record_now
    done
    clf=$OUT/$group/capsnet/seed$seed.safetensors
    if [[ " $MODELS " == *" capsnet "* ]] && [ ! -f "${clf%.safetensors}.json" ] && ! recorded "$group/capsnet/seed$seed"; then
      epochs=$(python3 -c "print($CAPSNET_VIEWS / (10 * $per_class))")
      /usr/bin/time -f "$clf: %e s wall, %U s user" $CAP classifier train --data $data --arch capsnet \
        --labels-per-class $per_class --seed "$seed" --split-seed 0 --holdout 2000 --epochs "$epochs" --out "$clf"
      record_now
    fi
  done
done
.venv/bin/python scripts/results/semisup_table.py "$OUT" ${RECORD:+--record "$RECORD"}
