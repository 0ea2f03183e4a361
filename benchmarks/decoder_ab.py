"""A/B of the VQGAN decoder's two speed changes, interleaved in one process so that they share the machine's moments.

Switches: the sub-pixel form of the upsampling convs (``VQGAN.decoder.subpixel``) and the raised malloc thresholds
(``maskgit.inference.malloc.tune_malloc``; "off" sets glibc's mmap threshold to 32 MiB, the ceiling of its own dynamic
one, so the decoder's 33.5 MiB activations are mmapped afresh as by default). Official imagenet-f16 layout, random
weights, 256 px, eager fp32. Prints seconds per image and % of the matmul peak (probed before and after each decode)
counted at the official layout's FLOPs, median over rounds.

    python benchmarks/decoder_ab.py [--batch 4] [--rounds 4]
"""

import argparse

import torch

import maskgit.models.vqgan as V
from maskgit.config import vqgan_preset
from maskgit.evaluation.speed import _official_flops, ab_table, between_probes
from maskgit.inference.malloc import set_malloc_thresholds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()

    def setup(subpixel: bool, malloc: bool) -> None:
        vq.decoder.subpixel = subpixel
        set_malloc_thresholds(*((1 << 30, 1 << 30) if malloc else (32 << 20, 64 << 20)))

    torch.manual_seed(0)
    vq = V.VQGAN(vqgan_preset("imagenet-f16")).prepare_for_inference()
    toks = torch.randint(0, 1024, (args.batch, 16, 16))
    with torch.inference_mode():
        flops = _official_flops(lambda: vq.decode(toks[:1]), vq.decoder)
    configs = [(s, m) for m in (False, True) for s in (False, True)]
    res = {c: [] for c in configs}
    with torch.inference_mode():
        for c in configs:
            setup(*c)
            vq.decode(toks[:1])  # warm up
        for _ in range(args.rounds):
            for c in configs:
                setup(*c)
                sec, pct = between_probes(lambda: vq.decode(toks), flops * args.batch)
                res[c].append((sec / args.batch, pct))
    print(f"official-layout FLOPs per image: {flops / 1e9:.1f} G; batch {args.batch}, {args.rounds} rounds")
    yes = {True: "yes", False: "no"}
    print(ab_table(["sub-pixel", "malloc thresholds raised", "s/image (median)",
                    "% of peak at official FLOPs (median)", "per round"],
                   {(yes[s], yes[m]): v for (s, m), v in res.items()}))


if __name__ == "__main__":
    main()
