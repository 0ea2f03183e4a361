"""`maskgit sample` and `maskgit edit`: generation and editing with a pipeline (default: the shipped model)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from maskgit.commands.common import device_arg, load_pipeline, parse_ints, parse_labels, seed_arg, speed_args
from maskgit.commands.parser import add_sample_args, explicit_sample_kwargs
from maskgit.config import SampleConfig
from maskgit.devices import resolve_device
from maskgit.errors import MaskGITError
from maskgit.sampling.noise import chunk_seed


def _sample_args(p) -> None:
    p.add_argument("--model", default=None, help="a directory, a shipped name, google/maskgit-imagenet256 (or 512) "
                   "or a Hugging Face Hub repo id owner/name[@revision] (default: fashion-mnist)")
    p.add_argument("--seed", type=seed_arg, default=0, help="0 <= seed < 2**63 (default 0)")
    p.add_argument("--prompt", action="append", default=None,
                   help="text-conditioned models: the prompt (repeat the flag for several); \"\" = unconditional")
    p.add_argument("--negative-prompt", default=None,
                   help="with --cfg: steer away from this prompt (replaces the null text in CFG)")
    p.add_argument("--text-encoder", default=None,
                   help="override the model's text encoder (minilm, st:PATH, t5:PATH, cache:FILE)")
    p.add_argument("--lora-weights", default=None, metavar="DIR",
                   help="a LoRA adapter folder (`train --lora RANK` / save_lora), merged into the model at load")
    device_arg(p)
    speed_args(p)
    add_sample_args(p, skip=("start_step",))


def register(sub) -> None:
    p = sub.add_parser("sample", help="generate images",
                       description="Generate images by MaskGIT iterative decoding (or with --arch ar, the "
                                   "autoregressive baseline).")
    _sample_args(p)
    p.add_argument("--labels", default=None, help="comma-separated class ids or names, e.g. 0,3,7 or "
                   "\"golden retriever,tabby\"")
    p.add_argument("-n", "--num", type=int, default=None, help="number of samples (with --labels or --prompt: "
                   "per label or prompt)")
    p.add_argument("--out", default=None, help="grid.png; samples.npz (ADM layout: arr_0 uint8 (N,H,W,3), "
                   "arr_1 labels); or DIR/ (numbered PNGs + labels.txt)")
    p.add_argument("--show-steps", default=None, help="write a PNG of the decoding steps here: one row per "
                   "requested label (or prompt), the steps then the final image; alone (no --out), only those "
                   "images are decoded")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--arch", default="maskgit", choices=["maskgit", "ar"])
    p.add_argument("--no-cache", action="store_true", help="AR only: recompute the prefix at every step")
    p.add_argument("--scale", type=int, default=2, help="grid PNG upscaling")
    p.set_defaults(func=cmd_sample)

    e = sub.add_parser("edit", help="inpaint, outpaint or class-edit an image",
                       description="Edit an image: regenerate a masked region (--mask or --box), extend it "
                                   "(--outpaint SIDE:TOKENS) or regenerate a box under a new class (--label).")
    _sample_args(e)
    e.add_argument("--image", required=True, help="a PNG of the model's image size (`sample --out DIR/` writes "
                   "single images; for a grid written by `sample --out grid.png`, add --cell)")
    e.add_argument("--cell", default=None, help="ROW,COL: edit this cell (from 0,0) of a grid written by "
                   "`maskgit sample --out grid.png`")
    g = e.add_mutually_exclusive_group(required=True)
    g.add_argument("--mask", help="PNG mask of the image's size: white = regenerate")
    g.add_argument("--box", help="x,y,w,h in pixels")
    g.add_argument("--outpaint", help="SIDE:TOKENS, e.g. right:2")
    e.add_argument("--label", type=int, default=None, help="class for the regenerated region")
    e.add_argument("--class-edit", action="store_true", help="class-conditional edit: start later in the schedule")
    e.add_argument("--start-step", type=int, default=None)
    e.add_argument("--dilate", type=int, default=0, help="grow the token mask by this many tokens")
    e.add_argument("--feather", type=int, default=2, help="blend radius in pixels")
    e.add_argument("--out", required=True)
    e.set_defaults(func=cmd_edit)


ALL_CLASSES_UP_TO = 100  # without --labels, 8 samples of every class of a model with at most this many


def _labels(args, pipe) -> list[int] | None:
    if args.labels is None:
        n = pipe.transformer.config.num_classes
        if n > ALL_CLASSES_UP_TO and args.num is None:  # 8 of each of ImageNet's 1,000 classes is 8,000 images
            raise MaskGITError(f"this model has {n} classes: give --labels (ids or names, e.g. --labels "
                               f"\"{(pipe.class_names or ['207'])[min(207, n - 1)]}\")")
        if n and args.num is None:
            return [i for i in range(n) for _ in range(8)]
        return None
    labels = parse_labels(args.labels, pipe.class_names)
    if not labels:
        raise MaskGITError("--labels is empty")
    return [l for l in labels for _ in range(args.num or 1)]


def _prompts(args, pipe) -> list[str] | None:
    if args.prompt is None:
        if args.negative_prompt is not None:
            raise MaskGITError("--negative-prompt needs --prompt")
        return None
    if args.labels is not None:
        raise MaskGITError("give --labels or --prompt, not both")
    if not pipe.transformer.config.text_dim:
        raise MaskGITError("this model is not text-conditioned: use --labels (class ids), not --prompt")
    if args.arch == "ar":
        raise MaskGITError("the AR baseline is class-conditional only")
    return [p for p in args.prompt for _ in range(args.num or 1)]


def cmd_sample(args) -> int:
    from maskgit.commands.checks import check_sample_args
    from maskgit.storage.images import make_grid, save_png
    from maskgit.storage.samples import is_png_folder
    if args.out is None and args.show_steps is None:
        args.out = "samples.png"  # the default output; with only --show-steps, only the strip is written
    check_sample_args(args, is_png_folder)  # before the model loads: nothing is made for a bad value
    from maskgit.distributed import init_distributed, shutdown_distributed
    rank, world, dev = init_distributed(resolve_device(args.device))  # torchrun: this process's share of chunks
    args.device = str(dev)
    pipe = load_pipeline(args, text_encoder=args.text_encoder)
    kw = explicit_sample_kwargs(args)  # the model's own sampling defaults fill the rest
    prompts = _prompts(args, pipe)
    labels = _labels(args, pipe) if prompts is None else None
    if prompts is None:  # the pipelines' one label rule (no labels: "no class"), before any image or file is made
        pipe.check_labels(labels if labels is not None else [-1])
    if args.out is None:  # only the steps strip: one image per requested label (or prompt), not --num of each
        labels = list(dict.fromkeys(labels)) if labels is not None else None
        prompts = list(dict.fromkeys(prompts)) if prompts is not None else None
    n = len(labels) if labels is not None else (len(prompts) if prompts is not None else (args.num or 1))
    from maskgit.commands import sample_runs
    t0 = time.time()
    chunks, steps = sample_runs.run(pipe, args, n, labels, prompts, kw, rank, world)
    out = Path(args.out) if args.out is not None else None
    from maskgit.storage.samples import write_npz_chunks, write_png_folder
    if rank != 0:
        pass
    settings = _settings(args, pipe, kw)
    if rank != 0:
        pass
    elif out is not None and out.suffix == ".npz":  # the ADM layout, streamed chunk by chunk
        write_npz_chunks(out, chunks, n, labels, prompts)
    else:
        u8 = np.concatenate(list(chunks))
        if out is None:
            pass
        elif is_png_folder(args.out):
            B = args.batch_size  # image i is row i % B of chunk i // B, decoded with chunk_seed(--seed, i // B)
            write_png_folder(out, u8, labels, text=lambda i: _text(
                settings, index=i, chunk=i // B, row=i % B, chunk_seed=chunk_seed(args.seed, i // B),
                **_condition(labels, prompts, i, pipe.class_names)))
        else:
            names = pipe.class_names
            captions = [names[l] for l in labels] if (labels is not None and names) else prompts
            ncol = args.num if ((args.labels or prompts) and args.num and args.num > 1) else (
                8 if labels and not args.labels else None)
            grid = make_grid(u8, captions, ncol=ncol, scale=args.scale)
            save_png(grid, out, _text(settings, labels=labels, prompts=prompts, grid=grid.info["grid"]))
    if rank == 0 and steps is not None:
        _write_steps(args, pipe, steps, labels, prompts, settings)
    dt = time.time() - t0
    if rank == 0:
        sample_runs.remove_parts(args.out, n, args.batch_size, world)
        procs = f", {world} processes" if world > 1 else ""
        made = f"wrote {n} images to {out}" if out is not None else f"decoded {n} images"
        print(f"{made} in {dt:.2f}s ({dt / n:.4f} s/image{procs}; precision {pipe.precision}, seed {args.seed})")
    shutdown_distributed()
    return 0


def _settings(args, pipe, kw: dict, arch: str = "maskgit") -> dict:
    """What made an image, as stored in its PNG: model, precision, seed and every sampling setting in effect."""
    import dataclasses
    arch = getattr(args, "arch", arch)
    cfg = pipe.sample_config(**kw) if arch == "maskgit" else dataclasses.replace(SampleConfig(), **kw)
    out = {"model": str(getattr(pipe, "source", args.model)), "arch": arch, "precision": pipe.precision,
           "device": str(pipe.device), "seed": args.seed, "sampling": dataclasses.asdict(cfg)}
    if getattr(args, "batch_size", None):
        out["batch_size"] = args.batch_size
    return out


def _condition(labels, prompts, i: int, names) -> dict:
    if labels is not None:
        return {"label": labels[i], **({"class": names[labels[i]]} if names and labels[i] >= 0 else {})}
    return {"prompt": prompts[i]} if prompts is not None else {}


def _text(settings: dict, **extra) -> dict[str, str]:
    """The PNG tEXt chunk "maskgit": the settings as JSON (``Image.open(f).text["maskgit"]``)."""
    import json
    return {"maskgit": json.dumps({**settings, **{k: v for k, v in extra.items() if v is not None}})}


def _write_steps(args, pipe, steps, labels, prompts, settings) -> None:
    """One row per requested label (or prompt) of the first chunk: each decoding step, then the final image."""
    from maskgit.storage.images import make_grid, save_png
    steps_imgs, images = steps
    keys = (labels or prompts or list(range(len(images))))[:len(images)]
    rows = list(dict.fromkeys(keys).keys())[:len(images)] if (labels or prompts) else keys[:8]
    picks = [keys.index(k) for k in rows]
    strip = make_grid(torch.cat([torch.stack([s[j] for s in steps_imgs] + [images[j]]) for j in picks]),
                      ncol=len(steps_imgs) + 1, scale=args.scale)
    save_png(strip, args.show_steps, _text(settings, rows=[keys[j] for j in picks]))
    per = "label" if labels else "prompt" if prompts else "image"
    print(f"wrote {args.show_steps}: {len(picks)} rows (one per {per}), {len(steps_imgs)} steps and the final "
          f"image each")


def cmd_edit(args) -> int:
    from maskgit.commands.checks import check_edit_args
    from maskgit.storage.images import save_png
    check_edit_args(args)
    pipe = load_pipeline(args, text_encoder=args.text_encoder)
    kw = explicit_sample_kwargs(args)  # the model's own sampling defaults fill the rest
    if args.prompt is not None:
        if len(args.prompt) != 1:
            raise MaskGITError("edit takes one --prompt")
        kw.update(prompt=args.prompt[0], negative_prompt=args.negative_prompt)
    elif args.negative_prompt is not None:
        raise MaskGITError("--negative-prompt needs --prompt")
    size = pipe.grid[0] * pipe.tokenizer.config.downsample
    image = _edit_input(args, pipe.tokenizer.channels, size)
    if args.outpaint:
        from maskgit.sampling.editing import parse_outpaint
        side, n = parse_outpaint(args.outpaint)
        out = pipe.outpaint(image, side, n, label=args.label, seed=args.seed, output="np", **kw)
    elif args.class_edit or args.start_step is not None:
        if args.box is None or (args.label is None and args.prompt is None):
            raise MaskGITError("a class edit needs --box and --label (or --prompt for text-conditioned models)")
        out = pipe.class_edit(image, box=parse_ints(args.box, "--box"), label=args.label, start_step=args.start_step,
                        feather=args.feather, seed=args.seed, output="np", **kw)
    else:
        out = pipe.inpaint(image, mask=args.mask, box=parse_ints(args.box, "--box") if args.box else None,
                           label=args.label, dilate=args.dilate, feather=args.feather, seed=args.seed,
                           output="np", **kw)
    what = {"edit": args.outpaint and f"outpaint {args.outpaint}" or ("class edit" if args.class_edit else "inpaint"),
            "image": args.image, "cell": args.cell, "box": args.box, "mask": args.mask, "label": args.label}
    save_png(out, args.out, _text(_settings(args, pipe, kw), **what))
    print(f"wrote {args.out} (precision {pipe.precision}, seed {args.seed})")
    return 0


def _edit_input(args, channels: int, size: int) -> torch.Tensor:
    """The image to edit, (C,H,W) in [0,1]: the file, or with --cell one cell of a grid that `sample` wrote."""
    import json

    from maskgit.storage.images import grid_cell, open_image, pil_to_tensor, to_rgb
    img = open_image(args.image)
    try:  # the layout record `sample` stores in a grid PNG's "maskgit" text chunk
        layout = json.loads(img.info.get("maskgit", "{}")).get("grid")
    except (ValueError, AttributeError):
        layout = None
    if args.cell is not None:
        rc = parse_ints(args.cell, "--cell")
        if len(rc) != 2:
            raise MaskGITError(f"--cell takes ROW,COL (from 0,0), got {args.cell!r}")
        if not isinstance(layout, dict):
            raise MaskGITError(f"{args.image} is not a grid written by `maskgit sample --out grid.png` (it has no "
                               "layout record): leave out --cell")
        img = grid_cell(img, layout, *rc)
    rgb = to_rgb(img)
    image = pil_to_tensor(rgb.convert("L") if channels == 1 else rgb)
    if image.shape[-2:] != (size, size):
        hint = (f": it is a grid of {layout.get('n')} images written by `maskgit sample`; pick one with --cell ROW,COL "
                f"or write single images with `maskgit sample --out DIR/`" if isinstance(layout, dict) else
                ": write single images with `maskgit sample --out DIR/` (DIR/000000.png, ...)")
        raise MaskGITError(f"{args.image} is {image.shape[-1]}x{image.shape[-2]}; this model edits {size}x{size} "
                           f"images{hint}")
    return image
