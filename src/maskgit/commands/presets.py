"""`maskgit presets`: every tokenizer and transformer preset with its size, image size, token grid and FLOPs per
image; with --measure also training steps per second on this machine."""

from __future__ import annotations

import json
import time

import torch

from maskgit.commands.common import device_arg, resolve_device
from maskgit.config import TRANSFORMER_PRESETS, VQGAN_PRESETS, TokenizerTrainConfig, TrainConfig
from maskgit.errors import MaskGITError

MEASURE_LIMIT_GFLOP = 2000  # a measured step above this is skipped unless the preset is named with --only


def register(sub) -> None:
    p = sub.add_parser("presets", help="list the model presets: parameters, image size, token grid, FLOPs, speed",
                       description="Every tokenizer (train-tokenizer --preset) and transformer (train --preset) "
                                   "preset: parameters, image size, token grid, forward GFLOPs per image and, with "
                                   "--measure, training steps/s and images/s on this machine.")
    p.add_argument("--measure", action="store_true",
                   help="time a few training steps of each preset here (seconds each; the largest presets only "
                        "when named with --only)")
    p.add_argument("--only", default=None, help="comma-separated preset names")
    p.add_argument("--batch-size", type=int, default=32, help="images per measured training step")
    p.add_argument("--steps", type=int, default=3, help="measured steps per preset (after one warm-up step)")
    p.add_argument("--json", default=None, help="also write the table here")
    device_arg(p)
    p.set_defaults(func=cmd_presets)


def tokenizer_row(name: str, cfg) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from maskgit.models.vqgan import VQGAN
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        m = VQGAN(cfg)
        with FlopCounterMode(display=False) as fc:
            m.decoder(m.encoder(torch.zeros(1, cfg.channels, cfg.image_size, cfg.image_size)))
    h, w = cfg.grid_shape()
    flops = fc.get_total_flops() + 2 * h * w * cfg.embedding_dim * cfg.codebook_size  # + nearest-code search
    return {"kind": "tokenizer", "name": name, "params": sum(p.numel() for p in m.parameters()),
            "image": f"{cfg.image_size}x{cfg.image_size}x{cfg.channels}", "grid": f"{h}x{w}",
            "codes": cfg.codebook_size, "gflop": flops / 1e9}


def transformer_row(name: str, cfg) -> dict:
    from maskgit.models.transformer import MaskGITTransformer, count_flops
    with torch.device("meta"):
        m = MaskGITTransformer(cfg)
    cond = f"text {cfg.text_len}x{cfg.text_dim}" if cfg.text_dim else f"{cfg.num_classes} classes"
    return {"kind": "transformer", "name": name, "params": sum(p.numel() for p in m.parameters()),
            "image": "-", "grid": f"{cfg.grid_size}x{cfg.grid_size}", "codes": cfg.codebook_size, "cond": cond,
            "gflop": count_flops(cfg) / 1e9}


def measure(row: dict, cfg, batch: int, steps: int, device: str) -> float:
    """Training steps per second: forward + backward + AdamW on random data (tokenizer: with the GAN loss on)."""
    from maskgit.training.loop import StepContext
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    if row["kind"] == "tokenizer":
        from maskgit.models.vqgan import VQGAN
        from maskgit.training.losses import TokenizerTask
        task = TokenizerTask(VQGAN(cfg), TokenizerTrainConfig())
        data = {"images": torch.rand(batch, cfg.channels, cfg.image_size, cfg.image_size, generator=gen)}
    else:
        from maskgit.models.transformer import MaskGITTransformer
        from maskgit.training.objectives import MaskedTokenTask
        task = MaskedTokenTask(MaskGITTransformer(cfg), TrainConfig())
        data = {"tokens": torch.randint(0, cfg.codebook_size, (batch, cfg.grid_size, cfg.grid_size), generator=gen)}
        if cfg.text_dim:
            data["text"] = torch.randn(batch, cfg.text_len, cfg.text_dim, generator=gen)
        else:
            data["labels"] = torch.randint(0, max(1, cfg.num_classes), (batch,), generator=gen)
    task.to(dev).train()
    data = {k: v.to(dev) for k, v in data.items()}
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        loss, _ = task(data, StepContext(10 ** 6 + i, 0, batch, 0, 1, dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 1.0 / (sorted(times[1:])[len(times[1:]) // 2])  # the median measured step


def cmd_presets(args) -> int:
    only = {s.strip() for s in args.only.split(",") if s.strip()} if args.only else None
    known = set(VQGAN_PRESETS) | set(TRANSFORMER_PRESETS)
    if only and (unknown := sorted(only - known)):
        raise MaskGITError(f"unknown preset(s) {unknown}; choose from: {', '.join(sorted(known))}")
    if args.batch_size < 1 or args.steps < 1:
        raise MaskGITError("--batch-size and --steps must be at least 1")
    device = resolve_device(args.device)
    rows = []
    for table, make in ((VQGAN_PRESETS, tokenizer_row), (TRANSFORMER_PRESETS, transformer_row)):
        for name, cfg in table.items():
            if only and name not in only:
                continue
            row = make(name, cfg)
            if args.measure:
                if row["gflop"] * args.batch_size * 3 > MEASURE_LIMIT_GFLOP and not only:
                    row["note"] = "not measured: name it with --only"
                else:
                    row["steps_per_s"] = measure(row, cfg, args.batch_size, args.steps, device)
                    row["images_per_s"] = row["steps_per_s"] * args.batch_size
            rows.append(row)
    print(format_table(rows, args.batch_size if args.measure else None, device))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "threads": torch.get_num_threads(), "batch_size": args.batch_size,
                       "rows": rows}, f, indent=1)
    return 0


def format_table(rows: list[dict], batch: int | None, device: str) -> str:
    head = ["kind", "preset", "params", "image", "tokens", "codes", "GFLOP/image"]
    if batch:
        head += [f"steps/s (batch {batch}, {device}, {torch.get_num_threads()} threads)", "images/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["kind"], r["name"], f"{r['params'] / 1e6:.2f}M", r["image"] if r["kind"] == "tokenizer"
                 else r.get("cond", "-"), r["grid"], str(r["codes"]), f"{r['gflop']:.3g}"]
        if batch:
            cells += [f"{r['steps_per_s']:.3g}", f"{r['images_per_s']:.0f}"] if "steps_per_s" in r else \
                [r.get("note", "-"), "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
