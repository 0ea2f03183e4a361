"""Text-to-image speed of aMUSEd: diffusers' AmusedPipeline next to ours (fp32, bf16, int8) on the same random
weights at the amused-256 size (U-ViT 22 layers x 1024, 16x16 tokens, 8192 codes; VQ 5 levels; CLIP-L/14 text
encoder), 12 steps, CFG on (guidance 10 = our cfg 9), batch 1 and 4, s/image and peak memory, in one run.

    pip install diffusers   # the reference, installed at benchmark time only
    python benchmarks/amused_speed.py                 # amused-256 size
    python benchmarks/amused_speed.py --size tiny     # a seconds-long check of the script

The weights are random (the Hub is not reachable here); the tokenizer is a character-level CLIP tokenizer (the
released BPE vocabulary is not offline), which changes no cost that matters: prompts are padded to 77 tokens either
way. Each variant runs in its own process (peak RSS = that variant alone), after one warm-up call at the smallest batch;
the rounds are the median of --rounds calls."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

UVIT = {  # transformer/config.json of amused-256 (public values)
    "256": dict(hidden_size=1024, use_bias=False, hidden_dropout=0.0, cond_embed_dim=768, micro_cond_encode_dim=256,
                micro_cond_embed_dim=1280, encoder_hidden_size=768, vocab_size=8256, codebook_size=8192,
                in_channels=768, block_out_channels=768, num_res_blocks=3, downsample=False, upsample=False,
                block_num_heads=12, num_hidden_layers=22, num_attention_heads=16, attention_dropout=0.0,
                intermediate_size=2816, layer_norm_eps=1e-6, ln_elementwise_affine=True, sample_size=16),
    "tiny": dict(hidden_size=32, use_bias=False, hidden_dropout=0.0, cond_embed_dim=24, micro_cond_encode_dim=2,
                 micro_cond_embed_dim=10, encoder_hidden_size=32, vocab_size=33, codebook_size=32, in_channels=16,
                 block_out_channels=16, num_res_blocks=1, downsample=False, upsample=False, block_num_heads=2,
                 num_hidden_layers=1, num_attention_heads=2, attention_dropout=0.0, intermediate_size=32,
                 layer_norm_eps=1e-6, ln_elementwise_affine=True, sample_size=4),
}
VQ = {  # vqvae/config.json of amused-256
    "256": dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 5,
                up_block_types=["UpDecoderBlock2D"] * 5, block_out_channels=[128, 256, 256, 512, 768],
                layers_per_block=2, act_fn="silu", latent_channels=64, sample_size=32, num_vq_embeddings=8192,
                norm_num_groups=32, vq_embed_dim=64, mid_block_add_attention=False, lookup_from_codebook=True,
                force_upcast=True),
    "tiny": dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
                 up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[8, 8, 16], layers_per_block=1,
                 act_fn="silu", latent_channels=8, sample_size=16, num_vq_embeddings=32, norm_num_groups=4,
                 vq_embed_dim=8, mid_block_add_attention=False, lookup_from_codebook=True),
}
CLIP = {  # text_encoder/config.json (CLIP-L/14 text tower with projection)
    "256": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu"),
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 max_position_embeddings=16, projection_dim=24),
}
# amused-512: the same architecture at 32x32 tokens (512 px)
UVIT["512"], VQ["512"], CLIP["512"] = {**UVIT["256"], "sample_size": 32}, {**VQ["256"], "sample_size": 64}, CLIP["256"]
PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"


def build(size: str, root: Path) -> None:
    """Random diffusers components at ``size``, saved as an AmusedPipeline folder (the released layout)."""
    import diffusers
    import torch
    import transformers

    from maskgit.families.amused import write_char_clip_tokenizer
    clip = CLIP[size]
    tok = write_char_clip_tokenizer(root / "tokenizer", clip["max_position_embeddings"])  # save_pretrained rewrites
    vocab = tok.get_vocab()
    torch.manual_seed(0)
    text = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(
        vocab_size=49408 if size != "tiny" else len(vocab), bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"], **clip))
    uvit = diffusers.UVit2DModel(**UVIT[size])
    vq = diffusers.VQModel(**VQ[size])
    mask_id = UVIT[size]["vocab_size"] - 1
    pipe = diffusers.AmusedPipeline(vqvae=vq, tokenizer=tok, text_encoder=text, transformer=uvit,
                                    scheduler=diffusers.AmusedScheduler(mask_token_id=mask_id))
    pipe.save_pretrained(root, safe_serialization=True)


def worker(impl: str, precision: str, root: str, batches: list[int], rounds: int) -> dict:
    import torch
    if impl == "diffusers":
        import diffusers
        pipe = diffusers.AmusedPipeline.from_pretrained(root, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)

        def run(b):
            pipe([PROMPT] * b, num_inference_steps=12, guidance_scale=10.0, output_type="pt",
                 generator=torch.Generator().manual_seed(0))
    else:
        from maskgit.families.amused import load_pipeline
        from maskgit.pipeline import Pipeline
        pipe = load_pipeline(root, Pipeline, precision=precision)

        def run(b):
            pipe.generate(prompts=[PROMPT] * b, steps=12, cfg=9.0, seed=0, output="tensor")
    out = {}
    with torch.inference_mode():
        run(min(batches))  # warm-up once (first-call allocations, oneDNN packing)
        for b in batches:
            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                run(b)
                times.append((time.perf_counter() - t0) / b)
            out[str(b)] = statistics.median(times)
    out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def machine() -> str:
    import torch
    model = platform.processor()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(UVIT), default="256")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--variants", default="diffusers:fp32,ours:fp32,ours:bf16,ours:int8")
    ap.add_argument("--worker", nargs=3, metavar=("IMPL", "PRECISION", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.worker:
        print(json.dumps(worker(*args.worker, batches, args.rounds)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        build(args.size, Path(tmp) / "amused")
        for variant in args.variants.split(","):
            impl, precision = variant.split(":")
            r = subprocess.run([sys.executable, __file__, "--size", args.size, "--batches", args.batches,
                                "--rounds", str(args.rounds), "--worker", impl, precision, str(Path(tmp) / "amused")],
                               capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            if r.returncode:
                rows.append((variant, None, r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "failed"))
                continue
            rows.append((variant, json.loads(r.stdout.strip().splitlines()[-1]), ""))
    print(f"aMUSEd-{args.size} size, random weights, 12 steps, CFG 10 (ours: cfg 9), median of {args.rounds}; "
          f"{machine()}")
    base = next((r for v, r, _ in rows if v == "diffusers:fp32" and r), None)
    head = " | ".join(f"batch {b} s/image | vs diffusers" for b in batches)
    print(f"| variant | {head} | peak RSS MiB |")
    print("|---|" + "---|---|" * len(batches) + "---|")
    for variant, r, err in rows:
        if r is None:
            print(f"| {variant} | failed: {err} |")
            continue
        cells = " | ".join(f"{r[str(b)]:.3f} | {base[str(b)] / r[str(b)]:.2f}x" if base else f"{r[str(b)]:.3f} | -"
                           for b in batches)
        print(f"| {variant} | {cells} | {r['peak_mib']:.0f} |")


if __name__ == "__main__":
    main()
