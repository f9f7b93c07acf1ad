#!/usr/bin/env bash
# Download and unpack COCO 2017 (images + annotations) into the layout distill reads.
# Usage: datasets/get_coco.sh /data/coco     (about 19 GB of downloads, 26 GB unpacked)
set -euo pipefail
root=${1:?usage: $0 ROOT}
mkdir -p "$root"
cd "$root"
for zip in zips/train2017.zip zips/val2017.zip annotations/annotations_trainval2017.zip; do
  name=$(basename "$zip")
  [ -f "$name" ] || curl -fL --retry 3 -o "$name" "http://images.cocodataset.org/$zip"
  unzip -q -n "$name"
done
echo "COCO 2017 is in $root; check it with: distill data check $root --split train2017"
