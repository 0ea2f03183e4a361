"""Every shape and knob of the project as frozen dataclasses, plus named presets.

A model is fully described by its config; configs round-trip through JSON (``to_dict`` / ``from_dict``)
and the CLI builds its flags from the dataclass fields (commands/parser.py), so nothing is written twice."""

from __future__ import annotations

import dataclasses
import math
import numbers
import typing
from dataclasses import dataclass, field
from typing import Any

from maskgit.errors import MaskGITError
from maskgit.step_plan import check_step_plan


@dataclass(frozen=True)
class VQGANConfig:
    """The official MaskGIT tokenizer layout (conv encoder/decoder around a vector quantizer)."""

    channels: int = 3  # image channels in and out
    filters: int = 128
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # one entry per level; 2x pooling between levels
    num_res_blocks: int = 2
    embedding_dim: int = 256
    codebook_size: int = 1024
    num_groups: int = 32  # GroupNorm groups (eps 1e-6)
    official_shortcut: bool = True  # released weights: out + conv1x1(out) where the width changes
    commitment_cost: float = 0.25
    entropy_loss_weight: float = 0.0
    image_size: int = 256  # nominal training resolution (the network is fully convolutional)

    def __post_init__(self):
        from maskgit.model_checks import check_model_config
        check_model_config(self)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    def grid_shape(self, image_size: int | None = None) -> tuple[int, int]:
        s = (image_size or self.image_size) // self.downsample
        return (s, s)


@dataclass(frozen=True)
class TransformerConfig:
    """Bidirectional (MaskGIT) or causal (AR baseline) transformer over a token grid."""

    codebook_size: int = 1024
    num_classes: int = 1000
    grid_size: int = 16  # tokens per side
    width: int = 768
    depth: int = 24
    heads: int = 16
    mlp_dim: int = 3072
    dropout: float = 0.1
    null_class: bool = False  # one extra "no class" id (classifier-free guidance); the official model has none
    arch: str = "maskgit"  # "maskgit" (bidirectional, post-LN, official) or "ar" (causal, raster order)
    text_dim: int = 0  # >0: condition on a frozen text encoder's token embeddings of this size (cross-attention)
    text_len: int = 0  # tokens of text context (the encoder's max_len; also the null-text embedding's length)
    # how the text reaches the image tokens: "cross" (a cross-attention layer in every block, as Muse) or
    # "prefix" (the projected text tokens join the self-attention sequence; no extra layers). The text presets use
    # prefix, which bound attributes better in a measured comparison (benchmarks/RESULTS.md); the field's default
    # stays "cross" so that checkpoints written before the field existed load as what they are.
    text_mode: str = "cross"

    def __post_init__(self):
        from maskgit.model_checks import check_model_config
        check_model_config(self)

    @property
    def num_tokens(self) -> int:
        return self.grid_size * self.grid_size

    @property
    def null_id(self) -> int:
        if not self.null_class:
            raise MaskGITError("this model has no 'no class' id: train it with null_class=True to use CFG")
        return self.codebook_size + self.num_classes

    @property
    def vocab_size(self) -> int:
        return self.codebook_size + self.num_classes + int(self.null_class) + 1

    @property
    def mask_id(self) -> int:
        return self.vocab_size - 1


@dataclass(frozen=True)
class SampleConfig:
    """MaskGIT iterative decoding (official semantics; see sampling.decode)."""

    steps: int = 8
    schedule: str = "cosine"
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    choice_temperature: float = 4.5
    cfg: float = 0.0  # classifier-free guidance scale (0 = off)
    cfg_schedule: str = "constant"  # "constant" or "linear" (ramps 0 -> cfg over the steps)
    cfg_start: float = 0.0  # guidance (the unconditional pass) runs only on steps t with t/T in [cfg_start, cfg_end)
    cfg_end: float = 1.0
    cfg_every: int = 1  # the unconditional pass on every K-th guided step; the steps between reuse its difference
    start_step: int = 0  # >0 starts later in the schedule (class-conditional editing)
    order: str = "confidence"  # which tokens each step reveals: "confidence" | "halton" | "random"
    candidates: int = 1  # >1: decode this many per image, keep the one the classifier finds most on-class
    sampler: str = "maskgit"  # "amused": the aMUSEd reference scheduler's arithmetic (sampling/amused.py)
    cache: str = "off"  # cached decoding: "off" | "everyK" (full, then K-1 cheap steps) | F/C per step (step_plan.py)

    def __post_init__(self):
        check_sample_fields(self)


SCHEDULE_NAMES = ("cosine", "linear", "square", "cubic", "sqrt", "log", "exp")
SCHEDULE_ALIASES = {"square-root": "sqrt", "square_root": "sqrt", "pow2": "square", "pow3": "cubic"}
ORDER_NAMES = ("confidence", "halton", "random")
SAMPLER_NAMES = ("maskgit", "amused")  # maskgit: the official decoder's arithmetic; amused: the aMUSEd reference's


def _num(name: str, v, integer: bool = False):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral if integer else numbers.Real) or not math.isfinite(v):
        raise MaskGITError(f"{name} must be {'an integer' if integer else 'a finite number'}, got {v!r}")
    return v


def check_sample_fields(cfg: SampleConfig) -> None:
    """Every field in range, or one line naming it: the CLI, library and server refuse the same values alike."""
    steps, start = _num("steps", cfg.steps, True), _num("start_step", cfg.start_step, True)
    if steps < 1 or not 0 <= start < steps:
        raise MaskGITError(f"steps must be >= 1 and start_step in [0, steps), got {steps} and {start}")
    for name in ("temperature", "choice_temperature", "cfg"):
        if _num(name, getattr(cfg, name)) < 0:
            raise MaskGITError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    if _num("top_k", cfg.top_k, True) < 0 or not 0 < _num("top_p", cfg.top_p) <= 1:
        raise MaskGITError(f"top_k must be >= 0 and top_p in (0, 1]; got {cfg.top_k}, {cfg.top_p}")
    if cfg.cfg_schedule not in ("constant", "linear"):
        raise MaskGITError(f"cfg_schedule must be 'constant' or 'linear', got {cfg.cfg_schedule!r}")
    schedule = SCHEDULE_ALIASES.get(cfg.schedule, cfg.schedule) if isinstance(cfg.schedule, str) else cfg.schedule
    if schedule not in SCHEDULE_NAMES:
        raise MaskGITError(f"unknown mask schedule {cfg.schedule!r}; choose one of: {', '.join(SCHEDULE_NAMES)}")
    if cfg.order not in ORDER_NAMES:
        raise MaskGITError(f"unknown decoding order {cfg.order!r}; choose one of: {', '.join(ORDER_NAMES)}")
    if _num("candidates", cfg.candidates, True) < 1:
        raise MaskGITError(f"candidates must be >= 1, got {cfg.candidates}")
    if cfg.sampler not in SAMPLER_NAMES:
        raise MaskGITError(f"unknown sampler {cfg.sampler!r}; choose one of: {', '.join(SAMPLER_NAMES)}")
    if cfg.sampler == "amused" and (cfg.order != "confidence" or schedule not in ("cosine", "linear")):
        raise MaskGITError("the amused sampler ranks by confidence on the cosine or linear schedule (use "
                           "--sampler maskgit for the other orders and schedules)")
    check_step_plan(cfg)  # cache schedule and guidance interval


def check_seed(seed) -> int:
    """A seed as an int in [0, 2**63) (what torch.Generator.manual_seed takes); one line otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2 ** 63:
        raise MaskGITError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    return int(seed)


def sample_kwargs(cfg: SampleConfig) -> dict:
    """The per-request decoding knobs of ``cfg`` (every field but ``start_step``, which editing sets itself)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "start_step"}


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, bookkeeping and masking for the transformer stage (and shared by the tokenizer stage)."""

    batch_size: int = 256
    lr: float = 1e-4
    warmup_steps: int = 5000
    max_steps: int = 100_000
    lr_schedule: str = "cosine"  # or "constant"
    weight_decay: float = 0.045
    beta1: float = 0.9
    beta2: float = 0.96
    grad_clip: float = 1.0
    ema: float = 0.0  # 0 = off, else decay
    label_smoothing: float = 0.1
    mask_schedule: str = "cosine"
    loss_on_all_tokens: bool = False
    cond_dropout: float = 0.1  # probability of replacing the class by the "no class" id
    seed: int = 0
    save_every: int = 1000
    keep_last: int = 3
    log_every: int = 50
    sample_every: int = 0  # 0 = only at the end
    eval_every: int = 0  # 0 = only at the end
    val_batches: int = 8
    amp: str = "auto"  # auto: bf16 autocast on CUDA and on CPUs with native bf16, else fp32; "off" | "bf16"
    max_minutes: float = 0.0  # stop (and save) after this wall time; 0 = no limit

    def __post_init__(self):
        """A value no run can use is an error naming its flag, before any file or folder is made."""
        ranges = {"batch_size": (1, None), "max_steps": (1, None), "warmup_steps": (0, None), "lr": (0, None),
                  "weight_decay": (0, None), "beta1": (0, 1), "beta2": (0, 1), "grad_clip": (0, None),
                  "ema": (0, 1), "label_smoothing": (0, 1), "cond_dropout": (0, 1), "save_every": (0, None),
                  "keep_last": (1, None), "log_every": (1, None), "sample_every": (0, None),
                  "eval_every": (0, None), "val_batches": (1, None), "max_minutes": (0, None)}
        for name, (lo, hi) in ranges.items():
            v = getattr(self, name)
            if not (v == v and abs(v) != float("inf")) or v < lo or (hi is not None and v >= hi) \
                    or (name == "lr" and v <= 0):
                want = f"in [{lo}, {hi})" if hi is not None else (f"> {lo}" if name == "lr" else f">= {lo}")
                raise MaskGITError(f"--{name.replace('_', '-')} must be {want}, got {v}")
        if self.amp not in ("auto", "off", "bf16"):
            raise MaskGITError(f"--amp must be auto, off or bf16, got {self.amp!r}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise MaskGITError(f"--lr-schedule must be cosine or constant, got {self.lr_schedule!r}")


@dataclass(frozen=True)
class TokenizerTrainConfig:
    """Losses of the tokenizer stage (the optimiser settings come from TrainConfig)."""

    l1_weight: float = 0.0
    l2_weight: float = 1.0
    perceptual_weight: float = 0.1
    disc_weight: float = 0.1
    disc_start: int = 2000
    disc_filters: int = 64
    disc_layers: int = 3
    restart_dead_codes: bool = True
    dead_code_steps: int = 100  # a code unused for this many steps is re-seeded from encoder outputs


# ---------------------------------------------------------------- presets
VQGAN_PRESETS: dict[str, VQGANConfig] = {
    # Official MaskGIT ImageNet tokenizer: 54.5M parameters; 16x16 tokens at 256 px, 32x32 at 512 px.
    "imagenet-f16": VQGANConfig(),
    # 32 px grey images -> 8x8 tokens (Fashion-MNIST); see weights/fashion-mnist/tokenizer/README.md.
    "fmnist-f4": VQGANConfig(channels=1, filters=64, channel_mult=(1, 2, 2), num_res_blocks=2,
                             embedding_dim=64, codebook_size=512, image_size=32),
    # 32 px grey images -> 16x16 = 256 tokens.
    "fmnist-f2": VQGANConfig(channels=1, filters=64, channel_mult=(1, 2), num_res_blocks=2,
                             embedding_dim=64, codebook_size=512, image_size=32),
    # 32 px colour images -> 8x8 tokens (emoji).
    "rgb32-f4": VQGANConfig(channels=3, filters=64, channel_mult=(1, 2, 2), num_res_blocks=2,
                            embedding_dim=64, codebook_size=512, image_size=32),
    # A cheaper 32 px colour tokenizer (8x8 tokens) sized to train on a 2-core CPU (emoji).
    "rgb32-f4-small": VQGANConfig(channels=3, filters=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                                  embedding_dim=32, codebook_size=512, num_groups=8, image_size=32),
    # A small f16 tokenizer (0.64M parameters; 256 px RGB -> 16x16 tokens) for data-pipeline benchmarks.
    "rgb256-f16-small": VQGANConfig(channels=3, filters=16, channel_mult=(1, 1, 2, 2, 4), num_res_blocks=1,
                                    embedding_dim=32, codebook_size=1024, num_groups=8, image_size=256),
    # Your own labelled folder on a 2-core CPU (README "Train on your own images"): 32 px RGB -> 8x8 tokens of 256
    # codes, 0.74M parameters, 0.32 GFLOP per image (encode + decode); the recipe trains it 8 minutes.
    "cpu32-f4": VQGANConfig(channels=3, filters=32, channel_mult=(1, 2, 2), num_res_blocks=1, embedding_dim=32,
                            codebook_size=256, num_groups=8, image_size=32),
    # Tests only.
    "tiny": VQGANConfig(channels=1, filters=16, channel_mult=(1, 2), num_res_blocks=1, embedding_dim=8,
                        codebook_size=32, num_groups=4, image_size=16),
}

TRANSFORMER_PRESETS: dict[str, TransformerConfig] = {
    # Official MaskGIT ImageNet 256: 24 x 768, vocabulary 2025, 257 positions, 172.5M parameters.
    "maskgit-imagenet256": TransformerConfig(),
    "maskgit-imagenet512": TransformerConfig(grid_size=32),
    # Small class-conditional models for 8x8 and 16x16 grids (Fashion-MNIST: 512 codes, 10 classes).
    "maskgit-small-8x8": TransformerConfig(codebook_size=512, num_classes=10, grid_size=8, width=256, depth=6,
                                           heads=8, mlp_dim=1024, dropout=0.1, null_class=True),
    "maskgit-small-16x16": TransformerConfig(codebook_size=512, num_classes=10, grid_size=16, width=256,
                                             depth=6, heads=8, mlp_dim=1024, dropout=0.1, null_class=True),
    # Text-to-image (Muse-style) on 8x8 grids: cross-attention to MiniLM's 384-d token embeddings (16 tokens).
    # benchmarks/train_text.sh trains it on the shapes dataset; binding accuracy in benchmarks/RESULTS.md.
    "muse-small-8x8": TransformerConfig(codebook_size=512, num_classes=0, grid_size=8, width=256, depth=6, heads=8,
                                        mlp_dim=1024, dropout=0.1, null_class=False, text_dim=384, text_len=16,
                                        text_mode="prefix"),
    # A 4 x 128 text model for CPU-sized comparisons (cross-attention vs prefix on shapes).
    "muse-tiny-8x8": TransformerConfig(codebook_size=512, num_classes=0, grid_size=8, width=128, depth=4, heads=4,
                                       mlp_dim=512, dropout=0.1, null_class=False, text_dim=384, text_len=16,
                                       text_mode="prefix"),
    # Your own labelled folder on a 2-core CPU, on cpu32-f4's 8x8 tokens (README "Train on your own images"):
    # 4 x 192, ~1.9M parameters; the recipe trains it 10 minutes.
    "maskgit-cpu-8x8": TransformerConfig(codebook_size=256, num_classes=10, grid_size=8, width=192, depth=4, heads=4,
                                         mlp_dim=768, dropout=0.1, null_class=True),
    # Tests only.
    "tiny": TransformerConfig(codebook_size=32, num_classes=4, grid_size=4, width=32, depth=2, heads=2,
                              mlp_dim=64, dropout=0.0, null_class=True),
}


def vqgan_preset(name: str) -> VQGANConfig:
    return _preset(VQGAN_PRESETS, name, "tokenizer")


def transformer_preset(name: str) -> TransformerConfig:
    return _preset(TRANSFORMER_PRESETS, name, "transformer")


def _preset(table: dict, name: str, what: str):
    if name not in table:
        raise MaskGITError(f"unknown {what} preset {name!r}; choose one of: {', '.join(sorted(table))}")
    return table[name]


# ---------------------------------------------------------------- (de)serialisation
def to_dict(cfg: Any) -> dict:
    return {f.name: (list(v) if isinstance(v := getattr(cfg, f.name), tuple) else v)
            for f in dataclasses.fields(cfg)}


def from_dict(cls: type, d: dict, what: str = "config") -> Any:
    """Build ``cls`` from a JSON dict, rejecting unknown keys and wrong types with a clear message."""
    if not isinstance(d, dict):
        raise MaskGITError(f"{what}: expected a JSON object, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise MaskGITError(f"{what}: unknown field(s) {sorted(unknown)} for {cls.__name__}")
    kwargs = {}
    for k, v in d.items():
        kwargs[k] = _coerce(hints[k], v, f"{what}.{k}")
    try:
        return cls(**kwargs)
    except MaskGITError as e:
        raise MaskGITError(f"{what}: {e}") from None


def _coerce(tp: Any, v: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is tuple:
        if not isinstance(v, (list, tuple)):
            raise MaskGITError(f"{where}: expected a list, got {v!r}")
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            raise MaskGITError(f"{where}: expected a list of integers, got {v!r}")
        return tuple(v)
    if tp is bool:
        if not isinstance(v, bool):
            raise MaskGITError(f"{where}: expected true/false, got {v!r}")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise MaskGITError(f"{where}: expected an integer, got {v!r}")
        return v
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise MaskGITError(f"{where}: expected a number, got {v!r}")
        return float(v)
    if tp is str:
        if not isinstance(v, str):
            raise MaskGITError(f"{where}: expected a string, got {v!r}")
        return v
    return v


__all__ = ["TRANSFORMER_PRESETS", "VQGAN_PRESETS", "SampleConfig", "TokenizerTrainConfig", "TrainConfig",
           "TransformerConfig", "VQGANConfig", "field", "from_dict", "to_dict",
           "transformer_preset", "vqgan_preset"]
