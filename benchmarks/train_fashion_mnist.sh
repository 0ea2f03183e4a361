#!/usr/bin/env bash
# Train every shipped Fashion-MNIST model with the project's own commands, in order:
# feature network -> tokenizer -> token stores -> MaskGIT -> AR baseline (same preset and budget).
# Usage: benchmarks/train_fashion_mnist.sh RUN_DIR [DEVICE]
# Budgets are wall-clock minutes (env vars), so the same script fits a GPU lease or a long CPU run.
set -euo pipefail
RUN=${1:?run dir}; DEV=${2:-auto}
FEAT_EPOCHS=${FEAT_EPOCHS:-8}
TOK_MIN=${TOK_MIN:-3}; TOK_STEPS=${TOK_STEPS:-100000}; TOK_BS=${TOK_BS:-256}; TOK_PRESET=${TOK_PRESET:-fmnist-f4}
TR_MIN=${TR_MIN:-2}; TR_STEPS=${TR_STEPS:-100000}; TR_BS=${TR_BS:-256}; TR_PRESET=${TR_PRESET:-maskgit-small-8x8}
DISC_START=${DISC_START:-2000}
MG="python3 -m maskgit"
mkdir -p "$RUN"
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 ))s] $*" | tee -a "$RUN/timeline.txt"; }

stamp features
$MG train-features --data fashion-mnist --out "$RUN/features" --epochs "$FEAT_EPOCHS" --batch-size 256 \
  --device "$DEV" --quiet 2>&1 | tee "$RUN/features.log"

stamp tokenizer
$MG train-tokenizer --data fashion-mnist --preset "$TOK_PRESET" --out "$RUN/tokenizer" \
  --perceptual "features:$RUN/features" --batch-size "$TOK_BS" --lr 2e-4 --warmup-steps 500 \
  --lr-schedule constant --ema 0.999 --max-steps "$TOK_STEPS" --max-minutes "$TOK_MIN" \
  --disc-start "$DISC_START" --save-every 2000 --log-every 100 --device "$DEV" 2>&1 | tail -3 | tee "$RUN/tokenizer.log"
$MG reconstruct --model "$RUN/tokenizer/final" --data fashion-mnist --split test -n 10000 \
  --features "$RUN/features" --json "$RUN/tokenizer_metrics.json" --out "$RUN/recon.png" --device "$DEV"

stamp tokenize
$MG tokenize --model "$RUN/tokenizer/final" --data fashion-mnist --split train --out "$RUN/tokens-train" --device "$DEV"
$MG tokenize --model "$RUN/tokenizer/final" --data fashion-mnist --split test --out "$RUN/tokens-test" --device "$DEV"

for arch in maskgit ar; do
  stamp "$arch"
  $MG train --arch "$arch" --tokens "$RUN/tokens-train" --val-tokens "$RUN/tokens-test" \
    --tokenizer "$RUN/tokenizer/final" --preset "$TR_PRESET" --out "$RUN/$arch" --batch-size "$TR_BS" \
    --lr 4e-4 --warmup-steps 1000 --lr-schedule constant --ema 0.999 --max-steps "$TR_STEPS" \
    --max-minutes "$TR_MIN" --save-every 5000 --log-every 100 --device "$DEV" 2>&1 | tail -3 | tee "$RUN/$arch.log"
done
stamp done
