"""Where one training step of each CPU trainer spends its time, and what the cheaper variants cost in time.

For the own-images recipe's two trainers (tokenizer ``cpu32-f4`` at batch 64, transformer ``maskgit-cpu-8x8`` at
batch 32) it times, per step: loading the batch (PNG decoding + augmentation, in the training process, when
``--data`` is given), forward + loss, backward, the optimizer, the EMA update and the loop's logging, and the
time of the whole step for each variant (tokenizer: contiguous vs channels-last convolutions; transformer:
dropout 0.1 vs 0), in each precision of ``--amp`` (fp32, and bf16 autocast as the trainer runs it).
Medians over ``--steps`` steps after ``--warmup`` steps; the model is the real preset, the
transformer's tokens are random (its step time does not depend on their values).

    python benchmarks/trainer_profile.py --data imagefolder:DIR --steps 20 [--amp off,bf16]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import time

import torch


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def timed_steps(task, batch_fn, steps: int, warmup: int, ema_decay: float = 0.999, bf16: bool = False) -> dict:
    """Run ``warmup + steps`` training steps of ``task`` (under bf16 autocast if ``bf16``, as the trainer does); the
    median seconds of each part of a step."""
    from maskgit.training.loop import EMA, StepContext
    opt = torch.optim.AdamW(task.parameters(), lr=1e-4, weight_decay=0.0)
    ema = EMA(task.model, ema_decay)
    task.train()
    parts: dict[str, list[float]] = {k: [] for k in ("data", "forward", "backward", "optimizer", "ema", "logging",
                                                        "step")}
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        batch = batch_fn(i)
        t1 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, metrics = task(batch, StepContext(i, 0, len(next(iter(batch.values()))), 0, 1, torch.device("cpu")))
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(task.parameters(), 1.0)
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        ema.update(task.model)
        t5 = time.perf_counter()
        json.dumps({"loss": float(loss.detach()), **{k: float(v) for k, v in metrics.items()}})
        t6 = time.perf_counter()
        if i >= warmup:
            for k, a, b in (("data", t0, t1), ("forward", t1, t2), ("backward", t2, t3), ("optimizer", t3, t4),
                            ("ema", t4, t5), ("logging", t5, t6), ("step", t0, t6)):
                parts[k].append(b - a)
    return {k: statistics.median(v) for k, v in parts.items()}


def tokenizer_rows(args) -> list[dict]:
    from maskgit.config import TokenizerTrainConfig, vqgan_preset
    from maskgit.models.vqgan import VQGAN
    from maskgit.training.losses import TokenizerTask
    batch_fn = None
    channels = 1
    if args.data:
        from maskgit.data.datasets import load_dataset
        from maskgit.data.loader import DatasetSource
        ds = load_dataset(args.data, split="train", image_size=32, train=True)
        src = DatasetSource(ds, workers=0)
        channels = ds[0][0].shape[0]
        batch_fn = lambda i: src.rank_batch(i, args.tok_batch, 0)  # noqa: E731
    else:
        fixed = {"images": torch.rand(args.tok_batch, channels, 32, 32)}
        batch_fn = lambda i: fixed  # noqa: E731
    rows = []
    for layout, amp in ((lay, amp) for amp in args.amp for lay in ("contiguous", "channels_last")):
        torch.manual_seed(0)
        cfg = dataclasses.replace(vqgan_preset("cpu32-f4"), channels=channels)
        task = TokenizerTask(VQGAN(cfg), TokenizerTrainConfig())
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        task.to(memory_format=fmt)

        def fn(i, fmt=fmt):
            b = batch_fn(i)
            return {"images": b["images"].contiguous(memory_format=fmt)}
        task.channels_last = layout == "channels_last"  # the trainer's choice on a CPU, or not
        rows.append({"trainer": "tokenizer cpu32-f4", "batch": args.tok_batch, "variant": layout, "amp": amp,
                     **timed_steps(task, fn, args.steps, args.warmup, bf16=amp == "bf16")})
    return rows


def transformer_rows(args) -> list[dict]:
    from maskgit.config import TrainConfig, transformer_preset
    from maskgit.models.transformer import MaskGITTransformer
    from maskgit.training.objectives import MaskedTokenTask
    g = torch.Generator().manual_seed(0)
    rows = []
    for dropout, amp in ((d, amp) for amp in args.amp for d in (0.1, 0.0)):
        torch.manual_seed(0)
        cfg = dataclasses.replace(transformer_preset("maskgit-cpu-8x8"), dropout=dropout)
        task = MaskedTokenTask(MaskGITTransformer(cfg), TrainConfig(batch_size=args.tr_batch))
        batches = [{"tokens": torch.randint(0, cfg.codebook_size, (args.tr_batch, 8, 8), generator=g),
                    "labels": torch.randint(0, cfg.num_classes, (args.tr_batch,), generator=g)} for _ in range(4)]
        rows.append({"trainer": "transformer maskgit-cpu-8x8", "batch": args.tr_batch, "variant": f"dropout {dropout}",
                     "amp": amp, **timed_steps(task, lambda i: batches[i % 4], args.steps, args.warmup,
                                               bf16=amp == "bf16")})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="imagefolder:DIR (the recipe's images; default: random images)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--tok-batch", type=int, default=64)
    ap.add_argument("--tr-batch", type=int, default=32)
    ap.add_argument("--amp", default="off", help="comma-separated precisions: off (fp32) and/or bf16")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    args.amp = [a.strip() for a in args.amp.split(",")]
    if any(a not in ("off", "bf16") for a in args.amp):
        ap.error(f"--amp takes off and/or bf16, got {args.amp}")
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")
    rows = tokenizer_rows(args) + transformer_rows(args)
    keys = ("data", "forward", "backward", "optimizer", "ema", "logging", "step")
    print("| trainer | batch | variant | precision | " + " | ".join(keys) + " (s, median) |")
    print("|---|---:|---|---|" + "---:|" * len(keys))
    for r in rows:
        prec = "bf16 autocast" if r["amp"] == "bf16" else "fp32"
        print(f"| {r['trainer']} | {r['batch']} | {r['variant']} | {prec} | "
              + " | ".join(f"{r[k]:.4f}" for k in keys) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
