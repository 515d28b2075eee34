#!/usr/bin/env bash
# Train on all GPUs of this machine (or N CPU processes) through `accelerate launch`.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/local.sh [--cpu N] [--zero 1|2] [--port P] [--dry-run] CONFIG [OVERRIDES...]
       launch/local.sh [--cpu N] [--zero 1|2] --resume RUN_DIR [OVERRIDES...]

Runs `capsgan train` data-parallel on one machine with `accelerate launch`:
  (default)   one process per visible GPU (CUDA_VISIBLE_DEVICES restricts them);
              1 process -> plain python (no launcher needed),
              N GPUs -> launch/accelerate/multi_gpu.yaml
  --cpu N     N CPU processes (gloo), GPUs hidden; N=1 runs plain python.
              Uses launch/accelerate/cpu.yaml, because `accelerate launch --cpu
              --num_processes N` silently starts only ONE process.
  --zero S    DeepSpeed ZeRO stage S (1 or 2) for both models
              (launch/accelerate/deepspeed_zeroS.yaml); combines with --cpu N.
  --port P    rendezvous port (default $MASTER_PORT, else a free port)
  --dry-run   print the command and exit
  -h, --help  this help

CONFIG and OVERRIDES go to `capsgan train` unchanged, e.g.
  bash launch/local.sh --cpu 2 configs/debug.yaml
  bash launch/local.sh configs/mnist_capsgan.yaml train.mixed_precision=bf16
  bash launch/local.sh --zero 2 configs/mnist_capsgan.yaml
Per-device batch is train.batch_real + train.batch_fake; the global batch is that times the
number of processes (docs/distributed.md). Environment: PYTHON (interpreter; default the
repo's .venv/bin/python, else python3), OMP_NUM_THREADS (CPU threads per process; default
cores / N with --cpu N). The command is printed before it runs.

Ctrl-C or SIGTERM: every process finishes its step and checkpoints; rank 0 prints the command that
continues this launch (the same launcher options with --resume RUN_DIR) and the script exits 75.
EOF
}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CPU=""
ZERO=""
PORT="${MASTER_PORT:-}"
DRY=0
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --cpu) CPU="${2:?--cpu needs a process count}"; shift 2 ;;
    --cpu=*) CPU="${1#*=}"; shift ;;
    --zero) ZERO="${2:?--zero needs a stage (1 or 2)}"; shift 2 ;;
    --zero=*) ZERO="${1#*=}"; shift ;;
    --port) PORT="${2:?--port needs a number}"; shift 2 ;;
    --port=*) PORT="${1#*=}"; shift ;;
    --dry-run) DRY=1; shift ;;
    *) ARGS+=("$1"); shift ;;
  esac
done

die() { echo "launch/local.sh: error: $*" >&2; exit 2; }
[ ${#ARGS[@]} -gt 0 ] || { usage >&2; die "missing CONFIG (e.g. configs/debug.yaml) or --resume RUN_DIR"; }
if [ -n "$CPU" ] && ! [[ "$CPU" =~ ^[1-9][0-9]*$ ]]; then die "--cpu $CPU: give a positive process count"; fi
if [ -n "$ZERO" ] && [[ "$ZERO" != 1 && "$ZERO" != 2 ]]; then die "--zero $ZERO: stage 1 or 2"; fi
[ -z "$PORT" ] || [[ "$PORT" =~ ^[0-9]+$ ]] || die "--port $PORT: give a port number"

if [ -z "${PYTHON:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
if [ -z "$PORT" ]; then  # a free port, so parallel runs on one machine do not collide
  PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's code, wherever it is installed

if [ -n "$CPU" ]; then
  NPROC="$CPU"
  export CUDA_VISIBLE_DEVICES=""  # CPU processes even on a GPU machine
  export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"  # else DeepSpeed logs "Setting accelerator to CPU" per process
  CORES="$(nproc 2>/dev/null || echo 1)"
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( CORES / NPROC > 0 ? CORES / NPROC : 1 ))}"
else
  NPROC="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')"
  [ "$NPROC" -gt 0 ] || die "no GPU visible; use --cpu N to train with N CPU processes"
fi

TRAIN=(-m capsgan_dist train "${ARGS[@]}")
if [ -n "$ZERO" ]; then
  CFG="$REPO/launch/accelerate/deepspeed_zero$ZERO.yaml"
elif [ "$NPROC" -eq 1 ]; then
  CFG=""
elif [ -n "$CPU" ]; then
  CFG="$REPO/launch/accelerate/cpu.yaml"
else
  CFG="$REPO/launch/accelerate/multi_gpu.yaml"
fi

if [ -z "$CFG" ]; then
  CMD=("$PYTHON" "${TRAIN[@]}")  # one process needs no launcher
else
  CMD=("$PYTHON" -m accelerate.commands.launch --config_file "$CFG" --num_processes "$NPROC"
       --num_machines 1 --main_process_port "$PORT" "${TRAIN[@]}")
fi

SHOWN=(PYTHONPATH="$PYTHONPATH")
[ -n "$CPU" ] && SHOWN+=(CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS="$OMP_NUM_THREADS" DS_ACCELERATOR="$DS_ACCELERATOR")
printf '+'; printf ' %q' "${SHOWN[@]}" "${CMD[@]}"; printf '\n'
[ "$DRY" -eq 1 ] && exit 0

# What continues this launch after a stop; rank 0 prints it with the run folder (capsgan_dist/cli.py).
RESUME=(bash launch/local.sh)
[ -z "$CPU" ] || RESUME+=(--cpu "$CPU")
[ -z "$ZERO" ] || RESUME+=(--zero "$ZERO")
export CAPSGAN_RESUME_CMD="${RESUME[*]} --resume {run}"
# On a stop the launcher narrates "Received 2 death signal" and "Sending process N closing signal":
# torch.distributed's logged warnings off (errors stay) unless you set TORCH_LOGS or LOGLEVEL.
export TORCH_LOGS="${TORCH_LOGS:--distributed}" LOGLEVEL="${LOGLEVEL:-ERROR}"
PREEMPTED_EXIT=75

# In the background so a trap can fire: Ctrl-C (or SIGTERM to this script) reaches the launcher,
# which passes it to every rank; each checkpoints and exits 75, which the launcher calls a failure.
SIGNALS=0
# shellcheck disable=SC2317,SC2329  # invoked by the traps below
on_signal() { SIGNALS=$((SIGNALS + 1)); kill -TERM "$PID" 2>/dev/null || true; }
trap on_signal INT TERM
"${CMD[@]}" &
PID=$!
seen=-1
rc=0
while [ "$seen" != "$SIGNALS" ]; do  # a trapped signal interrupts `wait`: wait again for the launcher
  seen=$SIGNALS
  rc=0
  wait "$PID" || rc=$?
done
if [ "$rc" != 0 ] && [ "$SIGNALS" != 0 ]; then
  exit "$PREEMPTED_EXIT"
fi
exit "$rc"
