#!/usr/bin/env bash
# Cross-attention vs prefix text tokens on shapes: one tokenizer and token stores, then the same small text model
# (muse-tiny-8x8) trained for the same wall-clock budget on one core in each mode, then attribute binding for each
# (the section "Cross-attention vs prefix text tokens" of benchmarks/RESULTS.md).
# Usage: benchmarks/compare_text_modes.sh RUN_DIR   (env: TOK_MIN, TR_MIN, CORE, TEXT_ENCODER as train_text.sh)
set -euo pipefail
RUN=${1:?run dir}
CORE=${CORE:-0}
export OMP_NUM_THREADS=1 DATA=shapes TOK_PRESET=rgb32-f4-small TR_PRESET=muse-tiny-8x8 TR_BS=128 TR_LR=1e-3 \
  TR_WARMUP=200 BIND_N=${BIND_N:-200} BIND_STEPS=8,12 BIND_CFG=0,2 RESULTS=${RESULTS:-$RUN/results_section.md}
export TEXT_ENCODER=${TEXT_ENCODER:-minilm} TR_MIN=${TR_MIN:-17}
UNTIL=tokens TOK_MIN=${TOK_MIN:-15} TOK_BS=64 TOK_LR=3e-4 taskset -c "$CORE" bash benchmarks/train_text.sh "$RUN" cpu
for mode in cross prefix; do
  TEXT_MODE=$mode TAG=$mode taskset -c "$CORE" bash benchmarks/train_text.sh "$RUN" cpu
done
