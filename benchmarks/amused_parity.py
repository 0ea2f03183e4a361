"""Parity of the project's aMUSEd modules with diffusers' at full size: random weights in the released configs
(amused-256: 16x16 tokens; amused-512: 32x32), saved by diffusers as an AmusedPipeline folder and read back by
``maskgit.load``. Reports the max abs difference of U-ViT logits and VQ images, whether the VQ's token ids are
identical, the text encoding (penultimate hidden states + pooled projection), and the share of identical tokens
after the full 12-step generation with CFG fed the same noise.

    pip install diffusers   # the reference, installed at benchmark time only
    python benchmarks/amused_parity.py --sizes 256,512

The weights are random (the Hub is not reachable here) and the CLIP tokenizer is character-level (the released BPE
vocabulary is not offline); the text encoder is the full CLIP-L/14 text tower."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import amused_speed  # this folder's speed benchmark: the released configs and the folder builder
import torch

PROMPTS = ["a photograph of an astronaut riding a horse on the moon", "a red cube on a wooden table"]


def compare(size: str, root: Path, steps: int, seed: int) -> dict:
    import diffusers

    from maskgit.pipeline import Pipeline
    ref = diffusers.AmusedPipeline.from_pretrained(root, local_files_only=True)
    ref.set_progress_bar_config(disable=True)
    t0 = time.perf_counter()
    ours = Pipeline.load(root)
    load_s = time.perf_counter() - t0
    out = {"size": size, "load_s": load_s}
    g = int(ours.transformer.config.grid_size)
    K = ours.transformer.config.codebook_size
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        # U-ViT logits on the same inputs (a third of the positions masked)
        ids = torch.randint(0, K, (2, g, g), generator=gen)
        ids[torch.rand(2, g, g, generator=gen) < 0.33] = ours.mask_id
        hidden = torch.randn(2, 77, 768, generator=gen)
        pooled = torch.randn(2, 768, generator=gen)
        micro = torch.tensor([[int(size), int(size), 0, 0, 6]] * 2, dtype=torch.float32)
        want = ref.transformer(ids, micro_conds=micro, pooled_text_emb=pooled, encoder_hidden_states=hidden)
        got = ours.transformer.uvit(ids, hidden, pooled, micro)
        out["logits_max_abs"] = float((want - got).abs().max())
        out["logits_scale"] = float(want.abs().max())
        # VQ: ids and images
        px = int(size)
        img = torch.rand(1, 3, px, px, generator=gen)
        lat = ref.vqvae.encode(img).latents
        ref_ids = ref.vqvae.quantize(lat)[2][2].reshape(1, lat.shape[2], lat.shape[3])
        our_ids = ours.tokenizer.encode(img)
        out["vq_ids_identical"] = float((ref_ids == our_ids).float().mean())
        shape = (1, lat.shape[2], lat.shape[3], ref.vqvae.config.latent_channels)
        ref_img = ref.vqvae.decode(ref_ids, force_not_quantize=True, shape=shape).sample.clip(0, 1)
        out["vq_image_max_abs"] = float((ref_img - ours.tokenizer.decode(ref_ids)).abs().max())
        # text encoding
        hid, _, pool = ours.text_encoder(PROMPTS)
        ids_t = ref.tokenizer(PROMPTS, return_tensors="pt", padding="max_length", truncation=True,
                              max_length=ref.tokenizer.model_max_length).input_ids
        enc = ref.text_encoder(ids_t, return_dict=True, output_hidden_states=True)
        out["text_max_abs"] = max(float((enc.hidden_states[-2] - hid).abs().max()),
                                  float((enc.text_embeds - pool).abs().max()))
        # the full generation, same noise
        t0 = time.perf_counter()
        want_tok = ref(PROMPTS, num_inference_steps=steps, guidance_scale=10.0, output_type="latent",
                       generator=torch.Generator().manual_seed(seed)).images
        out["ref_gen_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        cfg = ours.sample_config(steps=steps, cfg=9.0)
        got_tok = ours.decode_tokens(torch.full((2, g * g), ours.mask_id), torch.tensor([-1, -1]), cfg, seed,
                                     text=ours.text_condition(PROMPTS))
        out["our_gen_s"] = time.perf_counter() - t0
        out["tokens_identical"] = float((got_tok.view(-1) == want_tok.reshape(-1)).float().mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = []
    for size in args.sizes.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            amused_speed.build(size, Path(tmp) / "amused")
            rows.append(compare(size, Path(tmp) / "amused", args.steps, args.seed))
        print(rows[-1], flush=True)
    print(f"\naMUSEd parity, random weights in the released configs, {args.steps} steps, CFG 10 (ours: cfg 9), "
          f"seed {args.seed}; {amused_speed.machine()}")
    print("| size | U-ViT logits max abs (of max) | VQ ids identical | VQ image max abs | text max abs | "
          "tokens identical after generation | load s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| amused-{r['size']} | {r['logits_max_abs']:.2e} (of {r['logits_scale']:.1f}) | "
              f"{r['vq_ids_identical']:.2%} | {r['vq_image_max_abs']:.2e} | {r['text_max_abs']:.1e} | "
              f"{r['tokens_identical']:.2%} | {r['load_s']:.1f} |")


if __name__ == "__main__":
    main()
