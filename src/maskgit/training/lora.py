"""LoRA adapters on chosen nn.Linear layers: y = base(x) + (x @ A^T @ B^T) * alpha / r.

A starts Kaiming-uniform and B at zero, so a freshly wrapped model computes exactly what the base model does.
Adapters are saved alone (adapter_config.json + adapter_model.safetensors), loaded strictly, and merged into the
base weights for inference (merge first, then any CPU fast-path preparation of the plain Linear layers)."""

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from maskgit.errors import MaskGITError

# attention q/k/v/out (fused qkv and kv too) and the MLP of the project's transformers; other models name theirs
DEFAULT_TARGETS = ("qkv", "q", "kv", "out", "fc1", "fc2")
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a rank-r update; `.base` keeps the original layer (and its state-dict names)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.rank, self.alpha, self.scale = rank, float(alpha), float(alpha) / rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        for p in base.parameters():
            p.requires_grad_(False)

    @property
    def weight(self):
        return self.base.weight

    @property
    def bias(self):
        return self.base.bias

    @property
    def in_features(self):
        return self.base.in_features

    @property
    def out_features(self):
        return self.base.out_features

    def delta(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scale

    def forward(self, x):
        return self.base(x) + nn.functional.linear(nn.functional.linear(x, self.lora_A), self.lora_B) * self.scale


def _check_rank(rank, alpha):
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise MaskGITError(f"LoRA rank must be a positive integer, got {rank!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha) or alpha <= 0:
        raise MaskGITError(f"LoRA alpha must be a positive finite number, got {alpha!r}")


def matches(name: str, targets) -> bool:
    """A layer name matches a target that is its last part(s): "qkv" matches "blocks.0.attn.qkv", "to_out.0"
    matches "...attn1.to_out.0"; a full name matches itself."""
    return any(name == t or name.endswith("." + t) for t in targets)


def add_lora(model: nn.Module, rank: int, alpha: float | None = None, targets=DEFAULT_TARGETS) -> list[str]:
    """Wrap every nn.Linear whose name ends in one of `targets` (see ``matches``); freeze everything else.
    Returns the wrapped names."""
    alpha = float(rank) if alpha is None else alpha
    _check_rank(rank, alpha)
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise MaskGITError("this model already has LoRA adapters; merge them (merge_lora) before adding new ones")
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and matches(n, targets)]
    if not names:
        raise MaskGITError(f"no nn.Linear layer named one of {', '.join(targets)} in this model; name its layers")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha))
    model._lora_config = {"rank": rank, "alpha": float(alpha), "targets": names}
    return names


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors, named '<layer>.lora_A' / '<layer>.lora_B'."""
    out = {}
    for n, m in lora_modules(model).items():
        out[f"{n}.lora_A"] = m.lora_A.detach().contiguous()
        out[f"{n}.lora_B"] = m.lora_B.detach().contiguous()
    return out


def save_lora(model: nn.Module, directory, meta: dict | None = None) -> Path:
    """adapter_config.json (rank, alpha, the wrapped layers' names [, meta]) + adapter_model.safetensors."""
    mods = lora_modules(model)
    if not mods:
        raise MaskGITError("this model has no LoRA adapters to save (train with --lora RANK)")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    first = next(iter(mods.values()))
    cfg = {"format": "maskgit-lora", "rank": first.rank, "alpha": first.alpha, "targets": sorted(mods)}
    if meta:
        cfg["meta"] = meta
    save_file({k: v.cpu() for k, v in lora_state(model).items()}, str(d / WEIGHTS_NAME))
    (d / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")
    return d


def _read_lora(directory) -> tuple[dict, dict[str, torch.Tensor]]:
    d = Path(directory)
    if not (d / CONFIG_NAME).is_file() or not (d / WEIGHTS_NAME).is_file():
        raise MaskGITError(f"{d} is not a LoRA folder: it needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        cfg = json.loads((d / CONFIG_NAME).read_text())
        tensors = load_file(str(d / WEIGHTS_NAME))
    except Exception as e:  # noqa: BLE001 - any parse failure is the user's file
        raise MaskGITError(f"{d}: unreadable LoRA files ({type(e).__name__}: {e})".splitlines()[0]) from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("targets"), list):
        raise MaskGITError(f"{d / CONFIG_NAME}: not a LoRA adapter config (needs rank, alpha, targets)")
    _check_rank(cfg.get("rank"), cfg.get("alpha"))
    return cfg, tensors


def load_lora(model: nn.Module, directory) -> nn.Module:
    """Add adapters as the folder describes and load them strictly: the targets and shapes must match exactly."""
    cfg, tensors = _read_lora(directory)
    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    missing = [t for t in cfg["targets"] if t not in linears]
    if missing:
        raise MaskGITError(f"{directory}: LoRA targets not in this model: {', '.join(missing[:5])}")
    expected = {f"{t}.{s}" for t in cfg["targets"] for s in ("lora_A", "lora_B")}
    if set(tensors) != expected:
        odd = sorted(set(tensors) ^ expected)
        raise MaskGITError(f"{directory}: adapter tensors do not match its config: {', '.join(odd[:5])}")
    for t in cfg["targets"]:
        lin = model.get_submodule(t)
        a, b = tensors[f"{t}.lora_A"], tensors[f"{t}.lora_B"]
        want_a, want_b = (cfg["rank"], lin.in_features), (lin.out_features, cfg["rank"])
        if tuple(a.shape) != want_a or tuple(b.shape) != want_b:
            raise MaskGITError(f"{directory}: {t} adapter shapes {tuple(a.shape)}, {tuple(b.shape)} "
                               f"do not fit this model's layer (want {want_a}, {want_b})")
    add_lora(model, cfg["rank"], cfg["alpha"], targets=tuple(cfg["targets"]))  # full names: exactly those layers
    wrapped = lora_modules(model)
    with torch.no_grad():
        for t, m in wrapped.items():
            m.lora_A.copy_(tensors[f"{t}.lora_A"])
            m.lora_B.copy_(tensors[f"{t}.lora_B"])
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold B @ A * scale into each base weight and put the plain nn.Linear back (trainability restored)."""
    for name, m in lora_modules(model).items():
        with torch.no_grad():
            m.base.weight += m.delta().to(m.base.weight.dtype)
        for p in m.base.parameters():
            p.requires_grad_(True)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, m.base)
    if hasattr(model, "_lora_config"):
        del model._lora_config
    return model


def checkpoint_state(task: nn.Module) -> dict[str, torch.Tensor]:
    """What a training checkpoint keeps of ``task``: its state dict, without the frozen parameters when the task
    says ``checkpoint_frozen = False`` (a LoRA run of a large model: its base comes back from the --init model on
    resume, and each checkpoint holds megabytes, not gigabytes)."""
    state = task.state_dict()
    if getattr(task, "checkpoint_frozen", True):
        return state
    frozen = {n for n, p in task.named_parameters() if not p.requires_grad}
    return {k: v for k, v in state.items() if k not in frozen}


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
