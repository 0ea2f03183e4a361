"""`maskgit bench-binding`: attribute-binding accuracy of a text-to-image model on the shapes dataset.

For each split (``test``: combinations seen in training; ``heldout``: colour-shape pairs never seen) the model draws
one image per caption at each (steps, CFG scale); ``maskgit.data.shapes.check_binding`` reads colour, shape, size and
relation back from the pixels. Real images and the tokenizer's reconstructions of them are scored too: the
checker's and the tokenizer's ceilings."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from maskgit.commands.common import device_arg, resolve_device
from maskgit.commands.parser import add_dataclass_args, override
from maskgit.config import SampleConfig
from maskgit.errors import MaskGITError
from maskgit.storage.images import to_uint8

FIELDS = ("all_ok", "colour_ok", "shape_ok", "size_ok", "relation_ok")


def register(sub) -> None:
    p = sub.add_parser("bench-binding", help="text-to-image binding accuracy on the shapes dataset",
                       description="Generate one image per shapes caption and check that colours, shapes, sizes and "
                                   "the spatial relation are bound as the caption says, for in-distribution and "
                                   "held-out attribute combinations, over decoding steps and CFG scales.")
    p.add_argument("--model", required=True, help="a text-conditioned model (directory)")
    p.add_argument("--text-encoder", default=None, help="override the model's encoder (e.g. cache:FILE)")
    p.add_argument("-n", type=int, default=200, help="captions per split (default 200)")
    p.add_argument("--splits", default="test,heldout", help="shapes splits (default: test,heldout)")
    p.add_argument("--steps", default="4,8,12", help="comma-separated decoding steps (default 4,8,12)")
    p.add_argument("--cfg", default="0,1,2,4", help="comma-separated CFG scales (default 0,1,2,4)")
    p.add_argument("--negative-prompt", default=None, help="use this negative prompt in CFG")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--json", default=None, help="write every row here")
    p.add_argument("--grid", default=None, help="PNG of samples (the best setting, 16 captions per split)")
    p.add_argument("--results", default=None, help="append the table to this RESULTS.md")
    device_arg(p)
    add_dataclass_args(p, SampleConfig, skip=("steps", "cfg", "start_step"))
    p.set_defaults(func=cmd_bench_binding)


def _floats(text: str, what: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise MaskGITError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not vals:
        raise MaskGITError(f"{what} is empty")
    return vals


@torch.inference_mode()
def generate_for(pipe, captions: list[str], cfg: SampleConfig, seed: int, batch_size: int,
                 negative: str | None = None) -> tuple[np.ndarray, float]:
    """uint8 images (N,H,W,3), one per caption, and the seconds they took (prompt encoding excluded)."""
    conds = [pipe.text_condition(captions[i:i + batch_size], negative)
             for i in range(0, len(captions), batch_size)]
    gen = torch.Generator().manual_seed(seed)
    N = pipe.grid[0] * pipe.grid[1]
    out = []
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for k, cond in enumerate(conds):
        B = len(captions[k * batch_size:(k + 1) * batch_size])
        tokens = torch.full((B, N), pipe.mask_id, dtype=torch.long)
        labels = torch.full((B,), -1, dtype=torch.long)
        toks = pipe.decode_tokens(tokens, labels, cfg, None, gen, text=cond)
        out.append(pipe.to_images(toks))
    return to_uint8(torch.cat(out)), time.perf_counter() - t0


def cmd_bench_binding(args) -> int:
    from maskgit.data.shapes import binding_accuracy, render_split
    from maskgit.evaluation.samples import append_results, markdown_table
    from maskgit.pipeline import load
    from maskgit.storage.images import make_grid, save_png

    pipe = load(args.model, resolve_device(args.device), text_encoder=args.text_encoder)
    if not pipe.transformer.config.text_dim:
        raise MaskGITError(f"{args.model} is not a text-conditioned model")
    if pipe.tokenizer.channels != 3:
        raise MaskGITError("bench-binding needs an RGB model trained on the shapes dataset")
    steps_list = [int(s) for s in _floats(args.steps, "--steps")]
    cfg_list = _floats(args.cfg, "--cfg")
    base = override(SampleConfig(), args, skip=("steps", "cfg", "start_step"))
    splits = [s for s in args.splits.split(",") if s]
    rows, samples = [], {}
    for split in splits:
        real, scenes = render_split(split, args.n)
        captions = [s.caption for s in scenes]
        x = torch.from_numpy(real).permute(0, 3, 1, 2).float() / 255
        recon = torch.cat([pipe.to_images(pipe.encode(x[i:i + args.batch_size]))
                           for i in range(0, len(x), args.batch_size)])
        for source, imgs in (("real images", real), ("tokenizer reconstructions", to_uint8(recon))):
            rows.append({"split": split, "source": source, **binding_accuracy(imgs, scenes)})
            print(json.dumps(rows[-1]))
        for steps in steps_list:
            for scale in cfg_list:
                cfg = pipe.sample_config(**{**dataclasses.asdict(base), "steps": steps, "cfg": scale})
                imgs, secs = generate_for(pipe, captions, cfg, args.seed, args.batch_size, args.negative_prompt)
                acc = binding_accuracy(imgs, scenes)
                rows.append({"split": split, "source": "model", "steps": steps, "cfg": scale, **acc,
                             "s_per_image": secs / len(captions)})
                samples[(split, steps, scale)] = (imgs[:16], captions[:16])
                print(json.dumps(rows[-1]))
    model_rows = [r for r in rows if r["source"] == "model"]
    best = max(((s, c) for s in steps_list for c in cfg_list),
               key=lambda k: np.mean([r["all_ok"] for r in model_rows if (r["steps"], r["cfg"]) == k]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"model": str(args.model), "n": args.n, "rows": rows,
                                               "best": {"steps": best[0], "cfg": best[1]}}, indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.grid:
        imgs = np.concatenate([samples[(s, *best)][0] for s in splits])
        caps = [f"[{s}] {c}" for s in splits for c in samples[(s, *best)][1]]
        save_png(make_grid(imgs, caps, ncol=8, scale=4, label_lines=3), args.grid)
        print(f"wrote {args.grid} (steps {best[0]}, cfg {best[1]})")
    table = markdown_table([{**r, **{k: f"{100 * r[k]:.1f}%" for k in FIELDS}} for r in rows],
                           ["split", "source", "steps", "cfg", *FIELDS, "s_per_image"])
    print(table)
    if args.results:
        notes = (f"{args.n} captions per split; one image each, seed {args.seed}; `all_ok` = colours, shapes, sizes "
                 f"and relation all right (read back from pixels by maskgit.data.shapes.check_binding). test = "
                 f"attribute combinations seen in training, heldout = colour-shape pairs never seen in training. "
                 f"Best setting: {best[0]} steps, CFG {best[1]}.")
        append_results(args.results, "Text-to-image attribute binding (shapes)",
                       args.command_line, table, notes)
        print(f"appended to {args.results}")
    return 0
