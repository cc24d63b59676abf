#!/usr/bin/env bash
# The val-size study: the random search of experiments/ablations/val_size.toml (CAM and ACoL, the same
# 8 trials each as methods_search.toml) with k fully annotated val images per class choosing the trial
# and the box threshold (data.val_per_class=k; 0: the whole val split), then the chosen trial over
# seeds 0, 1, 2 on test. The training runs are the same for every k; each k runs in its own folder.
#
#   bash scripts/val_size.sh                   # k = 1 2 5 0
#   bash scripts/val_size.sh --jobs 2          # the arguments go to every `python -m acol.ablate` call
#   K="1 2" bash scripts/val_size.sh --dry-run
#
# Results: runs/val_size/k<k>/ablations/val_size/results.md (each k), and runs/val_size/results.md
# (the methods table of every k), under the current folder.
set -euo pipefail
. "$(dirname "$0")/common.sh"
summary=runs/val_size/results.md
mkdir -p runs/val_size
: > "$summary"
for k in ${K:-1 2 5 0}; do
    "$PYTHON" -m acol.ablate val_size "data.val_per_class=$k" "$@" --runs-dir "runs/val_size/k$k"
    results="runs/val_size/k$k/ablations/val_size/results.md"
    if [ -f "$results" ]; then  # its methods table: from the third line to the first blank one
        { echo "k = $k val images per class (0: all)"; echo; awk 'NR > 2 && /^$/ {exit} NR > 2' "$results"; echo; } >> "$summary"
    fi
done
echo "written: $summary"
