"""HTTP API and web page for a pipeline (FastAPI + uvicorn; ``pip install maskgit[server]``).

Endpoints: ``POST /v1/generate``, ``POST /v1/edit`` (inpaint / outpaint / class edit), ``GET /v1/models``,
``GET /v1/stats``, ``GET /healthz``, the page at ``/`` and the OpenAPI docs at ``/docs``. Images travel as
base64 PNG in JSON, or as the PNG bytes when the client sends ``Accept: image/png`` and the answer is one image.
Every error is JSON ``{"error": "..."}``: 400 unreadable input (bad JSON, bad base64, not a PNG), 406 PNG asked
for several images, 413 body too large, 415 unknown content type, 422 a well-formed request the model cannot
serve (label out of range, a prompt for a class model or a label for a text model, a prompt above
``MAX_PROMPT_CHARS``, wrong image or mask size, unknown schedule, steps/num above the limits, ...), 503 queue full
or shutting down (with ``Retry-After``).

Text-conditioned models take ``prompt`` (and ``negative_prompt``, CFG's unconditional branch) in generate and in
inpaint/outpaint edits; an empty or missing prompt is the learned null text (unconditional). Requests with
different prompts share a batched decode: each image carries its own text embedding.

Batching. All inference runs in ONE worker thread (the ``Batcher``); the asyncio side only validates, enqueues
and awaits a future. Requests wait in a bounded FIFO queue. The worker takes the oldest one, waits at most
``max_wait_ms`` (from that request's arrival) for company, then decodes together every queued generate request
with the same settings (the whole SampleConfig plus ``return_steps``), up to ``max_batch`` images, in one
``Pipeline.generate`` call; a single request larger than ``max_batch`` runs alone, and so does every edit.
Each request is answered exactly once; on shutdown the worker refuses new requests and drains the queue first.

Seeds. Every request draws its decoding noise from its own ``torch.Generator().manual_seed(seed)``, also inside a
shared decode (``sampling.RowGenerators``: each request's block of rows has its own generator), so it gets the
images of ``maskgit.load(model).generate(labels, seed=seed, **settings)``:
- decoded alone (a batch of one, or sent with ``"exact": true``, which is never shared) they are equal bit for bit;
- in a shared decode only the float rounding of the matmuls can differ (their kernels depend on the batch size):
  ``benchmarks/batched_seeds.py`` measured identical token grids for 128 of 128 shipped-model requests and images
  within 1/255 per pixel. Edits always run alone, so they are always exact."""

import asyncio
import base64
import binascii
import dataclasses
import functools
import io
import json
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
from PIL import Image

from maskgit.config import SampleConfig
from maskgit.errors import MaskGITError
from maskgit.storage.images import to_rgb
from maskgit.sampling.schedules import SCHEDULES

log = logging.getLogger("maskgit.serving.app")
WEB_DIR = Path(__file__).parent / "web"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_PROMPT_CHARS = 1000


from maskgit.serving.batching import SAMPLE_FIELDS, APIError, Batcher, GenResult, Job, ServerConfig, to_u8  # noqa: F401  (re-exported)


def png_bytes(a: np.ndarray) -> bytes:
    """uint8 (H, W, C) -> PNG bytes (grey images stay one channel)."""
    buf = io.BytesIO()
    Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(buf, format="PNG")
    return buf.getvalue()


def b64_png(a: np.ndarray) -> str:
    return base64.b64encode(png_bytes(a)).decode("ascii")


def decode_b64(text: str, what: str) -> bytes:
    if text.startswith("data:"):  # a data URL from a browser canvas
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{what} is not valid base64") from None


def read_png(data: bytes, what: str, size: int, channels: int) -> np.ndarray:
    """PNG bytes -> uint8 (H, W[, C]) of exactly ``size`` x ``size``; 400 if unreadable, 422 if the wrong size."""
    if not data.startswith(PNG_MAGIC):
        raise APIError(400, f"{what} is not a PNG (send PNG bytes, base64-encoded in JSON)")
    try:
        im = Image.open(io.BytesIO(data))
        if im.size != (size, size):  # checked from the header, before decoding any pixels
            raise APIError(422, f"{what} is {im.width}x{im.height}; this model works on {size}x{size} images "
                                f"(resize or crop it first)")
        im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise APIError(400, f"{what} is not a readable PNG ({e})") from None
    if what == "mask":
        a = np.asarray(im.convert("RGBA"))
        return (a[..., :3].max(-1) > 127) & (a[..., 3] > 127)  # white (and opaque) = regenerate
    im = to_rgb(im)
    return np.asarray(im.convert("L") if channels == 1 else im)


def validation_message(errors: list[dict]) -> str:
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
    return "; ".join(parts) or "invalid request"


class BodyLimit:
    """ASGI middleware: 413 for a body above ``max_bytes`` (by Content-Length, or counted while streaming)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"the request body is larger than this server's limit of {self.max_bytes / 2 ** 20:.3g} MB"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            from starlette.responses import JSONResponse
            return await JSONResponse({"error": message}, 413)(scope, receive, send)
        from starlette.exceptions import HTTPException  # FastAPI passes it through while reading the body
        seen = 0

        async def limited():
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, message)
            return msg

        return await self.app(scope, limited, send)


# ================================================================ request bodies

@functools.cache
def schemas() -> SimpleNamespace:
    """The pydantic request models (built on first use, so this module imports without the server extra)."""
    from pydantic import BaseModel, ConfigDict, Field

    class SampleFields(BaseModel):
        model_config = ConfigDict(extra="forbid")

        steps: int | None = Field(None, ge=1, description="decoding steps (default 8)")
        schedule: str | None = Field(None, description=f"mask schedule: {', '.join(SCHEDULES)}")
        temperature: float | None = Field(None, ge=0, description="token sampling temperature (0 = greedy)")
        top_k: int | None = Field(None, ge=0)
        top_p: float | None = Field(None, gt=0, le=1)
        choice_temperature: float | None = Field(None, ge=0, description="Gumbel noise on the confidences")
        cfg: float | None = Field(None, description="classifier-free guidance scale (0 = off)")
        cfg_schedule: Literal["constant", "linear"] | None = None
        seed: int = Field(0, ge=0, lt=2 ** 63)


    class GenerateRequest(SampleFields):
        label: int | None = Field(None, description="one class id (-1 = no class); num images of it")
        labels: list[int] | None = Field(None, description="class ids; num images of each")
        prompt: str | None = Field(None, description="text, for text-conditioned models only (\"\" = unconditional)")
        negative_prompt: str | None = Field(None, description="text models: what CFG steers away from")
        num: int | None = Field(None, ge=1, description="images (per label); default 1")
        return_steps: bool = Field(False, description="also return the partially decoded image after every step")
        exact: bool = Field(False, description="decode alone: bit for bit the library call with this seed (a shared "
                                     "batch matches it up to float rounding)")


    class EditRequest(SampleFields):
        image: str = Field(description="base64 PNG of the model's image size")
        mode: Literal["inpaint", "outpaint", "edit"] | None = Field(
            None, description="default: outpaint when side is given, else inpaint; edit = class edit of box")
        mask: str | None = Field(None, description="inpaint: base64 PNG of the image's size, white = regenerate")
        box: list[int] | None = Field(None, min_length=4, max_length=4, description="[x, y, w, h] in pixels")
        label: int | None = Field(None, description="class of the regenerated region")
        prompt: str | None = Field(None, description="text models: text of the regenerated region (inpaint/outpaint)")
        negative_prompt: str | None = Field(None, description="text models: what CFG steers away from")
        side: Literal["left", "right", "top", "bottom"] | None = None
        tokens: int | None = Field(None, ge=1, description="outpaint: token rows/columns to add")
        start_step: int | None = Field(None, ge=0, description="class edit: start later in the schedule")
        dilate: int = Field(0, ge=0, le=16)
        feather: int = Field(2, ge=0, le=32)

    return SimpleNamespace(SampleFields=SampleFields, GenerateRequest=GenerateRequest, EditRequest=EditRequest)


# ================================================================ the app

def require_server() -> None:
    """MaskGITError with the install line when FastAPI / uvicorn / python-multipart are missing."""
    import importlib.util
    missing = [m for m in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(m) is None]
    if missing:
        raise MaskGITError(f"the server needs {', '.join(missing)}: pip install maskgit[server]")


def create_app(pipe, name: str = "model", config: ServerConfig = ServerConfig()):
    """The FastAPI app serving ``pipe``; its worker starts and drains with the app's lifespan."""
    require_server()
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from pydantic import ValidationError
    from starlette.exceptions import HTTPException

    S = schemas()
    tc = pipe.transformer.config
    size = pipe.grid[0] * pipe.tokenizer.config.downsample
    channels = pipe.tokenizer.channels
    conditioning = "text" if getattr(tc, "text_dim", 0) > 0 else ("class" if tc.num_classes > 0 else "none")
    encoder_name = None
    if conditioning == "text":  # load the text encoder now: a missing one fails at start, not at a request
        enc = pipe.text_encoder
        encoder_name = getattr(enc, "spec", None) or getattr(enc, "name", None)
    batcher = Batcher(pipe, config.max_batch, config.max_wait_ms / 1000, config.queue_size)
    index_html = (WEB_DIR / "index.html").read_text(encoding="utf-8") if (WEB_DIR / "index.html").exists() else ""

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        try:
            yield
        finally:
            await asyncio.to_thread(batcher.close)

    from maskgit import __version__
    app = FastAPI(title="MaskGIT", version=__version__, lifespan=lifespan,
                  description="Generation and editing with a MaskGIT pipeline. See maskgit.serving.app for the "
                              "batching and seed semantics.")
    app.state.batcher, app.state.pipe, app.state.config = batcher, pipe, config
    app.add_middleware(BodyLimit, max_bytes=int(config.max_body_mb * 2 ** 20))

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)

    @app.exception_handler(MaskGITError)
    async def _user_error(request, exc: MaskGITError):
        return JSONResponse({"error": str(exc)}, 422)

    @app.exception_handler(Exception)
    async def _bug(request, exc: Exception):
        return JSONResponse({"error": f"internal error ({type(exc).__name__}): see the server log"}, 500)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        bad_json = [e for e in exc.errors() if e.get("type") == "json_invalid"]
        if bad_json:
            detail = (bad_json[0].get("ctx") or {}).get("error", "")
            return JSONResponse({"error": f"the body is not valid JSON {detail}".strip()}, 400)
        return JSONResponse({"error": validation_message(exc.errors())}, 422)

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc: HTTPException):
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=exc.headers)

    def sample_config(req: S.SampleFields) -> SampleConfig:
        cfg = pipe.sample_config(**{f: getattr(req, f) for f in SAMPLE_FIELDS})  # MaskGITError -> 422
        if cfg.steps > config.max_steps:
            raise APIError(422, f"steps={cfg.steps} is above this server's limit of {config.max_steps}")
        return cfg

    def wants_png(request: Request) -> bool:
        accept = request.headers.get("accept", "")
        return "image/png" in accept and "application/json" not in accept

    def class_hint() -> str:
        names = f" ({', '.join(pipe.class_names)})" if pipe.class_names else ""
        return f"label or labels in 0..{tc.num_classes - 1}{names}"

    def check_prompts(req) -> None:
        """422 for text fields a model cannot take, or too long; label fields on a text model."""
        texts = {k: getattr(req, k) for k in ("prompt", "negative_prompt") if getattr(req, k) is not None}
        if texts and conditioning == "class":
            raise APIError(422, f"this model is class-conditional, not text-conditioned: send {class_hint()}")
        if texts and conditioning == "none":
            raise APIError(422, "this model is unconditional: send num, not a prompt")
        for k, v in texts.items():
            if len(v) > MAX_PROMPT_CHARS:
                raise APIError(422, f"{k} has {len(v)} characters; the limit is {MAX_PROMPT_CHARS}")
        if conditioning == "text" and (getattr(req, "label", None) is not None
                                       or getattr(req, "labels", None) is not None):
            raise APIError(422, "this model is text-conditioned: send prompt (text), not class labels")

    def resolve_labels(req: S.GenerateRequest) -> list[int]:
        given = [k for k in ("label", "labels", "prompt") if getattr(req, k) is not None]
        if len(given) > 1:
            raise APIError(422, f"give one of label, labels or prompt, not {' and '.join(given)}")
        check_prompts(req)  # a text model has no label fields past this: num images of "no class" below
        num = req.num or 1
        if req.labels is not None:
            if not req.labels:
                raise APIError(422, "labels is empty")
            labels = [label for label in req.labels for _ in range(num)]
        else:
            if req.label is None and tc.num_classes > 0 and not tc.null_class:
                raise APIError(422, f"this model has no unconditional mode: send {class_hint()}")
            labels = [-1 if req.label is None else req.label] * num
        if len(labels) > config.max_num:
            raise APIError(422, f"{len(labels)} images asked for; this server's limit is {config.max_num} "
                                f"per request")
        if conditioning == "class":
            pipe.check_labels(labels)  # MaskGITError -> 422
        return labels

    async def run(job: Job):
        future = batcher.submit(job)
        return await asyncio.wrap_future(future)

    def answer(images: np.ndarray, request: Request, t0: float, extra: dict) -> Response:
        if wants_png(request):
            return Response(png_bytes(images[0]), media_type="image/png",
                            headers={"X-Seconds": f"{time.perf_counter() - t0:.4f}"})
        return JSONResponse({"images": [b64_png(a) for a in images], **extra,
                             "seconds": round(time.perf_counter() - t0, 4)})

    png_response = {200: {"content": {"application/json": {}, "image/png": {}},
                          "description": "JSON with base64 PNGs, or PNG bytes with Accept: image/png"}}

    @app.post("/v1/generate", responses=png_response)
    async def generate(req: S.GenerateRequest, request: Request):
        """Generate images of a class (label / labels), unconditionally, or from a prompt (text models)."""
        t0 = time.perf_counter()
        labels = resolve_labels(req)
        cfg = sample_config(req)
        if wants_png(request) and len(labels) != 1:
            raise APIError(406, f"Accept: image/png needs exactly one image; this request makes {len(labels)} "
                                f"(ask for JSON)")
        text = conditioning == "text"
        r: GenResult = await run(Job(settings=(cfg, req.return_steps), shared=not req.exact, labels=labels,
                                     seed=req.seed, prompts=[req.prompt or ""] * len(labels) if text else None,
                                     negative_prompts=[req.negative_prompt or ""] * len(labels) if text else None))
        extra = {"labels": labels, "seed": req.seed,
                 "batch": {"requests": r.batch_requests, "images": r.batch_images}}
        if text:
            extra["prompt"] = req.prompt or ""
        if pipe.class_names and conditioning == "class":
            extra["label_names"] = [pipe.class_names[i] if i >= 0 else None for i in labels]
        if r.steps is not None:
            extra["steps"] = [[b64_png(s[i]) for s in r.steps] for i in range(len(labels))]
        return answer(r.images, request, t0, extra)

    @app.post("/v1/edit", responses=png_response, openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": S.EditRequest.model_json_schema()},
        "multipart/form-data": {"schema": {"type": "object", "description": "the same fields as form fields; "
                                           "image (and mask) as PNG files; box as x,y,w,h"}}}}})
    async def edit(request: Request):
        """Inpaint (mask or box), outpaint (side + tokens) or class-edit (mode edit, box + label) one image."""
        t0 = time.perf_counter()
        req, image_bytes, mask_bytes = await parse_edit(request)
        cfg = sample_config(req)
        kw = {f: getattr(cfg, f) for f in SAMPLE_FIELDS}
        image = read_png(image_bytes, "image", size, channels)
        mode = req.mode or ("outpaint" if req.side is not None or req.tokens is not None else "inpaint")
        check_prompts(req)
        if mode == "edit" and conditioning == "text":
            raise APIError(422, "a class edit (mode edit) needs a class-conditional model; text models inpaint "
                                "with a prompt")
        if conditioning == "text":
            kw = dict(kw, prompt=req.prompt or "", negative_prompt=req.negative_prompt)
        if mode == "outpaint":
            if req.side is None or req.tokens is None:
                raise APIError(422, "outpaint needs side (left/right/top/bottom) and tokens (>= 1)")
            if req.tokens >= pipe.grid[0]:
                raise APIError(422, f"outpaint tokens must be below the grid size {pipe.grid[0]}")
            fn = lambda: pipe.outpaint(image, req.side, req.tokens, label=req.label,
                                       seed=req.seed, output="np", **kw)
        elif mode == "edit":
            if req.box is None or req.label is None:
                raise APIError(422, "a class edit (mode edit) needs box [x, y, w, h] and label")
            if req.start_step is not None and req.start_step >= cfg.steps:
                raise APIError(422, f"start_step must be below steps ({cfg.steps})")
            fn = lambda: pipe.edit(image, box=req.box, label=req.label, start_step=req.start_step,
                                   feather=req.feather, seed=req.seed, output="np", **kw)
        else:
            if (mask_bytes is None) == (req.box is None):
                raise APIError(422, "inpaint needs exactly one of mask (PNG of the image's size) or box")
            mask = read_png(mask_bytes, "mask", size, 1) if mask_bytes is not None else None
            if mask is not None and not mask.any():
                raise APIError(422, "the mask is empty: paint (white) at least one pixel to regenerate")
            fn = lambda: pipe.inpaint(image, mask=mask, box=req.box, label=req.label,
                                      dilate=req.dilate, feather=req.feather, seed=req.seed, output="np", **kw)
        if req.label is not None and conditioning == "class":
            pipe.check_labels([req.label])
        out = await run(Job(fn=fn, shared=False))
        return answer(out, request, t0, {"mode": mode, "seed": req.seed})

    async def parse_edit(request: Request) -> tuple[Any, bytes, bytes | None]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            form = await request.form()
            data, files = {}, {}
            for k, v in form.multi_items():
                if hasattr(v, "read"):
                    files[k] = await v.read()
                elif k == "box":
                    try:
                        data[k] = [int(x) for x in v.strip("[] ").split(",")]
                    except ValueError:
                        raise APIError(422, f"box must be x,y,w,h integers, got {v!r}") from None
                elif v != "":
                    data[k] = v
            if "image" not in files:
                raise APIError(422, "send the image as a file field named image")
            data["image"] = ""
            image_bytes, mask_bytes = files["image"], files.get("mask")
        elif ctype in ("application/json", ""):
            try:
                data = json.loads(await request.body())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise APIError(400, f"the body is not valid JSON ({e})") from None
            if not isinstance(data, dict):
                raise APIError(422, "the body must be a JSON object")
            image_bytes = mask_bytes = None
        else:
            raise APIError(415, f"send application/json or multipart/form-data, not {ctype}")
        try:
            req = S.EditRequest.model_validate(data)
        except ValidationError as e:
            raise APIError(422, validation_message(e.errors())) from None
        if image_bytes is None:
            image_bytes = decode_b64(req.image, "image")
            mask_bytes = decode_b64(req.mask, "mask") if req.mask is not None else None
        return req, image_bytes, mask_bytes

    @app.get("/v1/models")
    async def models():
        """The served model: classes, token grid, image size and channels, defaults and limits."""
        return {"models": [{
            "name": name, "conditioning": conditioning, "num_classes": tc.num_classes,
            "classes": pipe.class_names or [str(i) for i in range(tc.num_classes)],
            "unconditional": bool(tc.null_class) or conditioning == "text",
            "cfg": bool(tc.null_class) or conditioning == "text",
            "text_encoder": encoder_name if conditioning == "text" else None,
            "grid": list(pipe.grid), "image_size": size, "channels": channels,
            "schedules": list(SCHEDULES), "defaults": dataclasses.asdict(SampleConfig()),
            "limits": dataclasses.asdict(config)}]}

    @app.get("/v1/stats")
    async def stats():
        """Requests, decode batches and mean batch size (requests per batched decode) since start."""
        return batcher.snapshot()

    @app.get("/healthz")
    async def healthz():
        ok = batcher.alive
        return JSONResponse({"status": "ok" if ok else "unavailable", "queued": batcher.queued()}, 200 if ok else 503)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(index_html or "<p>the web page is not installed</p>")

    return app


def serve(model: str | None, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
          config: ServerConfig = ServerConfig(), log_level: str = "info", precision: str = "fp32",
          compile: bool = False) -> None:
    """Load ``model`` and serve it until interrupted (Ctrl+C / SIGTERM drain the queue first)."""
    require_server()  # before the model loads
    import uvicorn

    from maskgit.pipeline import load, resolve
    pipe = load(model, device, precision)
    if compile:
        pipe.compile()
    name = model if model and not Path(model).exists() else resolve(model).name
    app = create_app(pipe, name, config)
    print(f"maskgit: serving {name} at http://{host}:{port}/ (API docs at /docs); Ctrl+C stops", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
