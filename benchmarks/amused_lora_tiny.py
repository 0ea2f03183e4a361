"""A tiny text-conditioned run end to end on a CPU: `maskgit train --init` from a random tiny aMUSEd-layout model on 200
captioned images with `--lora 4`, loss going down, samples written.

    python benchmarks/amused_lora_tiny.py                        # writes runs/amused_lora_tiny/, prints the numbers
    python benchmarks/amused_lora_tiny.py --steps 20 --images 40  # a seconds-long check of the script

The model is random (64 px, 8x8 tokens of 256 codes; a 2-layer U-ViT; a 2-layer CLIP text tower with a
character-level tokenizer), saved in diffusers' aMUSEd layout with the project's own save functions and
transformers' save_pretrained. The images are drawn: a coloured circle, square or triangle on a light or dark
background, each captioned ("a red circle on a dark background") by a .txt beside it (half) or captions.jsonl (the
other half). The run is the command a user types (printed), one thread per process; the summary is the mean loss of
the first and last 10 logged steps, the wall time, the adapter's size and trainable parameter count."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 70, 220), "yellow": (235, 215, 40)}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = {"light": (235, 235, 235), "dark": (30, 30, 30)}
UVIT = dict(hidden_size=64, use_bias=False, hidden_dropout=0.0, cond_embed_dim=32, micro_cond_encode_dim=8,
            micro_cond_embed_dim=40, encoder_hidden_size=48, vocab_size=257, codebook_size=256, in_channels=32,
            block_out_channels=32, num_res_blocks=1, downsample=False, upsample=False, block_num_heads=2,
            num_hidden_layers=2, num_attention_heads=4, attention_dropout=0.0, intermediate_size=128,
            layer_norm_eps=1e-6, ln_elementwise_affine=True, sample_size=8)
VQ = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
          up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[16, 16, 32, 32], layers_per_block=1,
          act_fn="silu", latent_channels=16, sample_size=64, num_vq_embeddings=256, norm_num_groups=8,
          vq_embed_dim=16, scaling_factor=0.18215, norm_type="group", mid_block_add_attention=False,
          lookup_from_codebook=True, force_upcast=False)
TEXT_LEN = 48


def build_model(root: Path, seed: int = 0) -> Path:
    """A random tiny aMUSEd folder: model_index.json, scheduler/, vqvae/, transformer/, text_encoder/, tokenizer/."""
    import torch
    import transformers

    from maskgit.families.amused import write_char_clip_tokenizer
    from maskgit.models.amused import UVit2D, UVit2DConfig
    from maskgit.models.amused_vq import AmusedVQ, AmusedVQConfig
    from maskgit.storage.amused import save_uvit, save_vq
    torch.manual_seed(seed)
    save_uvit(UVit2D(UVit2DConfig.from_dict(UVIT)), root / "transformer")
    save_vq(AmusedVQ(AmusedVQConfig.from_dict(VQ)), root / "vqvae")
    vocab = write_char_clip_tokenizer(root / "tokenizer", TEXT_LEN).get_vocab()
    cfg = transformers.CLIPTextConfig(vocab_size=len(vocab), hidden_size=UVIT["encoder_hidden_size"],
                                      intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                                      max_position_embeddings=TEXT_LEN, projection_dim=UVIT["cond_embed_dim"],
                                      bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                                      pad_token_id=vocab["<|endoftext|>"])
    transformers.CLIPTextModelWithProjection(cfg).save_pretrained(root / "text_encoder", safe_serialization=True)
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "AmusedScheduler", "mask_token_id": UVIT["vocab_size"] - 1, "masking_schedule": "cosine"}))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "AmusedPipeline"}))
    return root


def draw_images(folder: Path, n: int, size: int = 64, seed: int = 0) -> Path:
    """``n`` drawn shapes with captions: .txt files for the odd ones, captions.jsonl for the even ones."""
    import numpy as np
    from PIL import Image, ImageDraw
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        colour, shape, bg = (list(d)[int(rng.integers(len(d)))] for d in (COLOURS, SHAPES, BACKGROUNDS))
        img = Image.new("RGB", (size, size), BACKGROUNDS[bg])
        r = int(rng.integers(size // 5, size // 3))
        cx, cy = (int(v) for v in rng.integers(r, size - r, size=2))
        box = (cx - r, cy - r, cx + r, cy + r)
        d = ImageDraw.Draw(img)
        if shape == "circle":
            d.ellipse(box, fill=COLOURS[colour])
        elif shape == "square":
            d.rectangle(box, fill=COLOURS[colour])
        else:
            d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLOURS[colour])
        img.save(folder / f"{i:04d}.png")
        caption = f"a {colour} {shape} on a {bg} background"
        if i % 2:
            (folder / f"{i:04d}.txt").write_text(caption + "\n")
        else:
            lines.append(json.dumps({"file_name": f"{i:04d}.png", "text": caption}))
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/amused_lora_tiny")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", default="2e-3")
    args = ap.parse_args()
    out = Path(args.out)
    import shutil
    shutil.rmtree(out, ignore_errors=True)
    model, images, run = build_model(out / "amused-tiny"), draw_images(out / "images", args.images), out / "run"
    cmd = ["maskgit", "train", "--init", str(model), "--data", str(images), "--lora", "4", "--max-steps",
           str(args.steps), "--batch-size", "16", "--lr", args.lr, "--warmup-steps", "20", "--log-every", "1",
           "--save-every", "100", "--out", str(run), "--device", "cpu"]
    print("$", " ".join(cmd), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "maskgit", *cmd[1:]], check=True, env=env)
    wall = time.time() - t0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    from safetensors.torch import load_file
    adapter = run / "final" / "adapter_model.safetensors"
    summary = {"images": args.images, "steps": rows[-1]["step"], "batch": 16,
               "loss_first10": round(sum(r["loss"] for r in rows[:10]) / 10, 4),
               "loss_last10": round(sum(r["loss"] for r in rows[-10:]) / 10, 4),
               "masked_acc_last10": round(sum(r["masked_acc"] for r in rows[-10:]) / 10, 4),
               "train_s": rows[-1]["elapsed_s"], "command_wall_s": round(wall, 1),
               "adapter_bytes": adapter.stat().st_size,
               "trainable_params": sum(t.numel() for t in load_file(str(adapter)).values()),
               "samples": str(run / "samples.png")}
    print(json.dumps(summary, indent=1))
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
