#!/usr/bin/env bash
# CUB-200-2011 (train, test) and CUBV2 (val) in the wsolevaluation format: images (symlinks) under
# data/CUB/, metadata under data/metadata/CUB/{train,val,test}/. Nothing is downloaded.
#
# 1. Get the archives yourself:
#      CUB-200-2011 (CUB_200_2011.tgz): https://www.vision.caltech.edu/datasets/cub_200_2011/
#      CUBV2 (CUBV2.tar, wsolevaluation's val) and its metadata (metadata/CUB/val/):
#        https://github.com/clovaai/wsolevaluation  (README "CUBV2", dataset/prepare_cub.sh)
# 2. Extract them, e.g. under /datasets:
#      tar xzf CUB_200_2011.tgz -C /datasets                      # -> /datasets/CUB_200_2011/
#      mkdir -p /datasets/CUBV2 && tar xf CUBV2.tar -C /datasets/CUBV2
#      git clone https://github.com/clovaai/wsolevaluation /datasets/wsolevaluation
# 3. Run:
#      bash scripts/prepare_cub.sh --source /datasets/CUB_200_2011 --val-source /datasets/CUBV2 \
#        --val-metadata /datasets/wsolevaluation/metadata/CUB/val
#    Without CUBV2, --val-from-train 5 holds out 5 train images per class (NOT the wsolevaluation
#    protocol). --copy copies instead of linking; --metadata /datasets/wsolevaluation/metadata/CUB
#    uses wsolevaluation's metadata for every split. All options: bash scripts/prepare_cub.sh -h
#
# Relative paths are relative to the current folder (the script runs where you stand).
# It ends with a check of every split (exit status 1 when a problem is found).
set -euo pipefail
. "$(dirname "$0")/common.sh"
if [[ $# -eq 0 ]]; then sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 2; fi
exec "$PYTHON" -m acol.datasets.prepare cub "$@"
