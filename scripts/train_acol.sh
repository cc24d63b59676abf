#!/usr/bin/env bash
# Train a WSOL model and print the final table.
#
#   bash scripts/train_acol.sh                                   # ACoL on the synthetic benchmark
#   bash scripts/train_acol.sh experiments/synthetic_cam.toml    # another experiment
#   bash scripts/train_acol.sh experiments/synthetic_acol.toml acol.threshold=0.7 --name thr0.7
#   bash ~/acol/scripts/train_acol.sh --config my.toml           # from any folder: my.toml is ./my.toml
#   NGPUS=4 bash scripts/train_acol.sh experiments/cub_acol_vgg16.toml      # 4 GPUs, one machine
#   NGPUS=2 bash scripts/train_acol.sh ...     # without GPUs: 2 CPU processes (gloo)
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 NGPUS=8 bash scripts/train_acol.sh ...   # on each node
#
# The arguments are those of `python -m acol.train` (--config, key=value overrides, --name, --resume
# auto); a first argument ending in .toml is the config; without one, experiments/synthetic_acol.toml
# of this repository. Relative paths are the current folder's, and so are the default data/ and runs/.
# The global batch size (train.global_batch_size) is split over all processes.
set -euo pipefail
. "$(dirname "$0")/common.sh"

CONFIG=(--config "$REPO/experiments/synthetic_acol.toml")
if [[ "${1:-}" == *.toml ]]; then CONFIG=(--config "$1"); shift
elif [[ " $* " == *" --config "* || " $* " == *" --config="* ]]; then CONFIG=(); fi

for var in NGPUS NNODES; do  # process counts: whole numbers >= 1, or one line saying what is wrong
  value=${!var:-1}
  if [[ ! "$value" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: $var must be a whole number >= 1 (processes); got '$value'" >&2; exit 2
  fi
done
# torchrun sets OMP_NUM_THREADS=1 per process unless told otherwise: share the cores instead.
NPROC=${NGPUS:-1}
if [[ -z "${OMP_NUM_THREADS:-}" ]]; then
  export OMP_NUM_THREADS=$(( $(nproc) / NPROC > 0 ? $(nproc) / NPROC : 1 ))
fi

if [[ "${NNODES:-1}" -gt 1 ]]; then
  exec "$PYTHON" -m acol.launch --nnodes="$NNODES" --node-rank="${NODE_RANK:?set NODE_RANK}" \
    --nproc-per-node="$NPROC" --rdzv-backend=c10d --rdzv-id="${RDZV_ID:-acol}" \
    --rdzv-endpoint="${MASTER_ADDR:?set MASTER_ADDR}:${MASTER_PORT:-29500}" \
    -m acol.train "${CONFIG[@]}" "$@"
elif [[ "$NPROC" -gt 1 ]]; then
  exec "$PYTHON" -m acol.launch --standalone --nproc-per-node="$NPROC" -m acol.train "${CONFIG[@]}" "$@"
else
  exec "$PYTHON" -m acol.train "${CONFIG[@]}" "$@"
fi
