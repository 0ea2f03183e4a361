"""Fine-tuning aMUSEd on a folder of captioned images: the library side of
``maskgit train --init amused/amused-256 --data IMAGES [--lora RANK]`` (a notebook calls ``finetune``).

1. ``base`` is a folder in diffusers' aMUSEd layout (a Hub id: ``maskgit.names.resolve`` it first, as the CLI does).
2. The images (``captions:PATH``: a ``.txt`` beside each image, or a ``captions.jsonl``) are resized and
   centre-cropped to the model's size and tokenized once with its VQ; every caption, and "" for the condition
   dropout, is encoded once with its CLIP text encoder (penultimate hidden states + pooled projection). Both are
   kept in ``OUT/data/`` for the next run and for ``--resume``; the VQ and CLIP are then freed.
3. The U-ViT trains with the masked-token cross-entropy on the masked positions (a cosine-schedule mask ratio per
   example, the mask id ``uvit.mask_id``), the reference's micro-conditioning ``[size, size, 0, 0, 6]``, and the
   caption replaced by "" with probability ``cond_dropout`` (CFG's unconditional branch). The loop is the project's
   one trainer (``training.loop.train``): checkpoints, ``--resume``, bf16 autocast on GPU, torchrun, metrics.
4. ``OUT/final``: full fine-tuning writes an aMUSEd folder (the base's files with ``transformer/`` replaced) that
   ``maskgit.load`` reads; LoRA writes the adapter alone (``maskgit.load(BASE, lora=OUT/final)``). A LoRA run's
   checkpoints hold only the adapters and their optimizer state (the base comes back from ``base`` on resume).
5. ``cfg.sample_every`` N > 0: ``OUT/samples_STEP.png`` every N steps and at the end, as the project's own models
   write theirs: the model being trained (its LoRA adapters applied) on the first training captions, seed
   ``cfg.seed``, through the one Pipeline (``training_samples``). The CLI also draws ``OUT/samples.png`` from
   ``final/`` as ``maskgit.load`` reads it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from maskgit.config import TrainConfig
from maskgit.errors import MaskGITError
from maskgit.storage.amused import read_json
from maskgit.training.objectives import mask_tokens, num_masked

log = logging.getLogger(__name__)

# LoRA on every attention projection (the conv stages' and the transformer layers') and the GEGLU MLP
AMUSED_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")
# the reference recipes (diffusers examples/amused): batch 8, constant LR 1e-4 (LoRA 8e-4), AdamW betas (0.9,
# 0.999), weight decay 0.01, no label smoothing; plus 10% condition dropout for CFG
AMUSED_TRAIN_DEFAULTS = TrainConfig(batch_size=8, lr=1e-4, warmup_steps=100, max_steps=1000, lr_schedule="constant",
                                    weight_decay=0.01, beta2=0.999, label_smoothing=0.0, cond_dropout=0.1,
                                    save_every=250, log_every=10)
LORA_LR = 8e-4
KEYS = ("tokens", "image_index", "caption_index", "hidden", "pooled")  # of OUT/data/examples.safetensors
RUN_FILE = "amused_run.json"  # in each checkpoint: the base and the LoRA settings it was trained with
SAMPLE_PROMPTS = 8  # the sample grids' prompts: the first distinct training captions


def train_defaults(lora: bool) -> TrainConfig:
    return dataclasses.replace(AMUSED_TRAIN_DEFAULTS, lr=LORA_LR) if lora else AMUSED_TRAIN_DEFAULTS


class CaptionedTokens:
    """The training examples in the loop's data interface: one per (image, caption) pair ->
    ``{"tokens": (b,h,w), "text": (b,L,E), "pooled": (b,C)}``."""

    def __init__(self, tokens, image_index, caption_index, hidden, pooled, captions, image_size: int):
        self.image_size = image_size
        self.tokens, self.image_index, self.caption_index = tokens, image_index, caption_index
        self.hidden, self.pooled, self.captions = hidden, pooled, captions  # the last caption is ""

    def __len__(self) -> int:
        return len(self.image_index)

    def batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.caption_index[indices]
        return {"tokens": self.tokens[self.image_index[indices]].long(), "text": self.hidden[c],
                "pooled": self.pooled[c]}

    @property
    def null(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.hidden[-1], self.pooled[-1]


def _stamp(files) -> list:
    return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def prepare(root: str | Path, images: str | Path, cache: str | Path | None = None,
            device: str | torch.device = "cpu", batch: int = 16) -> CaptionedTokens:
    """Tokenize the captioned images under ``images`` with the VQ of the aMUSEd folder ``root`` and encode their
    captions with its CLIP (kept in ``cache``, reused while the images, captions and models are unchanged)."""
    from maskgit.data.imagefiles import CaptionFolderDataset
    from maskgit.models.amused import UVit2DConfig
    from maskgit.models.amused_vq import AmusedVQConfig
    from maskgit.storage.amused import weight_file
    from maskgit.storage.checkpoint import save_tensors
    from maskgit.storage.files import atomic_dir
    root = Path(root)
    size = UVit2DConfig.from_dict(read_json(root / "transformer" / "config.json")).sample_size * \
        AmusedVQConfig.from_dict(read_json(root / "vqvae" / "config.json")).downsample
    ds = CaptionFolderDataset(images, image_size=size)
    pairs = [(i, c) for i, caps in enumerate(ds.captions) for c in caps]
    captions = list(dict.fromkeys(c for _, c in pairs if c)) + [""]
    models = [weight_file(root / "vqvae"), *sorted((root / "text_encoder").glob("*.safetensors")),
              *sorted((root / "tokenizer").glob("*"))]
    key = hashlib.sha256(json.dumps([size, _stamp(ds.paths), _stamp(models), pairs]).encode()).hexdigest()
    cache = Path(cache) if cache is not None else None
    if cache is not None and (cache / "key.txt").is_file() and (cache / "key.txt").read_text() == key:
        from safetensors.torch import load_file
        t = load_file(str(cache / "examples.safetensors"))
        log.info(f"{len(pairs)} captioned images: tokens and caption embeddings from {cache}")
        return CaptionedTokens(*(t[k] for k in KEYS), captions, size)
    from maskgit.families.amused import ClipText
    from maskgit.storage.amused import load_vq
    vq, text = load_vq(root / "vqvae").to(device), ClipText.load(root, device)
    log.info(f"tokenizing {len(ds)} images at {size} px with the aMUSEd VQ, encoding {len(captions)} captions")
    toks = [vq.encode(torch.stack([ds.load(j) for j in range(i, min(i + batch, len(ds)))]).to(device)).cpu()
            for i in range(0, len(ds), batch)]
    hidden, pooled = [], []
    for i in range(0, len(captions), batch):
        h, _, p = text(captions[i:i + batch])
        hidden.append(h.float().cpu())
        pooled.append(p.float().cpu())
    del vq, text
    index = {c: i for i, c in enumerate(captions)}
    tensors = {"tokens": torch.cat(toks).to(torch.int32), "image_index": torch.tensor([i for i, _ in pairs]),
               "caption_index": torch.tensor([index[c] for _, c in pairs]), "hidden": torch.cat(hidden),
               "pooled": torch.cat(pooled)}
    if cache is not None and int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank prepares alike
        with atomic_dir(cache) as tmp:
            save_tensors(tensors, tmp / "examples.safetensors")
            (tmp / "captions.json").write_text(json.dumps(captions))
            (tmp / "key.txt").write_text(key)
    return CaptionedTokens(*tensors.values(), captions, size)


class AmusedMaskedTask(nn.Module):
    """The masked-token objective of the U-ViT: ``batch`` from CaptionedTokens, the model an AmusedTransformer."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, null: tuple[torch.Tensor, torch.Tensor], root: Path,
                 lora: dict | None = None):
        super().__init__()
        self.model, self.cfg, self.root, self.lora = model, cfg, Path(root), lora
        self.checkpoint_frozen = lora is None  # LoRA: checkpoints keep the adapters; the base is `root`'s
        self.register_buffer("null_hidden", null[0].clone(), persistent=False)
        self.register_buffer("null_pooled", null[1].clone(), persistent=False)

    def forward(self, batch: dict, ctx):
        cfg, mc = self.cfg, self.model.config
        tokens = batch["tokens"].long().flatten(1)  # (b, N)
        b, N = tokens.shape
        g_r = torch.rand(ctx.global_batch, generator=ctx.generator(1))
        g_noise = torch.rand(ctx.global_batch, N, generator=ctx.generator(2))
        drop = ctx.rows(torch.rand(ctx.global_batch, generator=ctx.generator(3)) < cfg.cond_dropout)
        inp, mask = mask_tokens(tokens, ctx.rows(g_r), cfg.mask_schedule, mc.mask_id, ctx.rows(g_noise))
        text = torch.where(drop[:, None, None], self.null_hidden.to(batch["text"].dtype), batch["text"])
        pooled = torch.where(drop[:, None], self.null_pooled.to(batch["pooled"].dtype), batch["pooled"])
        logits = self.model(inp, None, text=text, pooled=pooled)  # (b, N, K)
        ce = F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten(), reduction="none",
                             label_smoothing=cfg.label_smoothing).view(b, N)
        loss = (ce * mask).sum() * ctx.world / int(num_masked(g_r, N, cfg.mask_schedule).sum())
        with torch.no_grad():
            acc = ((logits.argmax(-1) == tokens) & mask).sum() / mask.sum().clamp_min(1)
        return loss, {"masked_acc": acc}

    def write_model(self, path: Path, model: nn.Module, meta: dict, final: bool) -> list[str]:
        """The loop's hook: a checkpoint gets RUN_FILE (its tensors are in the train state); final/ gets the
        adapter (LoRA) or an aMUSEd folder with the trained transformer/."""
        if not final:
            (path / RUN_FILE).write_text(json.dumps({"base": str(self.root), "lora": self.lora}) + "\n")
            return [RUN_FILE]
        if self.lora is not None:
            from maskgit.storage.checkpoint import write_manifest
            from maskgit.training.lora import CONFIG_NAME, WEIGHTS_NAME, save_lora
            write_manifest(save_lora(model.uvit, path, meta={**meta, "base": str(self.root)}),
                           [CONFIG_NAME, WEIGHTS_NAME])
            return [CONFIG_NAME, WEIGHTS_NAME]
        from maskgit.storage.amused import save_uvit
        for name in ("model_index.json", "scheduler", "vqvae", "text_encoder", "tokenizer"):
            src = self.root / name
            if src.is_dir():
                shutil.copytree(src, path / name, copy_function=_link_or_copy)
            elif src.is_file():
                _link_or_copy(src, path / name)
        save_uvit(model.uvit, path / "transformer")
        (path / "finetune.json").write_text(json.dumps({**meta, "base": str(self.root)}, indent=1) + "\n")
        return []


def _link_or_copy(src, dst) -> None:
    """A hard link to the base's file (no second copy of the VQ and CLIP weights) where the disk allows, else a copy
    (Hub snapshots hold symlinks: the link goes to the file itself)."""
    try:
        os.link(os.path.realpath(src), dst)
    except OSError:
        shutil.copy2(src, dst)


def _groups(task: nn.Module, cfg: TrainConfig) -> list[dict]:
    """The reference's weight decay: none on biases, norms and the token embeddings."""
    decay, plain = [], []
    for n, p in task.named_parameters():
        if p.requires_grad:
            (plain if p.ndim < 2 or "embeddings.weight" in n else decay).append(p)
    return [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": plain, "weight_decay": 0.0}]


def _check_run(ck: Path | None, lora: dict | None) -> None:
    if ck is None or not (ck / RUN_FILE).is_file():
        return
    saved = json.loads((ck / RUN_FILE).read_text())
    if saved.get("lora") != lora:
        was = f"--lora {saved['lora']['rank']}" if saved.get("lora") else "full fine-tuning"
        raise MaskGITError(f"{ck} was trained with {was} ({saved.get('lora')}): resume it with the same settings, "
                           "or train the new ones in a new --out directory")


def sample_prompts(captions: list[str]) -> list[str]:
    """The sample grids' prompts: the first SAMPLE_PROMPTS distinct training captions ("" when all are empty)."""
    return list(dict.fromkeys(c for c in captions if c))[:SAMPLE_PROMPTS] or [""]


def save_grid(images: torch.Tensor, prompts: list[str], path: Path) -> Path:
    """An aMUSEd run's sample grid: 4 images a row, each enlarged to at least 128 px, its prompt under it."""
    from maskgit.storage.images import make_grid, save_png
    save_png(make_grid(images.cpu(), labels=prompts, ncol=4, scale=max(1, 128 // images.shape[-1])), path)
    return path


class CaptionEmbeddings:
    """The Pipeline's text encoder for the training captions during training: their CLIP outputs (``OUT/data``),
    looked up, since the CLIP model is freed once the data is prepared. Prompts and "" as ClipText gives them."""

    def __init__(self, data: CaptionedTokens, device: torch.device):
        self.index = {c: i for i, c in enumerate(data.captions)}
        self.hidden, self.pooled, self.device = data.hidden, data.pooled, torch.device(device)
        self.max_length = int(data.hidden.shape[1])

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, None, torch.Tensor]:
        unknown = [p for p in prompts if p not in self.index]
        if unknown:
            raise MaskGITError(f"{unknown[0]!r} is not a training caption: only those are embedded during training")
        i = torch.tensor([self.index[p] for p in prompts], dtype=torch.long)
        return self.hidden[i].to(self.device), None, self.pooled[i].to(self.device)


def training_samples(base: str | Path, data: CaptionedTokens, out: str | Path, pipeline_cls,
                     seed: int = 0) -> Callable[[nn.Module, int], None]:
    """The loop's sample callback for ``cfg.sample_every``: ``out/samples_STEP.png``, the grid of the model being
    trained (``task.model``, LoRA adapters included) for ``sample_prompts``, seeded by ``seed``, decoded by the
    base's VQ through the one Pipeline (``pipeline_cls``, passed down by the caller). It leaves the run as it
    found it: the RNG states, every module's train/eval mode, the VQ kept on the CPU between grids. A second call
    for the same step (the loop's end call after that step's own) draws nothing."""
    from maskgit.families.amused import assemble, masking_schedule
    from maskgit.storage.amused import load_vq
    base, out = Path(base), Path(out)
    prompts, schedule = sample_prompts(data.captions), masking_schedule(base)
    state: dict = {"vq": None, "step": None}

    def sample_fn(task: nn.Module, step: int) -> None:
        if state["step"] == step:
            return
        state["step"] = step
        uvit = task.model.uvit
        dev = next(uvit.parameters()).device
        if state["vq"] is None:
            state["vq"] = load_vq(base / "vqvae")
        modes = [(m, m.training) for m in task.modules()]
        cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=cuda):
                tok, transformer, text = assemble(state["vq"], uvit, CaptionEmbeddings(data, dev), schedule)
                pipe = pipeline_cls(tok, transformer, device=dev, text_encoder=text)
                images = pipe.generate(prompts=prompts, seed=seed, output="tensor")
        finally:
            state["vq"].cpu()
            for m, training in modes:
                m.train(training)
        save_grid(images, prompts, out / f"samples_{step:08d}.png")
    return sample_fn


def finetune(base: str | Path, images: str | Path, out: str | Path, *, cfg: TrainConfig | None = None,
             lora: int | None = None, lora_alpha: float | None = None, lora_targets=AMUSED_TARGETS,
             grad_checkpointing: bool = False, resume: bool | str | Path = False, device: str = "cpu",
             skip_memory_check: bool = False, meta: dict | None = None, progress: bool = True, pipeline_cls=None):
    """Fine-tune the aMUSEd folder ``base`` on the captioned images under ``images`` into the run folder ``out``
    (full fine-tuning, or LoRA adapters of rank ``lora``); returns the loop's TrainResult. See the module text.
    ``pipeline_cls`` (``maskgit.Pipeline``) draws the ``cfg.sample_every`` grids."""
    from maskgit.families.amused import AmusedTransformer
    from maskgit.storage.amused import load_uvit
    from maskgit.training import memory
    from maskgit.training.grad_checkpoint import enable_grad_checkpointing
    from maskgit.training.loop import train
    from maskgit.training.lora import add_lora, trainable_parameters
    from maskgit.training.resume import find_checkpoint
    root, out = Path(base), Path(out)
    if not (root / "model_index.json").is_file():
        raise MaskGITError(f"{root} is not an aMUSEd folder (no model_index.json)")
    cfg = cfg or train_defaults(lora is not None)
    if cfg.sample_every and pipeline_cls is None:
        raise MaskGITError("sample_every needs pipeline_cls (maskgit.Pipeline) to draw the grids with")
    lora_cfg = None if lora is None else {"rank": lora, "alpha": float(lora if lora_alpha is None else lora_alpha),
                                          "targets": list(lora_targets)}
    if lora is not None and cfg.ema > 0:
        raise MaskGITError("--ema with --lora is not supported for aMUSEd: leave out --ema")
    ck = find_checkpoint(out, resume) if resume else None
    _check_run(ck, lora_cfg)
    data = prepare(root, images, out / "data", device)
    if len(data) < cfg.batch_size:
        raise MaskGITError(f"{images} holds {len(data)} captioned images, fewer than --batch-size {cfg.batch_size}")
    uvit = load_uvit(root / "transformer")
    transformer = AmusedTransformer(uvit, data.hidden.shape[1], data.image_size)
    if lora_cfg is not None:
        names = add_lora(transformer.uvit, lora_cfg["rank"], lora_cfg["alpha"], tuple(lora_cfg["targets"]))
        log.info(f"LoRA rank {lora}, alpha {lora_cfg['alpha']:g}: {len(names)} layers, "
                 f"{trainable_parameters(transformer):,} trainable of {sum(p.numel() for p in uvit.parameters()):,}")
    if grad_checkpointing:
        log.info(enable_grad_checkpointing(transformer))
    task = AmusedMaskedTask(transformer, cfg, data.null, root, lora_cfg)
    est = memory.estimate(task, data.batch(torch.arange(min(2, len(data)))), cfg.batch_size, device,
                          ema=cfg.ema > 0)
    log.info(f"aMUSEd U-ViT {sum(p.numel() for p in uvit.parameters()) / 1e6:.2f}M parameters, "
             f"{data.tokens.shape[-2]}x{data.tokens.shape[-1]} tokens, {len(data)} examples (caption embeddings "
             f"{(data.hidden.nbytes + data.pooled.nbytes) / 2 ** 20:.0f} MiB); {memory.describe(est)}")
    if not skip_memory_check:
        memory.check(est, multiple=int(os.environ.get("WORLD_SIZE", "1")))
    meta = {**(meta or {}), "base": str(root.resolve()), "data": str(Path(images).resolve()), "lora": lora_cfg}
    sample_fn = training_samples(root, data, out, pipeline_cls, cfg.seed) if cfg.sample_every else None
    return train(task, data, cfg, out, resume=ck or resume, device=device, param_groups=lambda t: _groups(t, cfg),
                 sample_fn=sample_fn, meta=meta, progress=progress)
