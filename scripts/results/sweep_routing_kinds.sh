#!/bin/bash
# Routing kinds: dynamic, em, attention x seeds 0-2, at the budget of the routing-iterations sweep
# (sweep_routing.sh: 2000 steps, FID every 250 on 2000 images, the same reduced D). em's matrix
# capsules need 16-D primary and routed capsules, so every kind runs with primary_dim=16 and
# caps_dim=16 here (the iterations sweep used caps_dim=8). Arguments are extra sweep overrides
# (num_cpus=1: one trial at a time).
cd "$(dirname "$0")/../.." || exit  # the repository root
export PYTHONPATH=$PWD WANDB_MODE=offline OMP_NUM_THREADS=1
/usr/bin/time -v .venv/bin/python -m capsgan_dist sweep configs/sweep_routing.yaml name=mnist_routing_kinds \
  data.name=idx data.root=../shared/data/mnist train.log_every=20 tracking.backend=local train.progress=false \
  model.conv1_channels=32 model.primary_channels=8 model.primary_dim=16 model.caps_dim=16 model.dense=32 "$@"
.venv/bin/python scripts/results/sweep_fids.py sweeps/mnist_routing_kinds --plot sweeps/mnist_routing_kinds/fid.png
