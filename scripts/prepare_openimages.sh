#!/usr/bin/env bash
# OpenImages30k (wsolevaluation's curated subset of OpenImages V5: 100 classes, instance masks) in the
# wsolevaluation format: images and masks (symlinks) under data/OpenImages/, metadata under
# data/metadata/OpenImages/. Nothing is downloaded.
#
# 1. Get the archives yourself: OpenImages_images.zip and OpenImages_annotations.zip (the masks),
#    linked from https://github.com/clovaai/wsolevaluation (README "OpenImages30k",
#    dataset/prepare_openimages.sh); the metadata is metadata/OpenImages/ of that repository.
# 2. Extract them into one folder, e.g.:
#      mkdir -p /datasets/OpenImages
#      unzip -d /datasets/OpenImages OpenImages_annotations.zip
#      unzip -d /datasets/OpenImages OpenImages_images.zip     # -> /datasets/OpenImages/{train,val,test}/
#      git clone https://github.com/clovaai/wsolevaluation /datasets/wsolevaluation
# 3. Run:
#      bash scripts/prepare_openimages.sh --source /datasets/OpenImages \
#        --metadata /datasets/wsolevaluation/metadata/OpenImages
#    --copy copies instead of linking. All options: bash scripts/prepare_openimages.sh -h
#
# Relative paths are relative to the current folder (the script runs where you stand).
# It ends with a check of every split (exit status 1 when a problem is found).
set -euo pipefail
. "$(dirname "$0")/common.sh"
if [[ $# -eq 0 ]]; then sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 2; fi
exec "$PYTHON" -m acol.datasets.prepare openimages "$@"
