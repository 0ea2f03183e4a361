#!/usr/bin/env bash
# The README's "Train on your own images" CPU recipe, run as written on Fashion-MNIST exported as PNGs into class
# folders, then class agreement of 1,000 samples by the shipped Fashion-MNIST classifier.
# Usage: benchmarks/own_images_recipe.sh RUN_DIR
set -euo pipefail
R=${1:?run directory}
mkdir -p "$R"
T0=$(date +%s)
[ -d "$R/folder/train" ] || python3 benchmarks/export_image_folder.py --data fashion-mnist --out "$R/folder"
T1=$(date +%s)
DIR=$R/folder
maskgit train-tokenizer --data imagefolder:$DIR --preset cpu32-f4 --batch-size 64 --max-steps 2000 --out $R/tok
maskgit tokenize --model $R/tok/final --data imagefolder:$DIR --split train --out $R/tokens
maskgit train --tokens $R/tokens --tokenizer $R/tok/final --preset maskgit-cpu-8x8 --batch-size 32 \
  --lr 5e-4 --max-steps 3200 --warmup-steps 320 --out $R/mg
mkdir -p $R/model && cp -r $R/tok/final $R/model/tokenizer && cp -r $R/mg/final $R/model/maskgit
maskgit sample --model $R/model --labels 0,1,2,3,4,5,6,7,8,9 --num 8 --cfg 2 --out $R/grid.png
T2=$(date +%s)
echo "export: $((T1 - T0)) s; recipe (train-tokenizer + tokenize + train + sample): $((T2 - T1)) s"
for cfg in 0 1 2; do
  python3 benchmarks/class_agreement.py --model $R/model --num 1000 --cfg $cfg --json $R/agreement_cfg$cfg.json
done
