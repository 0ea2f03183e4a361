"""The Pipeline's image edits: inpaint, class_edit, outpaint and img2img. Each builds a partly masked token grid
from the input image and calls the one decode (``Pipeline.decode_tokens``); the known region is context."""

from __future__ import annotations

import dataclasses

import torch

from maskgit.errors import MaskGITError
from maskgit.models.text import TextCondition
from maskgit.sampling import editing
from maskgit.sampling.noise import seeded, uniform
from maskgit.sampling.schedules import gamma
from maskgit.storage.images import as_image_batch, as_pixel_mask, format_images


class Edits:
    """Mixed into ``Pipeline``: needs its tokenizer, grid, mask_id, encode/to_images, check_labels, sample_config,
    text_condition and decode_tokens."""

    def _prepare_image(self, image) -> torch.Tensor:
        x = as_image_batch(image, self.tokenizer.channels)
        size = self.grid[0] * self.tokenizer.config.downsample
        if x.shape[-2:] != (size, size):
            raise MaskGITError(f"image is {x.shape[-1]}x{x.shape[-2]}; this model edits {size}x{size} images")
        return x

    def _prompt_condition(self, prompt, negative_prompt, batch: int) -> TextCondition | None:
        if prompt is None:
            if negative_prompt is not None:
                raise MaskGITError("a negative prompt needs a prompt")
            return None
        return self.text_condition([prompt] * batch, None if negative_prompt is None else [negative_prompt] * batch)

    def inpaint(self, image, mask=None, box=None, label: int | None = None, dilate: int = 0, feather: int = 2,
                seed: int | None = 0, output: str = "pil", prompt: str | None = None,
                negative_prompt: str | None = None, **sample_kw):
        """Regenerate the tokens under ``mask`` (bool (H,W), True = regenerate) or ``box`` (x,y,w,h), under a
        class ``label`` or, for text-conditioned models, a ``prompt``. Returns one image for one image (a PIL
        image, (H,W,C) uint8 or (C,H,W) float for output "pil", "np", "tensor"), a batch for a batch."""
        cfg = self.sample_config(**sample_kw)  # checked before any work
        x = self._prepare_image(image)
        H, W = x.shape[-2:]
        if (mask is None) == (box is None):
            raise MaskGITError("give exactly one of a mask or a box")
        pm = editing.box_to_mask(box, H, W) if box is not None else as_pixel_mask(mask, H, W)
        tm = editing.token_mask(pm, self.grid, dilate)
        tokens = self.encode(x).flatten(1)
        tokens = torch.where(tm.flatten()[None], torch.full_like(tokens, self.mask_id), tokens)
        labels = self.check_labels([-1 if label is None else label] * x.shape[0])
        c = self.transformer.config
        if label is None and c.num_classes and not c.null_class:
            raise MaskGITError("this model needs a class label for editing (--label N)")
        text = self._prompt_condition(prompt, negative_prompt, x.shape[0])
        out = self.decode_tokens(tokens, labels, cfg, seed, text=text)
        gen = self.to_images(out)
        result = editing.blend(x, gen, editing.feather(tm, (H, W), feather))
        return format_images(result, output, one=not _is_batch(image))

    def class_edit(self, image, box, label: int, start_step: int | None = None, feather: int = 2, seed: int | None = 0,
             output: str = "pil", **sample_kw):
        """Class-conditional editing: regenerate ``box`` under class ``label``, starting later in the schedule
        (``start_step``, default a quarter of the steps). Returns what ``inpaint`` returns."""
        steps = sample_kw.get("steps") or self.sample_defaults.steps
        start = steps // 4 if start_step is None else start_step
        return self.inpaint(image, box=box, label=label, feather=feather, seed=seed, output=output,
                            start_step=start, **sample_kw)

    def outpaint(self, image, side: str, tokens: int, label: int | None = None, seed: int | None = 0,
                 output: str = "pil", prompt: str | None = None, negative_prompt: str | None = None,
                 **sample_kw):
        """Extend the canvas by ``tokens`` token rows/columns on ``side`` (left/right/top/bottom). Returns the wider
        (or taller) image(s), one for one image and a batch for a batch, in the form ``output`` names."""
        editing.check_outpaint(side, tokens, self.grid)
        cfg = self.sample_config(**sample_kw)  # checked before any work
        x = self._prepare_image(image)
        grid_tokens = self.encode(x)  # (B, h, w)
        window = editing.shift_window(grid_tokens, side, tokens, self.mask_id)
        labels = self.check_labels([-1 if label is None else label] * x.shape[0])
        text = self._prompt_condition(prompt, negative_prompt, x.shape[0])
        out = self.decode_tokens(window.flatten(1), labels, cfg, seed, text=text)
        cell = self.tokenizer.config.downsample
        result = editing.stitch(x, self.to_images(out), side, tokens * cell)
        return format_images(result, output, one=not _is_batch(image))

    def img2img(self, image, prompt: str | None = None, negative_prompt: str | None = None, strength: float = 0.5,
                label: int | None = None, seed: int | list[int] | None = 0, output: str = "pil", **sample_kw):
        """A variation of ``image``: the last ``int(steps * strength)`` steps of the schedule, from the image's
        tokens with each position masked with probability gamma(start / steps) (start = the first step run), as
        the aMUSEd reference img2img pipeline does (strength 1: every position masked, i.e. a fresh sample).
        Returns one image for one image, a batch for a batch, in the form ``output`` names."""
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise MaskGITError(f"strength must be a number in (0, 1], got {strength!r}")
        if "start_step" in sample_kw:
            raise MaskGITError("img2img chooses start_step from strength")
        x = self._prepare_image(image)
        cfg = self.sample_config(**sample_kw)
        start = cfg.steps - int(cfg.steps * strength)
        if start >= cfg.steps:
            raise MaskGITError(f"strength {strength} with {cfg.steps} steps runs no step: raise strength or steps")
        tokens = self.encode(x).flatten(1)  # (B, N)
        generator = seeded(seed, len(tokens))
        if start == 0:
            masked = torch.ones_like(tokens, dtype=torch.bool)
        else:  # the schedule's float32 mask ratio where decoding resumes
            ratio = gamma(cfg.schedule, torch.tensor([[start]]) / cfg.steps, tokens.shape[1])
            masked = uniform(tokens.shape, generator, "cpu") < ratio
        tokens = torch.where(masked, torch.full_like(tokens, self.mask_id), tokens)
        labels = self.check_labels([-1 if label is None else label] * x.shape[0])
        text = self._prompt_condition(prompt, negative_prompt, x.shape[0])
        cfg = dataclasses.replace(cfg, start_step=start)
        out = self.decode_tokens(tokens, labels, cfg, None, generator, text=text)
        return format_images(self.to_images(out), output, one=not _is_batch(image))


def _is_batch(image) -> bool:  # edits of one image (PIL, path, array, (C,H,W)) give one image; of (B,C,H,W), a batch
    return torch.is_tensor(image) and image.dim() == 4
