"""Copy a training run's final models into a shipped-model directory, weights stored as fp16 (half the bytes;
loaded back as fp32). Usage: python benchmarks/export_shipped.py RUN_DIR DEST_DIR"""

import sys
from pathlib import Path

import torch

from maskgit.storage.checkpoint import load_model, read_config, save_model

run, dest = Path(sys.argv[1]), Path(sys.argv[2])
for name, src in (("features", run / "features"), ("tokenizer", run / "tokenizer" / "final"),
                  ("maskgit", run / "maskgit" / "final"), ("ar", run / "ar" / "final")):
    if not (src / "config.json").exists():
        print(f"skip {name}: {src} missing")
        continue
    model = load_model(src)
    meta = read_config(src).get("meta", {})
    meta.pop("tokenizer", None)
    meta.pop("tokens", None)
    save_model(model, dest / name, meta={**meta, "stored_dtype": "float16"}, dtype=torch.float16)
    print(f"exported {name} -> {dest / name}")
