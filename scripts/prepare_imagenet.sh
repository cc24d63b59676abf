#!/usr/bin/env bash
# ILSVRC 2012 (train; val as test) and ImageNetV2 threshold0.7 (val) in the wsolevaluation format:
# images (symlinks) under data/ILSVRC/{train,val,val2}/, metadata under data/metadata/ILSVRC/.
# Nothing is downloaded.
#
# 1. Get the archives yourself (an image-net.org account is needed):
#      ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and the validation bounding boxes
#      (ILSVRC2012_bbox_val_v3.tgz): https://image-net.org/download.php
#      ImageNetV2 threshold0.7 (wsolevaluation's val):
#        https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main/imagenetv2-threshold0.7.tar.gz
#      its boxes, metadata/ILSVRC/val/ of https://github.com/clovaai/wsolevaluation
#      (see its dataset/prepare_imagenet.sh)
# 2. Extract them, e.g. under /datasets:
#      mkdir -p /datasets/ILSVRC2012_img_train && tar xf ILSVRC2012_img_train.tar -C /datasets/ILSVRC2012_img_train
#      cd /datasets/ILSVRC2012_img_train && for f in n*.tar; do mkdir -p "${f%.tar}" && tar xf "$f" -C "${f%.tar}"; done
#      mkdir -p /datasets/ILSVRC2012_img_val && tar xf ILSVRC2012_img_val.tar -C /datasets/ILSVRC2012_img_val
#      tar xzf ILSVRC2012_bbox_val_v3.tgz -C /datasets             # -> /datasets/val/ILSVRC2012_val_*.xml
#      tar xzf imagenetv2-threshold0.7.tar.gz -C /datasets         # -> /datasets/imagenetv2-threshold0.7*/
#      git clone https://github.com/clovaai/wsolevaluation /datasets/wsolevaluation
# 3. Run:
#      bash scripts/prepare_imagenet.sh --train /datasets/ILSVRC2012_img_train \
#        --val /datasets/ILSVRC2012_img_val --val-annotations /datasets/val \
#        --val-source /datasets/imagenetv2-threshold0.7 --val-metadata /datasets/wsolevaluation/metadata/ILSVRC/val
#    The class index is the sorted order of the train folders (--synsets FILE for another order);
#    --train-sizes also writes train/image_sizes.txt (slow); --copy copies instead of linking.
#    All options: bash scripts/prepare_imagenet.sh -h
#
# Relative paths are relative to the current folder (the script runs where you stand).
# It ends with a check of every split (exit status 1 when a problem is found).
set -euo pipefail
. "$(dirname "$0")/common.sh"
if [[ $# -eq 0 ]]; then sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 2; fi
exec "$PYTHON" -m acol.datasets.prepare ilsvrc "$@"
