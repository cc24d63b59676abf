#!/usr/bin/env bash
# Train a WSOL model and print the final table.
#
#   bash scripts/train_acol.sh                                   # ACoL on the synthetic benchmark
#   bash scripts/train_acol.sh experiments/synthetic_cam.toml    # another experiment
#   bash scripts/train_acol.sh experiments/synthetic_acol.toml acol.threshold=0.7 --name thr0.7
#   NGPUS=4 bash scripts/train_acol.sh experiments/cub_acol_vgg16.toml      # 4 GPUs, one machine
#   NGPUS=2 bash scripts/train_acol.sh ...     # without GPUs: 2 CPU processes (gloo)
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 NGPUS=8 bash scripts/train_acol.sh ...   # on each node
#
# Everything after the config is passed to `python -m acol.train` (key=value overrides, --name,
# --resume auto). The global batch size (train.global_batch_size) is split over all processes.
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=experiments/synthetic_acol.toml
if [[ "${1:-}" == *.toml ]]; then CONFIG=$1; shift; fi
PYTHON=${PYTHON:-python}

# torchrun sets OMP_NUM_THREADS=1 per process unless told otherwise: share the cores instead.
NPROC=${NGPUS:-1}
if [[ -z "${OMP_NUM_THREADS:-}" ]]; then
  export OMP_NUM_THREADS=$(( $(nproc) / NPROC > 0 ? $(nproc) / NPROC : 1 ))
fi

if [[ "${NNODES:-1}" -gt 1 ]]; then
  exec "$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --node-rank="${NODE_RANK:?set NODE_RANK}" \
    --nproc-per-node="$NPROC" --rdzv-backend=c10d --rdzv-id="${RDZV_ID:-acol}" \
    --rdzv-endpoint="${MASTER_ADDR:?set MASTER_ADDR}:${MASTER_PORT:-29500}" \
    -m acol.train --config "$CONFIG" "$@"
elif [[ "$NPROC" -gt 1 ]]; then
  exec "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node="$NPROC" -m acol.train --config "$CONFIG" "$@"
else
  exec "$PYTHON" -m acol.train --config "$CONFIG" "$@"
fi
