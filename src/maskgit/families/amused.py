"""aMUSEd (open-muse) in the one Pipeline: its VQ model as the tokenizer, its U-ViT as the token transformer,
CLIP-L/14 (penultimate hidden states + pooled projection) as the text conditioning, and the reference scheduler as
a sampler preset (``SampleConfig.sampler = "amused"``), read from a folder in diffusers' layout (model_index.json,
vqvae/, transformer/, text_encoder/, tokenizer/, scheduler/)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from maskgit.errors import MaskGITError
from maskgit.storage.amused import load_uvit, load_vq, read_json

# the reference pipeline's defaults: 12 steps, guidance_scale 10 (= our cfg 9: cond + 9 (cond - uncond)),
# confidence-noise temperature annealed linearly 2 -> 0, tokens drawn at temperature 1
SAMPLING = {"steps": 12, "cfg": 9.0, "choice_temperature": 2.0, "temperature": 1.0, "schedule": "cosine",
            "sampler": "amused"}
AESTHETIC_SCORE = 6  # the reference's micro-conditioning defaults: original size = the image size, crop (0, 0)


@dataclass(frozen=True)
class GridConfig:
    downsample: int  # pixels per token along each side


class AmusedTokenizer(nn.Module):
    """The VQ model in the tokenizer interface the Pipeline uses (encode/decode token grids, codebook_size,
    channels, config.downsample). It always runs in float32 (the reference upcasts its decoder in fp16)."""

    def __init__(self, vq: nn.Module):
        super().__init__()
        self.vq = vq
        self.config = GridConfig(int(vq.downsample))

    @property
    def codebook_size(self) -> int:
        return int(self.vq.codebook_size)

    @property
    def channels(self) -> int:
        return int(self.vq.channels)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.vq.encode(images.float())  # (B, h, w)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.vq.decode(tokens).float().clamp(0, 1)  # (B, 3, H, W)


@dataclass(frozen=True)
class AmusedTransformerConfig:
    """What the Pipeline reads of a transformer's config."""

    codebook_size: int
    grid_size: int
    mask_id: int
    text_dim: int
    text_len: int
    num_classes: int = 0
    null_class: bool = False


class AmusedTransformer(nn.Module):
    """The U-ViT behind the Pipeline's forward ``(tokens (B,N), labels, text=, text_mask=, pooled=) -> (B,N,K)``;
    the micro-conditioning (original size, crop, aesthetic score) is the reference's default, kept as a buffer."""

    null_text = None  # no learned null text: CFG's unconditional branch embeds "" (or the negative prompt)

    def __init__(self, uvit: nn.Module, text_len: int, image_size: int, aesthetic_score: float = AESTHETIC_SCORE,
                 sampling: dict | None = None):
        super().__init__()
        self.uvit = uvit
        c = uvit.config
        self.config = AmusedTransformerConfig(codebook_size=int(uvit.codebook_size), grid_size=int(c.sample_size),
                                              mask_id=int(uvit.mask_id), text_dim=int(c.encoder_hidden_size),
                                              text_len=int(text_len))
        # width, height, crop top, crop left, aesthetic score (the reference's order)
        self.register_buffer("micro_conds", torch.tensor([[image_size, image_size, 0, 0, aesthetic_score]],
                                                         dtype=torch.float32), persistent=False)
        self.meta = {"sampling": dict(SAMPLING if sampling is None else sampling)}

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None, text: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None, pooled: torch.Tensor | None = None) -> torch.Tensor:
        if text is None or pooled is None:
            raise MaskGITError("aMUSEd is text-conditioned: give prompts (\"\" for unconditional)")
        B, N = tokens.shape
        g = self.config.grid_size
        micro = self.micro_conds.expand(B, -1).to(text.dtype)
        logits = self.uvit(tokens.view(B, g, g), text, pooled, micro)  # (B, K, g, g)
        return logits.reshape(B, logits.shape[1], N).transpose(1, 2)  # (B, N, K)


class ClipText:
    """CLIP text encoder + tokenizer (transformers, local files only) -> (penultimate hidden states (B,L,E), mask None
    = attend to all, pooled projection (B,C)); prompts padded to the tokenizer's max length, as the reference does."""

    def __init__(self, tokenizer, model, device: str | torch.device = "cpu"):
        self.tokenizer = tokenizer
        self.model = model.eval().to(device)
        self.device = torch.device(device)

    @classmethod
    def load(cls, root: str | Path, device: str | torch.device = "cpu") -> ClipText:
        root = Path(root)
        for sub in ("tokenizer", "text_encoder"):
            if not (root / sub).is_dir():
                raise MaskGITError(f"{root} has no {sub}/ folder: an aMUSEd folder holds vqvae/, transformer/, "
                                   "text_encoder/ and tokenizer/")
        try:
            from transformers import CLIPTextModelWithProjection, CLIPTokenizer
        except ImportError:
            raise MaskGITError("aMUSEd's text encoder needs transformers: pip install transformers") from None
        te = root / "text_encoder"
        variant = "fp16" if not (te / "model.safetensors").exists() and (te / "model.fp16.safetensors").exists() \
            else None  # a repo fetched with only its fp16 weights
        from transformers.utils import logging as hf_logging
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a per-load "Loading weights" bar for a local file says nothing
        try:
            tok = CLIPTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
            model = CLIPTextModelWithProjection.from_pretrained(te, local_files_only=True, use_safetensors=True,
                                                                variant=variant)
        except (OSError, ValueError) as e:
            raise MaskGITError(f"cannot read the CLIP text encoder in {root}: {str(e).splitlines()[0]}") from None
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        return cls(tok, model.float(), device)

    @property
    def max_length(self) -> int:
        return int(self.tokenizer.model_max_length)

    def ids(self, prompts: list[str]) -> torch.Tensor:
        return self.tokenizer(prompts, return_tensors="pt", padding="max_length", truncation=True,
                              max_length=self.max_length).input_ids

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, None, torch.Tensor]:
        out = self.model(self.ids(list(prompts)).to(self.device), return_dict=True, output_hidden_states=True)
        return out.hidden_states[-2], None, out.text_embeds


def assemble(vq: nn.Module, uvit: nn.Module, text: ClipText, masking_schedule: str = "cosine"):
    """(tokenizer, transformer, text encoder) in the Pipeline's interface from the three aMUSEd parts."""
    if masking_schedule not in ("cosine", "linear"):
        raise MaskGITError(f"unknown aMUSEd masking schedule {masking_schedule!r} (cosine or linear)")
    size = int(uvit.config.sample_size) * int(vq.downsample)
    transformer = AmusedTransformer(uvit, text.max_length, size, sampling={**SAMPLING, "schedule": masking_schedule})
    return AmusedTokenizer(vq), transformer, text


def load_parts(root: str | Path, text_encoder=None, device: str | torch.device = "cpu"):
    """A folder in diffusers' aMUSEd layout -> (tokenizer, transformer, text encoder) for ``Pipeline``.
    ``text_encoder``: a ClipText (or a folder holding text_encoder/ and tokenizer/) instead of the folder's own."""
    root = Path(root)
    index = read_json(root / "model_index.json")
    if index.get("_class_name") not in (None, "AmusedPipeline", "AmusedImg2ImgPipeline", "AmusedInpaintPipeline"):
        raise MaskGITError(f"{root}/model_index.json describes a {index.get('_class_name')}, not an aMUSEd pipeline")
    for sub in ("vqvae", "transformer"):
        if not (root / sub).is_dir():
            raise MaskGITError(f"{root} has no {sub}/ folder: an aMUSEd folder holds vqvae/, transformer/, "
                               "text_encoder/ and tokenizer/")
    if text_encoder is None or isinstance(text_encoder, (str, Path)):
        text_encoder = ClipText.load(root if text_encoder is None else text_encoder, device)
    return assemble(load_vq(root / "vqvae"), load_uvit(root / "transformer"), text_encoder, masking_schedule(root))


def masking_schedule(root: str | Path) -> str:
    """The mask schedule of the aMUSEd folder ``root``'s scheduler (cosine when it names none)."""
    sched = Path(root) / "scheduler" / "scheduler_config.json"
    return read_json(sched).get("masking_schedule", "cosine") if sched.exists() else "cosine"


def load_pipeline(root: str | Path, pipeline_cls, device: str | torch.device = "cpu", precision: str = "fp32",
                  text_encoder=None, lora: str | Path | None = None):
    """``pipeline_cls(tokenizer, transformer, ...)`` (the one Pipeline) on an aMUSEd folder; ``lora``: a save_lora
    folder of the U-ViT, merged before the precision is prepared."""
    tokenizer, transformer, text = load_parts(root, text_encoder, device)
    if lora is not None:
        from maskgit.training.lora import load_lora, merge_lora
        transformer.uvit = merge_lora(load_lora(transformer.uvit, lora))
    return pipeline_cls(tokenizer, transformer, device=device, precision=precision, text_encoder=text)


def write_char_clip_tokenizer(folder: str | Path, max_length: int):
    """For offline tests and benchmarks with random tiny CLIP text encoders: a character-level CLIP tokenizer (one
    token per byte through GPT-2/CLIP's public byte -> printable character table, each also as ``c</w>``, then
    ``<|startoftext|>`` and ``<|endoftext|>``; no merges) saved into ``folder`` with ``save_pretrained``. Returns the
    ``transformers.CLIPTokenizer``; ``tok.get_vocab()`` (514 entries) sizes the text config."""
    import tempfile

    import transformers
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for _, c in sorted(zip(bs, cs))]  # by byte value
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    with tempfile.TemporaryDirectory() as src:
        (Path(src) / "vocab.json").write_text(json.dumps(vocab))
        (Path(src) / "merges.txt").write_text("#version: 0.2\n")
        tok = transformers.CLIPTokenizer(str(Path(src) / "vocab.json"), str(Path(src) / "merges.txt"),
                                         model_max_length=max_length)
    tok.save_pretrained(folder)
    return tok
