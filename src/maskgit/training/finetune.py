"""Fine-tuning: start a training run from a trained (or converted) model instead of random weights.

A transformer may be started on a token store with another number of classes: the code, mask and "no class"
embeddings move to their new ids, the first min(old, new) class embeddings are kept by index, and new classes start
at the mean of the old class embeddings plus the fresh model's small random row (a generic class to specialise).
Parts of a model can be frozen (``--freeze``). A tokenizer started from a run directory or checkpoint also gets the
discriminator, the dead-code counters and the AdamW moments that the checkpoint's train_state kept."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from maskgit.errors import MaskGITError

FREEZE_PARTS = {
    "transformer": {"embeddings": ("tok_emb.", "pos_emb", "emb_ln.", "text_proj.", "text_pos", "null_text"),
                    "blocks": ("blocks.",), "head": ("head_dense.", "head_ln.", "head_bias")},
    "vqgan": {"encoder": ("encoder.",), "codebook": ("quantizer.",), "decoder": ("decoder.",)},
}


def resolve_init(path: str | Path) -> tuple[Path, Path | None]:
    """(model directory, checkpoint with train_state or None) for ``--init PATH``: a model directory
    (config.json + model.safetensors, e.g. a run's final/ or the shipped weights), a checkpoint directory, or a
    run directory (its latest checkpoint)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise MaskGITError(f"--init {path} does not exist: give a model directory (config.json + model.safetensors), "
                           "a checkpoint directory or a run directory")
    if (path / "train_state.json").exists():
        return path, path
    ckpts = sorted(c for c in (path / "checkpoints").glob("step_*") if (c / "train_state.json").exists()) \
        if (path / "checkpoints").is_dir() else []
    if ckpts:
        return ckpts[-1], ckpts[-1]
    if (path / "final" / "config.json").exists():
        return path / "final", None
    if (path / "config.json").exists():
        return path, None
    raise MaskGITError(f"--init {path} holds no model: expected config.json + model.safetensors, a checkpoint "
                       "(checkpoints/step_*) or a run directory")


def adapt_classes(model: nn.Module, state: dict[str, torch.Tensor], old_cfg, generator: torch.Generator | None = None
                  ) -> tuple[dict[str, torch.Tensor], str]:
    """``state`` (a transformer's weights for ``old_cfg``) re-laid-out for ``model.config``'s vocabulary; returns
    (state, one-line report). Only the class count (and the "no class" id) may differ."""
    new_cfg = model.config
    same = {f.name for f in dataclasses.fields(new_cfg)} - {"num_classes", "null_class", "dropout"}
    diff = {k: (getattr(old_cfg, k), getattr(new_cfg, k)) for k in sorted(same)
            if getattr(old_cfg, k) != getattr(new_cfg, k)}
    if diff:
        raise MaskGITError(f"the --init model does not fit this run: (init, run) = {diff}; tokenize the data with the "
                           f"tokenizer the model was trained with, and leave out --preset")
    K, c_old, c_new = new_cfg.codebook_size, old_cfg.num_classes, new_cfg.num_classes
    fresh = model.state_dict()
    out = dict(state)
    for key in ("tok_emb.weight", "head_bias"):
        old, new = state[key], fresh[key].clone()
        new[:K] = old[:K]
        keep = min(c_old, c_new)
        new[K:K + keep] = old[K:K + keep]
        if c_new > c_old:
            base = old[K:K + c_old].mean(0) if c_old else torch.zeros_like(old[0])
            new[K + c_old:K + c_new] = base + new[K + c_old:K + c_new]
        if new_cfg.null_class and old_cfg.null_class:
            new[new_cfg.null_id] = old[old_cfg.null_id]
        new[new_cfg.mask_id] = old[old_cfg.mask_id]
        out[key] = new
    if c_new == c_old:
        report = f"all {c_new} class embeddings kept (by index)"
    elif c_new < c_old:
        report = f"class embeddings 0-{c_new - 1} kept (by index), {c_old - c_new} dropped"
    else:
        kept = f"class embeddings 0-{c_old - 1} kept (by index), " if c_old else ""
        report = f"{kept}{c_new - c_old} new class embedding(s) {c_old}-{c_new - 1} initialised from the old mean"
    if new_cfg.null_class and not old_cfg.null_class:
        report += "; the 'no class' embedding is new"
    return out, report


def init_transformer(model: nn.Module, model_dir: Path) -> str:
    """Load the transformer in ``model_dir`` into ``model`` (whose class count may differ); returns the report."""
    from maskgit.storage.checkpoint import load_model
    src = load_model(model_dir, ("transformer", "ar"))
    if type(src) is not type(model):
        raise MaskGITError(f"--init {model_dir} holds a {type(src).__name__}; this run trains a "
                           f"{type(model).__name__} (--arch)")
    state, report = adapt_classes(model, src.state_dict(), src.config)
    model.load_state_dict(state)
    return report


def init_tokenizer(task: nn.Module, model_dir: Path, ckpt: Path | None) -> tuple[str, dict | None]:
    """Load the VQGAN of ``model_dir`` into ``task.model``; with a checkpoint also the discriminator and code
    counters. Returns (report, optimizer state {"tensors", "info"} or None)."""
    from maskgit.storage.checkpoint import load_model, load_train_state
    src = load_model(model_dir, "vqgan")
    if src.config != task.model.config:
        diff = {f.name: (getattr(src.config, f.name), getattr(task.model.config, f.name))
                for f in dataclasses.fields(src.config)
                if getattr(src.config, f.name) != getattr(task.model.config, f.name)}
        raise MaskGITError(f"the --init tokenizer does not fit this run: (init, run) = {diff}")
    task.model.load_state_dict(src.state_dict())
    if ckpt is None:
        return "tokenizer weights loaded; no train_state beside them: discriminator and optimizer start fresh", None
    tensors, info = load_train_state(ckpt)
    own = task.state_dict()
    extra = {k[5:]: v for k, v in tensors.items() if k.startswith("task.") and not k.startswith("task.model.")}
    fits = all(k in own and own[k].shape == v.shape for k, v in extra.items()) and \
        all(k in extra for k in own if not k.startswith("model."))
    if not fits:
        return ("tokenizer weights loaded; the checkpoint's discriminator does not match this run's "
                "(--disc-filters / --disc-layers): discriminator and optimizer start fresh"), None
    task.load_state_dict({**own, **extra})
    opt = {"tensors": {k: v for k, v in tensors.items() if k.startswith("opt.")}, "info": info["optimizer"]}
    return f"tokenizer, discriminator and optimizer state loaded from {ckpt} (step {info.get('step')})", opt


def optimizer_loader(state: dict | None):
    """A callback for ``train(init_optimizer=...)`` that loads AdamW moments kept by a checkpoint, when the
    parameter groups line up (they do not after --freeze changes which parameters train)."""
    if state is None:
        return None

    def load(opt: torch.optim.Optimizer) -> str:
        from maskgit.storage.checkpoint import optimizer_from_flat
        sizes = [len(g["params"]) for g in opt.param_groups]
        saved = [len(g["params"]) for g in state["info"]["param_groups"]]
        if sizes != saved:
            return "optimizer starts fresh (the trainable parameters differ from the checkpoint's)"
        dev = opt.param_groups[0]["params"][0].device if sizes and sizes[0] else torch.device("cpu")
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
        optimizer_from_flat(opt, {k: v.to(dev) for k, v in state["tensors"].items()}, state["info"])
        for g, h in zip(opt.param_groups, hyper):  # this run's lr, betas and decay; only the moments are kept
            for k in [k for k in g if k != "params"]:
                del g[k]
            g.update(h)
        return "optimizer moments loaded"
    return load


def freeze(model: nn.Module, kind: str, spec: str) -> list[str]:
    """Freeze the comma-separated parts of ``spec`` (see FREEZE_PARTS; ``blocks:N`` = the first N blocks);
    returns the parts frozen."""
    table = FREEZE_PARTS[kind]
    done = []
    for part in filter(None, (s.strip() for s in spec.split(","))):
        name, _, arg = part.partition(":")
        if name not in table or (arg and name != "blocks"):
            raise MaskGITError(f"--freeze {part!r}: choose from {', '.join(table)}" +
                               (" (blocks:N = the first N blocks)" if kind == "transformer" else ""))
        prefixes = table[name]
        if arg:
            if not arg.isdigit() or not 0 < int(arg) <= model.config.depth:
                raise MaskGITError(f"--freeze blocks:N needs 1 <= N <= {model.config.depth}, got {part!r}")
            prefixes = tuple(f"blocks.{i}." for i in range(int(arg)))
        for n, p in model.named_parameters():
            if n.startswith(prefixes):
                p.requires_grad_(False)
        done.append(part)
    if not any(p.requires_grad for p in model.parameters()):
        raise MaskGITError(f"--freeze {spec} leaves nothing to train")
    return done
