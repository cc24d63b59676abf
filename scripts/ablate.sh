#!/usr/bin/env bash
# Run an ablation (experiments/ablations/<NAME>.toml) over its seeds and summarise it.
#
#   bash scripts/ablate.sh delta                       # the erase-threshold sweep, seeds 0 1 2
#   bash scripts/ablate.sh delta --jobs 2              # two runs at a time (CPU threads or GPUs shared out)
#   bash scripts/ablate.sh fusion --seeds 0
#   bash scripts/ablate.sh delta --base experiments/cub_acol_vgg16.toml   # the same grid on CUB
#   bash scripts/ablate.sh delta --dry-run             # which runs exist, which are to do
#
# Finished runs are skipped and interrupted ones resumed, so the same command completes a grid.
# Results: runs/ablations/<NAME>/results.md and results.csv, under the current folder. The arguments
# are those of `python -m acol.ablate`.
set -euo pipefail
. "$(dirname "$0")/common.sh"
exec "$PYTHON" -m acol.ablate "$@"
