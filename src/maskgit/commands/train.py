"""`maskgit train`: the transformer stage (MaskGIT or the AR baseline) on a token store."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from maskgit.commands.common import device_arg, resolve_device
from maskgit.commands.train_setup import (
    finetune_args,
    first_examples,
    lora_args,
    memory_args,
    report_and_check,
    setup_lora,
)
from maskgit.config import (
    TRANSFORMER_PRESETS,
    SampleConfig,
    TrainConfig,
    TransformerConfig,
    add_dataclass_args,
    from_dict,
    override,
    transformer_preset,
)
from maskgit.errors import MaskGITError
from maskgit.storage.checkpoint import load_model, read_config

# the transformer stage's defaults: what --help shows and what the command runs with
TRANSFORMER_TRAIN_DEFAULTS = TrainConfig()


def register(sub) -> None:
    p = sub.add_parser("train", help="train the MaskGIT transformer (or the AR baseline) on a token store",
                       description="Masked-token training (MaskGIT) or next-token training (--arch ar) on a token "
                                   "store made by `maskgit tokenize`. Resumable (--resume); runs under torchrun.")
    p.add_argument("--tokens", default=None, help="token store directory (training split); required, except for "
                                                 "aMUSEd fine-tuning (--data)")
    p.add_argument("--val-tokens", default=None, help="token store for validation loss / accuracy")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory: checks the store's hash, draws samples")
    p.add_argument("--preset", default=None, help=f"one of {', '.join(TRANSFORMER_PRESETS)} (default "
                   f"maskgit-small-8x8, or muse-small-8x8 for text conditioning)")
    p.add_argument("--text-encoder", default=None,
                   help="text-to-image: condition on the captions embedded by this frozen encoder (minilm, st:PATH, "
                        "t5:PATH, cache:FILE); computed into the token store if missing. Default: the store's "
                        "caption-embedding cache when it has one")
    p.add_argument("--text-mode", default=None, choices=["cross", "prefix"],
                   help="text-to-image: text tokens as a prefix of the self-attention sequence (the text presets' "
                        "choice: it bound attributes better, see benchmarks/RESULTS.md) or cross-attention layers "
                        "(as Muse)")
    p.add_argument("--arch", default="maskgit", choices=["maskgit", "ar"])
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue from the newest checkpoint in --out that verifies (or from CHECKPOINT)")
    finetune_args(p, "transformer")
    lora_args(p)
    memory_args(p)
    device_arg(p)
    add_dataclass_args(p, TRANSFORMER_TRAIN_DEFAULTS)
    p.set_defaults(func=cmd_train)


def build_model(preset: str, arch: str, store_meta: dict, num_classes: int | None,
                text: tuple[int, int] | None = None, text_mode: str | None = None):
    """The preset fitted to the store; ``text`` = (dim, len) of caption embeddings for a text-conditioned model
    (no classes, no "no class" id: the null text is CFG's unconditional input)."""
    from maskgit.models.autoregressive import ARTransformer
    from maskgit.models.transformer import MaskGITTransformer
    cfg = transformer_preset(preset)
    grid = store_meta["grid"]
    changes = {"arch": arch, "codebook_size": store_meta["codebook_size"], "grid_size": grid[0]}
    if grid[0] != grid[1]:
        raise MaskGITError(f"token grids must be square, the store has {grid}")
    if num_classes is not None:
        changes["num_classes"] = num_classes
    if text is not None:
        if arch == "ar":
            raise MaskGITError("the AR baseline is class-conditional only: train it without --text-encoder")
        changes.update(text_dim=text[0], text_len=text[1], num_classes=0, null_class=False)
        if text_mode:
            changes["text_mode"] = text_mode
    elif text_mode:
        raise MaskGITError("--text-mode is for text-to-image training: add --text-encoder")
    elif cfg.text_dim:
        raise MaskGITError(f"preset {preset} is text-conditioned: train it on a captioned token store with "
                           f"--text-encoder (e.g. minilm)")
    cfg = dataclasses.replace(cfg, **changes)
    return (ARTransformer if arch == "ar" else MaskGITTransformer)(cfg)


def model_from_run(ck: Path, args, store_meta: dict, num_classes: int, text: tuple[int, int] | None):
    """``--resume``: the model as the run built it (the config saved in its latest checkpoint ``ck``), not as the
    preset reads today; an explicit --preset/--text-mode/--arch or a store that disagrees with the run is an error."""
    from maskgit.models.autoregressive import ARTransformer
    from maskgit.models.transformer import MaskGITTransformer
    doc = read_config(ck)
    kind = "ar" if args.arch == "ar" else "transformer"
    if doc.get("kind") != kind:
        raise MaskGITError(f"{args.out} holds a {doc.get('kind')!r} model: resume it with the --arch it started with")
    cfg = from_dict(TransformerConfig, doc.get("config", {}), what=f"{ck}/config.json")
    saved = (doc.get("meta") or {}).get("preset")
    if args.preset and saved and args.preset != saved:
        raise MaskGITError(f"{args.out} was started with --preset {saved}: resume it without --preset (or with "
                           f"--preset {saved}), or train the new preset in a new --out directory")
    if args.text_mode and args.text_mode != cfg.text_mode:
        raise MaskGITError(f"{args.out} was started with --text-mode {cfg.text_mode}: resume it without --text-mode, "
                           f"or train {args.text_mode} in a new --out directory")
    found = {"codebook_size": cfg.codebook_size, "grid_size": cfg.grid_size, "text_dim": cfg.text_dim,
             "num_classes": cfg.num_classes}
    want = {"codebook_size": store_meta["codebook_size"], "grid_size": store_meta["grid"][0],
            "text_dim": text[0] if text else 0, "num_classes": 0 if text else num_classes}
    diff = {k: (found[k], want[k]) for k in found if found[k] != want[k]}
    if diff:
        raise MaskGITError(f"{args.out} was trained on a different token store: (run, this store) = {diff}")
    return (ARTransformer if args.arch == "ar" else MaskGITTransformer)(cfg), saved or args.preset


def model_from_init(args, store_meta: dict, num_classes: int, text: tuple[int, int] | None):
    """``--init DIR``: the model in DIR fitted to this store's classes (see training.finetune.adapt_classes)."""
    from maskgit.models.autoregressive import ARTransformer
    from maskgit.models.transformer import MaskGITTransformer
    from maskgit.training.finetune import init_transformer, resolve_init
    if args.preset or args.text_mode:
        raise MaskGITError("--init decides the model's shape: leave out --preset and --text-mode")
    init_dir, _ = resolve_init(args.init)
    doc = read_config(init_dir)
    if doc.get("kind") not in ("transformer", "ar"):
        raise MaskGITError(f"--init {args.init} holds a {doc.get('kind')!r} model, not a transformer")
    cfg = from_dict(TransformerConfig, doc.get("config", {}), what=f"{init_dir}/config.json")
    grid = store_meta["grid"]
    if (cfg.codebook_size, cfg.grid_size) != (store_meta["codebook_size"], grid[0]):
        raise MaskGITError(f"--init {args.init} reads {cfg.grid_size}x{cfg.grid_size} grids of {cfg.codebook_size} "
                           f"codes, the store has {grid[0]}x{grid[1]} of {store_meta['codebook_size']}: tokenize "
                           "the images with the tokenizer that model was trained with")
    if bool(cfg.text_dim) != (text is not None):
        raise MaskGITError("--init: a text-conditioned model needs a captioned store (and a class model a labelled "
                           "one)")
    if not text:
        cfg = dataclasses.replace(cfg, num_classes=num_classes)
    model = (ARTransformer if args.arch == "ar" else MaskGITTransformer)(cfg)
    report = init_transformer(model, init_dir)
    print(f"init from {init_dir}: {report}")
    return model, (doc.get("meta") or {}).get("preset"), init_dir


def cmd_train(args) -> int:
    from maskgit.data.tokenstore import TokenStore, model_hash
    from maskgit.training.loop import find_checkpoint, train
    from maskgit.training.objectives import MaskedTokenTask, NextTokenTask

    if args.data:
        from maskgit.commands.train_amused import cmd_train_amused
        return cmd_train_amused(args)
    if not args.tokens:
        raise MaskGITError("train needs --tokens STORE (a token store: maskgit tokenize), or --init AMUSED --data "
                           "IMAGES to fine-tune aMUSEd on captioned images")
    device = resolve_device(args.device)
    tokenizer = load_model(args.tokenizer, "vqgan") if args.tokenizer else None
    h = model_hash(tokenizer) if tokenizer is not None else None
    encoder = None
    if args.text_encoder:
        from maskgit.models.text import ensure_store_text, load_text_encoder, store_cache_path
        for path in (args.tokens, args.val_tokens):
            if path and not store_cache_path(path, _encoder_name(args.text_encoder)).exists():
                encoder = encoder or load_text_encoder(args.text_encoder)
                print(f"embedding the captions of {path} with {encoder.name}")
                ensure_store_text(path, args.text_encoder, encoder)
        name = _encoder_name(args.text_encoder)
        store = TokenStore(args.tokens, h, text_encoder=name)
        val = TokenStore(args.val_tokens, h, text_encoder=name) if args.val_tokens else None
    else:
        store = TokenStore(args.tokens, h)
        val = TokenStore(args.val_tokens, h) if args.val_tokens else None
    text = store.text
    if text is None and not args.text_encoder:
        from maskgit.models.text import store_caches
        if len(store_caches(args.tokens)) > 1:
            raise MaskGITError(f"{args.tokens} has caption embeddings of several encoders: pick one with "
                               f"--text-encoder")
    if text is not None:
        print(f"text-conditioned: {store.text_encoder} caption embeddings {text.max_len} x {text.dim}")
    if val is not None and text is not None and val.text_encoder != store.text_encoder:
        raise MaskGITError(f"{args.val_tokens} has no {store.text_encoder} caption embeddings: pass --text-encoder")
    classes = store.meta.get("classes")
    num_classes = int(store.labels.max()) + 1 if store.labels is not None else 0
    if classes:
        num_classes = len(classes)
    cfg = override(TRANSFORMER_TRAIN_DEFAULTS, args)
    torch.manual_seed(cfg.seed)  # the CLI owns the process: the initial weights follow --seed
    text_shape = None if text is None else (text.dim, text.max_len)
    ck = find_checkpoint(Path(args.out), args.resume) if args.resume else None
    init_dir = None
    if ck is not None:
        model, preset = model_from_run(ck, args, store.meta, num_classes, text_shape)
    elif args.init:
        model, preset, init_dir = model_from_init(args, store.meta, num_classes, text_shape)
    else:
        preset = args.preset or ("muse-small-8x8" if text is not None else "maskgit-small-8x8")
        model = build_model(preset, args.arch, store.meta, num_classes, text_shape, args.text_mode)
    if args.freeze:
        from maskgit.training.finetune import freeze
        print(f"frozen: {', '.join(freeze(model, 'transformer', args.freeze))}")
    if len(store) < cfg.batch_size:
        raise MaskGITError(f"{args.tokens} holds {len(store)} examples, fewer than --batch-size {cfg.batch_size}")
    lora = setup_lora(args, model, ck, init_dir)
    task = (NextTokenTask if args.arch == "ar" else MaskedTokenTask)(model, cfg)
    mc = model.config
    size = f", {tokenizer.config.image_size} px images" if tokenizer is not None else ""
    cond = f"{mc.num_classes} classes" if not mc.text_dim else f"text {mc.text_len} x {mc.text_dim}"
    report_and_check(task, first_examples(store), cfg.batch_size, device, ema=cfg.ema > 0,
                     skip=args.skip_memory_check,
                     describe_model=f"{args.arch} {preset}: {mc.grid_size}x{mc.grid_size} tokens of "
                                    f"{mc.codebook_size} codes{size}, {cond}")
    out = Path(args.out)
    meta = {"command": args.command_line, "tokens": str(Path(args.tokens).resolve()),
            "class_names": classes, "arch": args.arch, "preset": preset}
    if lora is not None:
        meta["lora"] = lora
    if init_dir is not None:
        meta["init"] = str(init_dir.resolve())
    if text is not None:
        meta["text_encoder"] = text.spec  # what Pipeline loads to embed prompts
    if args.tokenizer:
        meta["tokenizer"] = str(Path(args.tokenizer).resolve())

    def sample_fn(task, step):
        if tokenizer is None or not (num_classes or text is not None):
            return
        from maskgit.pipeline import Pipeline
        from maskgit.storage.images import make_grid, save_png
        m = task.model
        m.eval()
        labels = torch.arange(num_classes).repeat_interleave(4)
        if text is not None:  # 16 training captions, embedded from the store's cache
            from maskgit.models.text import CachedTextEncoder
            prompts = list(dict.fromkeys(store.captions))[:16]
            pipe = Pipeline(tokenizer, m, device=next(m.parameters()).device, text_encoder=CachedTextEncoder(text))
            imgs = pipe.generate(prompts=prompts, output="tensor", cfg=1.0)
        elif args.arch == "ar":
            toks = m.generate(labels, SampleConfig(), torch.Generator().manual_seed(0))
            g = m.config.grid_size
            imgs = tokenizer.to(toks.device).decode(toks.view(-1, g, g))  # (B, h, w) -> images
        else:
            imgs = Pipeline(tokenizer, m, device=next(m.parameters()).device).generate(labels, output="tensor")
        m.train()
        save_png(make_grid(imgs.cpu(), ncol=8, scale=2), out / f"samples_{step:08d}.png")

    t0 = time.time()
    res = train(task, store, cfg, out, val_data=val, resume=ck or args.resume, device=device, sample_fn=sample_fn,
                meta=meta)
    if res.step and (out / "final").exists():
        print(json.dumps({"step": res.step, "wall_s": round(time.time() - t0, 1),
                          **{k: round(v, 5) for k, v in res.metrics.items() if isinstance(v, float)}}))
        if lora is not None:
            print(f"LoRA adapter written to {out / 'final'}: maskgit.load(BASE, lora={str(out / 'final')!r}) or "
                  f"sample --lora-weights {out / 'final'}, BASE the pipeline of {lora.get('base')}")
        else:
            print(f"model written to {out / 'final'}")
    return 0


def _encoder_name(spec: str) -> str:
    from maskgit.models.text import encoder_name
    return encoder_name(spec)
