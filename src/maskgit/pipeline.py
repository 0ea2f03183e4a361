"""The pipeline: tokenizer + transformer behind ``generate`` / ``inpaint`` / ``outpaint`` / ``edit``.

Every method builds a (partially) masked token grid and calls ``sampling.decode`` once. Text-conditioned models
(``TransformerConfig.text_dim > 0``) take ``prompts``: the frozen encoder named in the model's metadata embeds
them; the empty prompt "" means the learned null text (unconditional), and CFG's unconditional branch uses the
negative prompt's embedding when one is given."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from maskgit.config import SampleConfig
from maskgit.edits import Edits
from maskgit.errors import MaskGITError
from maskgit.models.text import TextCondition
from maskgit.names import DEFAULT_MODEL, WEIGHTS_DIR, resolve, shipped_models  # noqa: F401  (public here too)
from maskgit.sampling.arithmetic import batch_rows, check_class_ids, model_sample_config
from maskgit.sampling.decoding import decode
from maskgit.sampling.defaults import defaults_from_meta
from maskgit.sampling.noise import NoiseSource, seeded
from maskgit.sampling.selection import best_of, candidate_noise
from maskgit.storage.checkpoint import load_model, read_config
from maskgit.storage.images import format_images


class Pipeline(Edits):
    """Generation and editing with a tokenizer and a MaskGIT transformer (and optionally the AR baseline)."""

    def __init__(self, tokenizer, transformer, ar=None, features=None, class_names: list[str] | None = None,
                 device: str | torch.device = "cpu", precision: str = "fp32", text_encoder=None):
        """``text_encoder``: a ``maskgit.models.text.TextEncoder`` or a spec ("minilm", "st:PATH", "t5:PATH",
        "cache:FILE") for text-conditioned models; default: the one named in the transformer's metadata,
        loaded on first use."""
        from maskgit.devices import check_device
        device = check_device(device)
        self.tokenizer = tokenizer.to(device).eval()
        if hasattr(tokenizer, "prepare_for_inference"):  # the VQGAN's fast CPU decoder (any tokenizer may be used)
            tokenizer.prepare_for_inference(channels_last=torch.device(device).type == "cpu")
        self.transformer = transformer.to(device).eval()
        self.ar = ar.to(device).eval() if ar is not None else None
        self.features = features.to(device).eval() if features is not None else None
        self.device = torch.device(device)
        c = transformer.config
        if c.codebook_size != tokenizer.codebook_size:
            raise MaskGITError(f"transformer expects {c.codebook_size} codes, the tokenizer has "
                               f"{tokenizer.codebook_size}")
        self.grid = (c.grid_size, c.grid_size)
        self.class_names = class_names
        self._text_encoder = text_encoder or getattr(transformer, "meta", {}).get("text_encoder")
        self.sample_defaults = defaults_from_meta(getattr(transformer, "meta", {}))  # a call's settings win
        self.precision = "fp32"
        self._compiled = None  # the transformer's compiled forward, after compile()
        self.set_precision(precision)  # "auto" resolves there

    def __repr__(self) -> str:
        c, names = self.transformer.config, self.class_names or []
        size = self.grid[0] * self.tokenizer.config.downsample
        cond = "text" if c.text_dim else (f"{c.num_classes} classes" + (f" ({', '.join(names[:3])}, ...)" if names
                                                                        else "") if c.num_classes else "no classes")
        return (f"Pipeline({getattr(self, 'source', 'own modules')!r}, {size}x{size} px x{self.tokenizer.channels}, "
                f"{c.grid_size}x{c.grid_size} tokens, {cond}, device={self.device}, precision={self.precision})")

    # ------------------------------------------------------------ speed options (opt-in, change results)
    def set_precision(self, precision: str) -> Pipeline:
        """"fp32" (exact), "int8" (CPU: dynamic int8 quantisation of the transformers' linear layers), "bf16" (the
        transformers under bf16 autocast; on CPU with bf16 linear weights), "fp16" (GPU autocast), "auto" (bf16
        where the device multiplies bf16 in hardware, else fp32). The VQGAN always runs in fp32. The non-fp32
        modes trade a little quality for speed (see RESULTS.md); ``self.precision`` is the one chosen."""
        from maskgit.inference.kernels import plain_linears
        from maskgit.inference.precision import prepare, resolve_precision
        precision = resolve_precision(precision, self.device)
        self.transformer = prepare(self.transformer, precision, self.device)  # raises for a precision not for here
        if self.ar is not None:  # under bf16 the AR baseline stays fp32, on torch's own layers
            self.ar = plain_linears(self.ar) if precision == "bf16" else prepare(self.ar, precision, self.device)
        self.precision = precision
        return self

    def compile(self) -> Pipeline:
        """torch.compile the transformer with frozen weights (inference only; same results up to float rounding;
        needs a C++ compiler on CPU). Graphs are static per batch size, which runs faster than one graph for all
        sizes; the transformer is called on power-of-two chunks of a batch (at most 64 rows), so only those sizes
        compile, each on first use (~30 s at the ImageNet size)."""
        from maskgit.inference.compile import compile_frozen, pow2_chunks
        self._compiled = pow2_chunks(compile_frozen(self.transformer))
        return self

    def _autocast(self):
        if self.precision in ("bf16", "fp16"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)
        import contextlib
        return contextlib.nullcontext()

    # ------------------------------------------------------------ loading
    @classmethod
    def load(cls, model: str | Path | None = None, device: str = "cpu", precision: str = "fp32",
             text_encoder=None, lora: str | Path | None = None) -> Pipeline:
        root = resolve(model)
        if (root / "adapter_config.json").is_file():  # `train --lora`'s final/
            raise MaskGITError(f"{root} is a LoRA adapter, not a model: load it onto the model it was trained from, "
                               f"maskgit.load(BASE, lora={str(root)!r}) (sample --model BASE --lora-weights {root})")
        if (root / "model_index.json").is_file():  # a diffusers-layout folder: aMUSEd
            from maskgit.families.amused import load_pipeline
            pipe = load_pipeline(root, cls, device, precision, text_encoder, lora=lora)
            pipe.source = str(model)
            return pipe
        if (root / "maskgit").is_dir() and (root / "tokenizer").is_dir():
            tok = load_model(root / "tokenizer", "vqgan")
            tr = load_model(root / "maskgit", "transformer")
            ar = load_model(root / "ar", "ar") if (root / "ar").is_dir() else None
            feats = load_model(root / "features", "features") if (root / "features").is_dir() else None
        else:
            doc = read_config(root)
            tok_ref = doc.get("meta", {}).get("tokenizer")
            if doc.get("kind") != "transformer" or not tok_ref:
                raise MaskGITError(f"{root} is neither a pipeline directory (tokenizer/ + maskgit/) nor a "
                                   f"transformer checkpoint that names its tokenizer")
            tok_path = (root / tok_ref) if not Path(tok_ref).is_absolute() else Path(tok_ref)
            tok, tr, ar, feats = load_model(tok_path, "vqgan"), load_model(root, "transformer"), None, None
        if lora is not None:  # merged before the precision preparation below sees the plain Linear layers
            from maskgit.training.lora import load_lora, merge_lora
            tr = merge_lora(load_lora(tr, lora))
        names = tr.meta.get("class_names") if hasattr(tr, "meta") else None
        pipe = cls(tok, tr, ar, feats, names, device, precision, text_encoder)
        pipe.source = str(model if model is not None else DEFAULT_MODEL)  # shown by repr()
        return pipe

    # ------------------------------------------------------------ core
    @property
    def mask_id(self) -> int:
        return self.transformer.config.mask_id

    def check_labels(self, labels) -> torch.Tensor:
        """Class ids (B,) for this model: the one rule of ``check_class_ids`` ("3", 3.0, True, out of range, and
        -1 on a model without a "no class" id are refused)."""
        c = self.transformer.config
        return torch.as_tensor(check_class_ids(labels, c.num_classes, c.null_class, self.class_names), dtype=torch.long)

    # ------------------------------------------------------------ text conditioning
    @property
    def text_encoder(self):
        """The frozen text encoder (loaded on first use)."""
        c = self.transformer.config
        if not c.text_dim:
            raise MaskGITError("this model is not text-conditioned: it takes class labels, not prompts")
        if self._text_encoder is None:
            raise MaskGITError("this model's metadata names no text encoder: pass text_encoder= (e.g. 'minilm')")
        if isinstance(self._text_encoder, str):
            from maskgit.models.text import load_text_encoder
            self._text_encoder = load_text_encoder(self._text_encoder, max_len=c.text_len)
        return self._text_encoder

    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompts -> (embeddings (B,L,D), mask (B,L) or None = attend to all). The empty prompt is the model's
        learned null text (not the encoder's embedding of ""), so "" decodes exactly as unconditional."""
        c = self.transformer.config
        if not c.text_dim:
            raise MaskGITError("this model is not text-conditioned: it takes class labels, not prompts")
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise MaskGITError("prompts must be a list of strings")
        if getattr(self.transformer, "null_text", None) is None:  # no learned null text: the encoder embeds ""
            return self.text_encoder(list(prompts))[:2]
        B = len(prompts)
        null = self.transformer.null_text.detach()
        emb = null[None].expand(B, -1, -1)  # (B, L, D)
        real = [i for i, p in enumerate(prompts) if p.strip()]
        if not real:
            return emb, None
        enc_emb, enc_mask = self.text_encoder([prompts[i] for i in real])
        if enc_emb.shape[1:] != null.shape:
            raise MaskGITError(f"the text encoder gives {tuple(enc_emb.shape[1:])} embeddings; this model was "
                               f"trained on {tuple(null.shape)}: use the encoder it was trained with")
        emb = emb.clone()
        mask = torch.ones(B, c.text_len, dtype=torch.bool, device=emb.device)
        emb[real] = enc_emb.to(emb.device, emb.dtype)
        mask[real] = enc_mask.to(emb.device)
        return emb, mask

    def text_condition(self, prompts: list[str], negative_prompts=None) -> TextCondition:
        """Embeddings for the conditional and (with CFG) the unconditional branch. ``negative_prompts``: one
        string for all, or one per prompt; None or "" = the null text (for a model without a learned null text,
        such as aMUSEd, the encoder's embedding of "", as its reference pipeline builds it)."""
        if negative_prompts is not None:
            if isinstance(negative_prompts, str):
                negative_prompts = [negative_prompts] * len(prompts)
            if len(negative_prompts) != len(prompts):
                raise MaskGITError(f"{len(negative_prompts)} negative prompts for {len(prompts)} prompts: give "
                                   "one, or one per prompt")
        if getattr(self.transformer, "null_text", None) is None:  # the encoder embeds every prompt, "" included
            if not self.transformer.config.text_dim:
                raise MaskGITError("this model is not text-conditioned: it takes class labels, not prompts")
            if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
                raise MaskGITError("prompts must be a list of strings")
            emb, mask, pooled = self.text_encoder(list(prompts))
            neg_emb, neg_mask, neg_pooled = self.text_encoder(list(negative_prompts or [""] * len(prompts)))
            return TextCondition(emb, mask, neg_emb, neg_mask, pooled, neg_pooled)
        emb, mask = self.encode_prompts(prompts)
        neg = (None, None)
        if negative_prompts is not None and any(p.strip() for p in negative_prompts):
            neg = self.encode_prompts(list(negative_prompts))
        return TextCondition(emb, mask, *neg)

    # ------------------------------------------------------------ decoding
    def logits_fn(self, labels: torch.Tensor, text: TextCondition | None = None) -> Callable:
        """The closure decode() needs; with guidance the conditional and unconditional passes share one batch
        (the unconditional half: "no class" and the null text, or the negative prompt)."""
        model = self.transformer
        run = self._compiled or model  # compile() leaves the module itself untouched
        labels = labels.to(self.device)
        null = torch.full_like(labels, -1)
        text = text or TextCondition(None, None)

        def fn(tokens: torch.Tensor, guided: bool, cache: dict | None = None, positions=None):
            B, step, kw = len(tokens), run, {}
            if cache is not None:  # cached decoding: the model's own eager path (sampling/cache.py)
                if not hasattr(model, "forward_cached"):
                    raise MaskGITError(f"cached decoding is not available for {type(model).__name__}: use cache 'off'")
                both = positions is not None and guided
                step, kw = model.forward_cached, {"cache": cache, "positions": torch.cat([positions] * 2) if both
                                                  else positions}
            with self._autocast():
                if not guided:
                    return step(tokens, labels, text=text.emb, text_mask=text.mask, **text.pooled_kw(False),
                                **kw).float()
                t, m = text.both(model, B)
                out = step(torch.cat([tokens, tokens]), torch.cat([labels, null]), text=t, text_mask=m,
                           **text.pooled_kw(True), **kw)  # (2B,N,K)
            out = out.float()  # sampling reads fp32 logits whatever the precision
            return out[:B], out[B:]

        return fn

    def sample_config(self, **kw) -> SampleConfig:
        """The model's sampling defaults with ``kw`` (None = the default), checked (``model_sample_config``)."""
        c = self.transformer.config
        return model_sample_config(self.sample_defaults, kw, bool(c.null_class or c.text_dim))

    @torch.inference_mode()
    def decode_tokens(self, tokens: torch.Tensor, labels: torch.Tensor, cfg: SampleConfig,
                      seed: int | list[int] | None,
                      generator: NoiseSource = None, callback=None,
                      text: TextCondition | None = None) -> torch.Tensor:
        """(B,N) partially masked -> (B,N) complete, through the one decode function."""
        if cfg.candidates > 1:  # classifier-guided: the most on-class of k candidates per image
            if self.features is None or callback is not None:
                raise MaskGITError("candidates > 1 needs the model's classifier (features/) and no return_steps")
            noise = candidate_noise(seed, generator, len(tokens), cfg.candidates)
            one = dataclasses.replace(cfg, candidates=1)
            return best_of(tokens, labels, cfg.candidates, lambda t, lab: self.decode_tokens(
                t, lab, one, None, noise, text=text), lambda t: self.features(self.to_images(t).to(self.device)))[0]
        if generator is None:
            generator = seeded(seed, len(tokens))
        return decode(self.logits_fn(labels, text), tokens.to(self.device), cfg, self.mask_id, generator, callback)

    def to_images(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.decode(tokens.view(-1, *self.grid).to(self.device)).cpu()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.encode(images.to(self.device)).cpu()

    # ------------------------------------------------------------ public API
    def generate(self, labels=None, num: int | None = None, seed: int | list[int] | None = 0, output: str = "pil",
                 return_steps: bool = False, generator: NoiseSource = None,
                 prompts: list[str] | None = None, negative_prompts=None, arch: str = "maskgit",
                 use_cache: bool = True, callback: Callable[[int, torch.Tensor], None] | None = None, **sample_kw):
        """Class-conditional (``labels``), text-conditional (``prompts``; ``negative_prompts``, one for all or one
        per prompt, replace the null text in CFG's unconditional branch) or unconditional (``num``) samples; with
        labels or prompts ``num`` images of each (as --num); ``sample_kw``: SampleConfig fields (steps, top_k, top_p,
        choice_temperature, cfg, cfg_schedule). ``seed``: one for the batch, or one per image (each image is then
        the one its seed gives alone, up to float rounding). ``generator`` (a torch.Generator, or
        ``sampling.noise.RowGenerators`` for blocks of rows with their own seeds) replaces ``seed``. ``arch="ar"``: the
        autoregressive baseline on the same tokens (``use_cache=False``: without its KV cache). ``callback(step,
        tokens)`` is called after every decoding step with the (B, h, w) token grid so far (``mask_id`` where still
        masked). Returns the images in the form ``output`` names (``maskgit.outputs``): a list of PIL images
        ("pil", the default), a uint8 array (B,H,W,C) ("np") or the float tensor (B,C,H,W) in [0, 1] ("tensor");
        with ``return_steps``, also one image batch per step (masked cells grey)."""
        if arch not in ("maskgit", "ar"):
            raise MaskGITError(f"arch must be 'maskgit' or 'ar', got {arch!r}")
        if callback is not None and not callable(callback):
            raise MaskGITError(f"callback must be callable, got {type(callback).__name__}")
        labels, prompts, negative_prompts = batch_rows(labels, num, prompts, negative_prompts)  # num: of each
        labels = self.check_labels(labels)
        if arch == "ar":
            if return_steps or callback or prompts is not None:
                raise MaskGITError("the AR baseline is class-conditional only and has no decoding steps to show")
            return format_images(self._generate_ar(labels, seed, generator, use_cache, sample_kw), output)
        cfg = self.sample_config(**sample_kw)  # checked before any work
        text = self.text_condition(prompts, negative_prompts) if prompts is not None else None
        B, N = len(labels), self.grid[0] * self.grid[1]
        tokens = torch.full((B, N), self.mask_id, dtype=torch.long)
        steps: list[torch.Tensor] = []

        def cb(t, cur, sampled):
            if return_steps:
                steps.append(cur.clone())
            if callback is not None:
                callback(t, cur.view(B, *self.grid).clone())

        out = self.decode_tokens(tokens, labels, cfg, seed, generator, cb if return_steps or callback else None, text)
        images = self.to_images(out)
        result = format_images(images, output)
        if return_steps:
            return result, [self._partial_images(s) for s in steps]
        return result

    def _generate_ar(self, labels: torch.Tensor, seed, generator, use_cache: bool, sample_kw: dict) -> torch.Tensor:
        """Images from the AR baseline, sampled one token at a time by the sampler's own token sampling and guidance;
        settings not given are SampleConfig's (the model's stored defaults belong to the MaskGIT sampler)."""
        if self.ar is None:
            raise MaskGITError("this model has no AR baseline (no ar/ directory)")
        cfg = model_sample_config(SampleConfig(), sample_kw, bool(self.ar.config.null_class))
        if cfg.cache != "off" or (cfg.cfg_start, cfg.cfg_end, cfg.cfg_every) != (0, 1, 1):
            raise MaskGITError("the AR baseline guides every token and keeps its own KV cache (use_cache): cache, "
                               "cfg_start, cfg_end and cfg_every are MaskGIT decoding settings")
        noise = generator if generator is not None else seeded(seed, len(labels))
        return self.to_images(self.ar.generate(labels.to(self.device), cfg, noise, use_cache=use_cache))

    def _partial_images(self, tokens: torch.Tensor) -> torch.Tensor:
        """Decode a partially masked grid for display: masked cells shown mid-grey."""
        known = tokens != self.mask_id
        imgs = self.to_images(torch.where(known, tokens, torch.zeros_like(tokens)))
        H, W = imgs.shape[-2:]
        m = torch.nn.functional.interpolate(known.view(-1, 1, *self.grid).float().cpu(), size=(H, W))
        return imgs * m + 0.5 * (1 - m)

    # ------------------------------------------------------------ sharing
    def save_pretrained(self, directory: str | Path) -> Path:
        """The project's layout (tokenizer/ + maskgit/ (+ ar/, features/), each with its manifest) + a model card
        README.md in ``directory``; ``maskgit.load(directory)`` reads it back."""
        from maskgit.storage.hub import save_pretrained
        return save_pretrained(self, directory)

    def push_to_hub(self, repo: str, token: str | None = None, private: bool = False) -> str:
        """save_pretrained into the Hugging Face Hub repo ``repo`` (needs huggingface_hub; ``token`` default:
        HF_TOKEN or the stored login); ``maskgit.load(repo)`` reads it back. Returns the commit's URL."""
        from maskgit.storage.hub import push_to_hub
        return push_to_hub(self, repo, token=token, private=private)


def load(model: str | Path | None = None, device: str = "cpu", precision: str = "fp32",
         text_encoder=None, lora: str | Path | None = None) -> Pipeline:
    """``maskgit.load(NAME)``: a directory, "fashion-mnist", "google/maskgit-imagenet256" (or 512) or a Hugging
    Face Hub repo id "owner/name[@revision]" (``names.resolve``); ``precision`` see set_precision;
    ``text_encoder`` overrides the one a text-conditioned model names (see Pipeline); ``lora`` a save_lora folder,
    merged into the transformer at load."""
    return Pipeline.load(model, device, precision, text_encoder, lora=lora)
