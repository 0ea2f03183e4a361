#!/usr/bin/env bash
# Emoji text-to-image with the project's own commands, sized for a CPU: tokenizer (rgb32-f4-small, 8x8 tokens of
# 32 px glyphs) -> token store + MiniLM caption embeddings -> text-conditioned MaskGIT (muse-small-8x8)
# -> a PNG of samples for a few prompts.  Usage: benchmarks/train_emoji.sh RUN_DIR [DEVICE]
# Budgets are wall-clock minutes (env vars); every stage is resumable (re-run the script: finished stages are skipped,
# interrupted training continues from its last checkpoint). UNTIL=tokens stops after the token store.
set -euo pipefail
RUN=${1:?run dir}; DEV=${2:-auto}
TOK_MIN=${TOK_MIN:-35}; TOK_PRESET=${TOK_PRESET:-rgb32-f4-small}; TOK_BS=${TOK_BS:-32}
TR_MIN=${TR_MIN:-45}; TR_PRESET=${TR_PRESET:-muse-small-8x8}; TR_BS=${TR_BS:-32}
TEXT_ENCODER=${TEXT_ENCODER:-minilm}
TEXT_MODE=${TEXT_MODE:-}  # empty = the preset's (prefix); set it to the mode of a run you resume
OUT_PNG=${OUT_PNG:-$RUN/emoji_samples.png}
MG="python3 -m maskgit"
mkdir -p "$RUN"
t0=$(date +%s)
stamp() { echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - t0 ))s] $*" | tee -a "$RUN/timeline.txt"; }
resume() { [ -d "$1/checkpoints" ] && [ -n "$(ls -A "$1/checkpoints" 2>/dev/null)" ] && echo --resume || true; }

if [ ! -f "$RUN/tokenizer/final/model.safetensors" ]; then
  stamp tokenizer
  $MG train-tokenizer --data emoji --preset "$TOK_PRESET" --out "$RUN/tokenizer" --perceptual none \
    --batch-size "$TOK_BS" --lr 3e-4 --warmup-steps 200 --lr-schedule constant --ema 0.995 \
    --max-minutes "$TOK_MIN" --max-steps 1000000 --disc-start 100000000 --save-every 500 --log-every 200 \
    --device "$DEV" $(resume "$RUN/tokenizer") 2>&1 | tail -2 | tee -a "$RUN/tokenizer.log"
fi
if [ ! -f "$RUN/tokenizer_metrics.json" ]; then
  $MG reconstruct --model "$RUN/tokenizer/final" --data emoji --split train -n 1393 \
    --json "$RUN/tokenizer_metrics.json" --out "$RUN/recon.png" --device "$DEV" | tee "$RUN/reconstruct.log"
fi
if [ ! -d "$RUN/tokens" ]; then
  stamp tokenize
  $MG tokenize --model "$RUN/tokenizer/final" --data emoji --split train --out "$RUN/tokens" \
    --text-encoder "$TEXT_ENCODER" --device "$DEV"
fi
[ "${UNTIL:-}" = tokens ] && { stamp "stopped after the token store (UNTIL=tokens)"; exit 0; }
if [ ! -f "$RUN/muse/final/model.safetensors" ]; then
  stamp maskgit
  $MG train --tokens "$RUN/tokens" --tokenizer "$RUN/tokenizer/final" --preset "$TR_PRESET" --text-encoder "$TEXT_ENCODER" ${TEXT_MODE:+--text-mode "$TEXT_MODE"} --out "$RUN/muse" \
    --batch-size "$TR_BS" --lr 5e-4 --warmup-steps 300 --lr-schedule constant --ema 0.995 --cond-dropout 0.1 \
    --max-minutes "$TR_MIN" --max-steps 1000000 --save-every 500 --log-every 200 --device "$DEV" \
    $(resume "$RUN/muse") 2>&1 | tail -2 | tee -a "$RUN/maskgit.log"
fi
stamp samples
$MG sample --model "$RUN/muse/final" --prompt "grinning face" --prompt "heavy black heart" --prompt "rocket" \
  --prompt "cat face" --prompt "pile of poo" --prompt "fire" --prompt "green apple" --prompt "christmas tree" \
  --num 4 --cfg 2 --steps 12 --seed 0 --out "$OUT_PNG" --device "$DEV"
stamp done
