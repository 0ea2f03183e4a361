#!/usr/bin/env bash
# fp32 vs bf16 autocast training, quality per step, for both trainers of the own-images recipe, two seeds each.
#
# Tokenizer: cpu32-f4 at batch 64 on Fashion-MNIST, with the perceptual term (the shipped Fashion-MNIST features)
# and the GAN term from step TOK_STEPS/2, validation every TOK_STEPS/4 steps. Transformer: maskgit-cpu-8x8 at batch
# 32 on a given token store (for example the one benchmarks/own_images_recipe.sh made; a train split only, so no
# validation), then class agreement of 1,000 samples at CFG 2 by the shipped classifier. The fp32 runs go on core 0 and
# the bf16 runs on core 1, one thread each, side by side: the quality is what this compares (step times come from
# `benchmarks/trainer_profile.py --amp off,bf16`, run alone).
#
# Usage: benchmarks/precision_training.sh RUN_DIR TOKENS_DIR TOKENIZER_DIR
#   (env: TOK_STEPS=800 TR_STEPS=1600 SEEDS="1 2"; STAGES=tok or STAGES=mg for one trainer only; VAL_TOKENS=DIR a
#   token store of held-out images for the transformer's validation loss every TR_STEPS/8 steps; FP32_CORE=0 BF16_CORE=1
#   to place the lanes, e.g. both on one core while the other is busy; LANES=bf16 or LANES=fp32 for one lane only)
set -euo pipefail
R=${1:?run directory}
TOKENS=${2:?token store of the recipe}
TOKENIZER=${3:?the tokenizer that made the token store}
TOK_STEPS=${TOK_STEPS:-800}
TR_STEPS=${TR_STEPS:-1600}
SEEDS=${SEEDS:-"1 2"}
STAGES=${STAGES:-tok,mg}
FEATURES=${FEATURES:-src/maskgit/weights/fashion-mnist/features}
LANES=${LANES:-fp32,bf16}
mkdir -p "$R"

val=()
if [[ -n ${VAL_TOKENS:-} ]]; then val=(--val-tokens "$VAL_TOKENS" --eval-every $((TR_STEPS / 8))); fi

lane() {  # lane AMP CORE: every seed of one precision, on one core
  local amp=$1 core=$2 seed
  for seed in $SEEDS; do
    if [[ $STAGES == *tok* ]]; then
      OMP_NUM_THREADS=1 taskset -c "$core" maskgit train-tokenizer --data fashion-mnist --preset cpu32-f4 \
        --batch-size 64 --max-steps "$TOK_STEPS" --disc-start $((TOK_STEPS / 2)) --perceptual "features:$FEATURES" \
        --eval-every $((TOK_STEPS / 4)) --log-every 50 --seed "$seed" --amp "$amp" --out "$R/tok_${amp}_s$seed"
    fi
    [[ $STAGES == *mg* ]] || continue
    OMP_NUM_THREADS=1 taskset -c "$core" maskgit train --tokens "$TOKENS" --tokenizer "$TOKENIZER" "${val[@]}" \
      --preset maskgit-cpu-8x8 --batch-size 32 --lr 5e-4 --max-steps "$TR_STEPS" --warmup-steps $((TR_STEPS / 10)) \
      --log-every 50 --seed "$seed" --amp "$amp" --out "$R/mg_${amp}_s$seed"
    mkdir -p "$R/model_${amp}_s$seed"
    cp -r "$TOKENIZER" "$R/model_${amp}_s$seed/tokenizer"
    cp -r "$R/mg_${amp}_s$seed/final" "$R/model_${amp}_s$seed/maskgit"
    OMP_NUM_THREADS=1 taskset -c "$core" python3 benchmarks/class_agreement.py --model "$R/model_${amp}_s$seed" \
      --num 1000 --cfg 2 --json "$R/agreement_${amp}_s$seed.json"
  done
}

pids=()
if [[ $LANES == *fp32* ]]; then lane off "${FP32_CORE:-0}" > "$R/lane_fp32.log" 2>&1 & pids+=($!); fi
if [[ $LANES == *bf16* ]]; then lane bf16 "${BF16_CORE:-1}" > "$R/lane_bf16.log" 2>&1 & pids+=($!); fi
for pid in "${pids[@]}"; do wait "$pid"; done
python3 benchmarks/precision_table.py "$R"
