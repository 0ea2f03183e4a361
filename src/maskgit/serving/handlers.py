"""The server's request handlers: every field is checked against the model and the server's limits before any
work that depends on it (the label list is sized only after ``num`` passed ``max_num``), then the job goes to
the batching worker; a client that goes away while its job waits takes the job out of the queue."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np

from maskgit.config import SampleConfig
from maskgit.errors import MaskGITError
from maskgit.sampling.arithmetic import check_class_ids
from maskgit.sampling.schedules import SCHEDULES
from maskgit.serving.batching import SAMPLE_FIELDS, APIError, Batcher, GenResult, Job, ServerConfig
from maskgit.serving.schemas import (
    MAX_PROMPT_CHARS,
    b64_png,
    png_bytes,
    read_edit_body,
    read_generate_body,
    read_png,
)

DISCONNECT_POLL_S = 0.05  # how often a waiting request checks whether its client is still there


class Handlers:
    """The endpoints of one served pipeline (FastAPI routes call these; see app.create_app)."""

    def __init__(self, pipe, name: str, config: ServerConfig, batcher: Batcher):
        self.pipe, self.name, self.config, self.batcher = pipe, name, config, batcher
        self.tc = tc = pipe.transformer.config
        self.size = pipe.grid[0] * pipe.tokenizer.config.downsample
        self.channels = pipe.tokenizer.channels
        self.conditioning = "text" if getattr(tc, "text_dim", 0) > 0 else ("class" if tc.num_classes > 0 else "none")
        self.encoder_name = None
        if self.conditioning == "text":  # load the text encoder now: a missing one fails at start, not at a request
            enc = pipe.text_encoder
            self.encoder_name = getattr(enc, "spec", None) or getattr(enc, "name", None)

    # ------------------------------------------------------------ checks
    def sample_config(self, req) -> SampleConfig:
        if req.steps is not None and req.steps > self.config.max_steps:
            raise APIError(422, f"steps={req.steps} is above this server's limit of {self.config.max_steps}")
        return self.pipe.sample_config(**{f: getattr(req, f, None) for f in SAMPLE_FIELDS})  # MaskGITError -> 422

    def class_hint(self) -> str:
        names = f" ({', '.join(self.pipe.class_names)})" if self.pipe.class_names else ""
        return f"label or labels in 0..{self.tc.num_classes - 1}{names}"

    def check_label(self, label: int, field: str = "label") -> None:
        """422 naming ``field`` unless ``label`` passes the pipelines' one rule (``check_class_ids``)."""
        try:
            check_class_ids(label, self.tc.num_classes, self.tc.null_class, self.pipe.class_names)
        except MaskGITError as e:
            raise APIError(422, f"{field}: {e}") from None

    def check_prompts(self, req) -> None:
        """422 for text fields a model cannot take, or too long; label fields on a text model."""
        texts = {k: getattr(req, k) for k in ("prompt", "negative_prompt") if getattr(req, k) is not None}
        if texts and self.conditioning == "class":
            raise APIError(422, f"this model is class-conditional, not text-conditioned: send {self.class_hint()}")
        if texts and self.conditioning == "none":
            raise APIError(422, "this model is unconditional: send num, not a prompt")
        for k, v in texts.items():
            if len(v) > MAX_PROMPT_CHARS:
                raise APIError(422, f"{k} has {len(v)} characters; the limit is {MAX_PROMPT_CHARS}")
        if self.conditioning == "text" and (getattr(req, "label", None) is not None
                                            or getattr(req, "labels", None) is not None):
            raise APIError(422, "this model is text-conditioned: send prompt (text), not class labels")

    def resolve_labels(self, req) -> list[int]:
        given = [k for k in ("label", "labels", "prompt") if getattr(req, k) is not None]
        if len(given) > 1:
            raise APIError(422, f"give one of label, labels or prompt, not {' and '.join(given)}")
        self.check_prompts(req)  # a text model has no label fields past this: num images of "no class" below
        num = 1 if req.num is None else req.num
        classes = req.labels if req.labels is not None else [req.label]
        if req.labels is not None and not req.labels:
            raise APIError(422, "labels is empty")
        if len(classes) * num > self.config.max_num:  # before any list of that size exists
            raise APIError(422, f"{len(classes) * num} images asked for; this server's limit is "
                                f"{self.config.max_num} per request")
        if self.conditioning != "text":  # no label given: -1, "no class", which a model may not have
            for i, c in enumerate(classes):
                self.check_label(-1 if c is None else c, "label" if req.labels is None else f"labels.{i}")
        return [-1 if c is None else c for c in classes for _ in range(num)]

    @staticmethod
    def wants_png(request) -> bool:
        accept = request.headers.get("accept", "")
        return "image/png" in accept and "application/json" not in accept

    # ------------------------------------------------------------ running
    async def run(self, job: Job, request):
        """Queue ``job`` and wait for it; a client that leaves while it waits takes it out of the queue. Past the
        shutdown deadline the answer is 503 at once, also while the job's batch is still being decoded."""
        future = self.batcher.submit(job)  # APIError 503 when full or shutting down
        waiting = asyncio.wrap_future(future)
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_POLL_S)
                if done:
                    return waiting.result()
                stop = self.batcher.stop_at
                if stop is not None and time.monotonic() >= stop:  # shutdown deadline: answer now, not at exit
                    self.batcher.abandon(job)
                    raise APIError(503, "the server shut down before this request's decode finished",
                                   {"Retry-After": "5"})
                if await request.is_disconnected():
                    if self.batcher.abandon(job):
                        raise APIError(499, "the client closed the connection before its request was decoded")
                    return await waiting  # already being decoded: let it finish (counted as abandoned)
        except asyncio.CancelledError:  # the server cancelled the request (client gone, or shutdown deadline)
            self.batcher.abandon(job)
            raise

    def answer(self, images: np.ndarray, request, t0: float, extra: dict):
        from fastapi.responses import JSONResponse, Response
        if self.wants_png(request):
            return Response(png_bytes(images[0]), media_type="image/png",
                            headers={"X-Seconds": f"{time.perf_counter() - t0:.4f}"})
        return JSONResponse({"images": [b64_png(a) for a in images], **extra,
                             "seconds": round(time.perf_counter() - t0, 4)})

    # ------------------------------------------------------------ endpoints
    async def generate(self, request):
        t0 = time.perf_counter()
        req = await read_generate_body(request)
        labels = self.resolve_labels(req)
        cfg = self.sample_config(req)
        if self.wants_png(request) and len(labels) != 1:
            raise APIError(406, f"Accept: image/png needs exactly one image; this request makes {len(labels)} "
                                f"(ask for JSON)")
        text = self.conditioning == "text"
        job = Job(settings=(cfg, req.return_steps), shared=not req.exact, labels=labels, seed=req.seed,
                  prompts=[req.prompt or ""] * len(labels) if text else None,
                  negative_prompts=[req.negative_prompt or ""] * len(labels) if text else None)
        r: GenResult = await self.run(job, request)
        extra = {"labels": labels, "seed": req.seed,
                 "batch": {"requests": r.batch_requests, "images": r.batch_images}}
        if text:
            extra["prompt"] = req.prompt or ""
        if self.pipe.class_names and self.conditioning == "class":
            extra["label_names"] = [self.pipe.class_names[i] if i >= 0 else None for i in labels]
        if r.steps is not None:
            extra["steps"] = [[b64_png(s[i]) for s in r.steps] for i in range(len(labels))]
        return self.answer(r.images, request, t0, extra)

    def check_box(self, box: list[int] | None) -> None:
        if box is not None:
            x, y, w, h = box
            if min(x, y) < 0 or min(w, h) < 1 or x + w > self.size or y + h > self.size:
                raise APIError(422, f"box {box} must have positive size and lie inside the {self.size}x{self.size} "
                                    f"image")

    async def edit(self, request):
        pipe = self.pipe
        t0 = time.perf_counter()
        req, image_bytes, mask_bytes = await read_edit_body(request)
        cfg = self.sample_config(req)
        kw = {f: getattr(cfg, f) for f in SAMPLE_FIELDS}
        mode = req.mode or ("outpaint" if req.side is not None or req.tokens is not None else "inpaint")
        self.check_prompts(req)
        self.check_box(req.box)
        if req.label is not None and self.conditioning != "text":
            self.check_label(req.label)
        if mode == "edit" and self.conditioning == "text":
            raise APIError(422, "a class edit (mode edit) needs a class-conditional model; text models inpaint "
                                "with a prompt")
        image = read_png(image_bytes, "image", self.size, self.channels)  # the size from the header first
        if self.conditioning == "text":
            kw = dict(kw, prompt=req.prompt or "", negative_prompt=req.negative_prompt)
        if mode == "outpaint":
            if req.side is None or req.tokens is None:
                raise APIError(422, "outpaint needs side (left/right/top/bottom) and tokens (>= 1)")
            if req.tokens >= pipe.grid[0]:
                raise APIError(422, f"outpaint tokens must be below the grid size {pipe.grid[0]}")
            fn = lambda: pipe.outpaint(image, req.side, req.tokens, label=req.label,
                                       seed=req.seed, output="np", **kw)[None]  # one image -> a batch of one
        elif mode == "edit":
            if req.box is None or req.label is None:
                raise APIError(422, "a class edit (mode edit) needs box [x, y, w, h] and label")
            if req.start_step is not None:  # checked before the batch worker runs it, by SampleConfig's rule
                dataclasses.replace(cfg, start_step=req.start_step)
            fn = lambda: pipe.class_edit(image, box=req.box, label=req.label, start_step=req.start_step,
                                   feather=req.feather, seed=req.seed, output="np", **kw)[None]
        else:
            if (mask_bytes is None) == (req.box is None):
                raise APIError(422, "inpaint needs exactly one of mask (PNG of the image's size) or box")
            mask = read_png(mask_bytes, "mask", self.size, 1) if mask_bytes is not None else None
            if mask is not None and not mask.any():
                raise APIError(422, "the mask is empty: paint (white) at least one pixel to regenerate")
            fn = lambda: pipe.inpaint(image, mask=mask, box=req.box, label=req.label,
                                      dilate=req.dilate, feather=req.feather, seed=req.seed, output="np", **kw)[None]
        out = await self.run(Job(fn=fn, shared=False), request)
        return self.answer(out, request, t0, {"mode": mode, "seed": req.seed})

    def models(self) -> dict:
        tc, pipe = self.tc, self.pipe
        return {"models": [{
            "name": self.name, "conditioning": self.conditioning, "num_classes": tc.num_classes,
            "classes": pipe.class_names or [str(i) for i in range(tc.num_classes)],
            "unconditional": bool(tc.null_class) or self.conditioning == "text",
            "cfg": bool(tc.null_class) or self.conditioning == "text",
            "text_encoder": self.encoder_name if self.conditioning == "text" else None,
            "grid": list(pipe.grid), "image_size": self.size, "channels": self.channels,
            "schedules": list(SCHEDULES), "defaults": dataclasses.asdict(pipe.sample_defaults),
            "limits": dataclasses.asdict(self.config)}]}

