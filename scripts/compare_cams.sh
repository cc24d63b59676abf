#!/usr/bin/env bash
# In-forward ACoL maps vs post-hoc CAM and Grad-CAM-family maps on the synthetic benchmark.
#
#   bash scripts/compare_cams.sh                      # seeds 0 1 2: train what is missing, then compare
#   SEEDS="0" bash scripts/compare_cams.sh            # one seed
#   bash scripts/compare_cams.sh --methods inforward,cam,gradcam --target pred
#
# Trains runs/synthetic_acol-s<seed> and runs/synthetic_cam-s<seed> with scripts/train_acol.sh where
# their results.json is missing, then runs `python -m acol.compare` on them (arguments are passed on)
# and writes runs/compare/{results.md,results.csv,results.jsonl,grid.png} and TensorBoard events.
# data/ and runs/ are those of the current folder.
set -euo pipefail
. "$(dirname "$0")/common.sh"
# A signal to the group (Ctrl-C, `timeout`, a scheduler) reaches the trainer too: wait for it to write its
# checkpoint and its line, then end with its status (without a trap, bash would end first).
trap 'exit 130' INT
trap 'exit 143' TERM
for seed in ${SEEDS:-0 1 2}; do
  [[ "$seed" =~ ^[0-9]+$ ]] || { echo "error: SEEDS must be whole numbers >= 0; got '$seed'" >&2; exit 2; }
done
# The comparison's arguments are checked before anything trains (a typo costs one line, not six runs).
"$PYTHON" -c 'import sys; from acol.compare import parse_args; parse_args(sys.argv[1:])' "$@"
RUNS=()
for seed in ${SEEDS:-0 1 2}; do
  for method in acol cam; do
    run=runs/synthetic_${method}-s${seed}
    if [[ ! -f $run/results.json ]]; then
      if [[ -d $run ]]; then resume=(--resume auto); else resume=(); fi
      bash "$REPO/scripts/train_acol.sh" "$REPO/experiments/synthetic_${method}.toml" "train.seed=${seed}" "${resume[@]}"
    fi
    RUNS+=("$run")
  done
done
exec "$PYTHON" -m acol.compare "${RUNS[@]}" "$@"
