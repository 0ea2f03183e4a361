"""The server's request bodies and how they are read: strict pydantic models (no "7" or true for an int,
finite numbers within fixed ranges), JSON parsing that answers a too-deep document with 400, base64 and PNG
decoding with the image size checked from the header, and the ASGI middleware that bounds a body's size and the
time between its parts. Every check here runs before any allocation that depends on the request's numbers."""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import io
import json
import re
import time
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
from PIL import Image

from maskgit.sampling.schedules import SCHEDULES
from maskgit.serving.batching import APIError
from maskgit.storage.images import to_rgb

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_PROMPT_CHARS = 1000
MAX_JSON_DEPTH = 32  # the deepest request body is 3 levels; anything far deeper is refused before parsing
INT64_MAX = 2 ** 63 - 1
MAX_SCALE = 1000.0  # the largest temperature / CFG scale a request may ask for
TRIM_AFTER_BYTES = 1 << 20  # a request body at least this large gives its freed memory back when answered


# ================================================================ bodies

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")


def json_depth_ok(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the brackets of ``body`` (strings skipped) close within ``limit`` levels. Each pass deletes the
    innermost ``[]``/``{}`` pairs with C-speed byte operations, so a 100k-deep array costs a few scans of the
    body, never a recursion."""
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKET)
    too_deep = re.compile(rb"[\[{]{%d}" % (limit + 1))  # that many opening brackets in a row
    for _ in range(limit):
        if not brackets:
            return True
        if too_deep.search(brackets):
            return False
        shorter = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if len(shorter) == len(brackets):
            return False  # unbalanced: not JSON either
        brackets = shorter
    return not brackets


def parse_json_object(body: bytes) -> dict:
    """A request body -> dict; 400 for invalid or too-deep JSON, 422 for JSON that is not an object."""
    if not json_depth_ok(body):
        raise APIError(400, f"the body is not valid JSON, or nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise APIError(400, f"the body is not valid JSON ({e})") from None
    except ValueError as e:  # an integer longer than Python's int-from-string limit (sys.get_int_max_str_digits)
        raise APIError(422, f"the body has a number too long to read ({str(e)[:80]})") from None
    if not isinstance(data, dict):
        raise APIError(422, "the body must be a JSON object")
    return data


def validation_message(errors: list[dict]) -> str:
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
    return "; ".join(parts) or "invalid request"


def validate(model, data: dict, strict: bool = True):
    """``model.model_validate(data)`` with every failure a 422 naming the fields. Multipart form fields are
    strings by nature, so they are validated with ``strict=False`` (still finite, still within range)."""
    from pydantic import ValidationError
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as e:
        raise APIError(422, validation_message(e.errors(include_url=False))) from None


@functools.cache
def schemas() -> SimpleNamespace:
    """The pydantic request models (built on first use, so this module imports without the server extra)."""
    from pydantic import BaseModel, ConfigDict, Field

    Int = functools.partial(Field, ge=0, le=INT64_MAX)

    class SampleFields(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

        steps: int | None = Field(None, ge=1, le=INT64_MAX, description="decoding steps (default 8)")
        schedule: str | None = Field(None, max_length=64, description=f"mask schedule: {', '.join(SCHEDULES)}")
        temperature: float | None = Field(None, ge=0, le=MAX_SCALE, description="token sampling temperature "
                                                                                 "(0 = greedy)")
        top_k: int | None = Int(None)
        top_p: float | None = Field(None, gt=0, le=1)
        choice_temperature: float | None = Field(None, ge=0, le=MAX_SCALE,
                                                 description="Gumbel noise on the confidences")
        cfg: float | None = Field(None, ge=-MAX_SCALE, le=MAX_SCALE,
                                  description="classifier-free guidance scale (0 = off)")
        cfg_schedule: Literal["constant", "linear"] | None = None
        cfg_start: float | None = Field(None, ge=0, le=1, description="guidance only on steps t with t/T >= this")
        cfg_end: float | None = Field(None, ge=0, le=1, description="guidance only on steps t with t/T < this")
        cfg_every: int | None = Field(None, ge=1, le=1000, description="the unconditional pass on every K-th "
                                      "guided step; the guided steps between reuse its difference")
        cache: str | None = Field(None, max_length=256, pattern=r"^(off|every[1-9][0-9]{0,2}|F[FC]*)$",
                                  description="cached decoding: off, everyK (a full step, then K-1 cheap ones) or "
                                              "F/C per step, e.g. FCCFCC")
        order: Literal["confidence", "halton", "random"] | None = Field(
            None, description="which tokens each step reveals (default: the model's)")
        candidates: int | None = Field(None, ge=1, le=16, description="decode this many per image and keep the one "
                                                                      "the classifier finds most on-class")
        seed: int = Int(0)

    class GenerateRequest(SampleFields):
        label: int | None = Field(None, ge=-1, le=INT64_MAX, description="one class id (-1 = no class); num "
                                                                          "images of it")
        labels: list[int] | None = Field(None, description="class ids; num images of each")
        prompt: str | None = Field(None, description="text, for text-conditioned models only (\"\" = unconditional)")
        negative_prompt: str | None = Field(None, description="text models: what CFG steers away from")
        num: int | None = Field(None, ge=1, le=INT64_MAX, description="images (per label); default 1")
        return_steps: bool = Field(False, description="also return the partially decoded image after every step")
        exact: bool = Field(False, description="decode alone: bit for bit the library call with this seed (a shared "
                                               "batch matches it up to float rounding)")

    class EditRequest(SampleFields):
        image: str = Field(description="base64 PNG of the model's image size")
        mode: Literal["inpaint", "outpaint", "edit"] | None = Field(
            None, description="default: outpaint when side is given, else inpaint; edit = class edit of box")
        mask: str | None = Field(None, description="inpaint: base64 PNG of the image's size, white = regenerate")
        box: list[int] | None = Field(None, min_length=4, max_length=4, description="[x, y, w, h] in pixels")
        label: int | None = Field(None, ge=-1, le=INT64_MAX, description="class of the regenerated region")
        prompt: str | None = Field(None, description="text models: text of the regenerated region (inpaint/outpaint)")
        negative_prompt: str | None = Field(None, description="text models: what CFG steers away from")
        side: Literal["left", "right", "top", "bottom"] | None = None
        tokens: int | None = Field(None, ge=1, le=INT64_MAX, description="outpaint: token rows/columns to add")
        start_step: int | None = Int(None, description="class edit: start later in the schedule")
        dilate: int = Field(0, ge=0, le=16)
        feather: int = Field(2, ge=0, le=32)

    return SimpleNamespace(SampleFields=SampleFields, GenerateRequest=GenerateRequest, EditRequest=EditRequest)


_BOX = re.compile(r"\s*\[?\s*([0-9]{1,6})\s*,\s*([0-9]{1,6})\s*,\s*([0-9]{1,6})\s*,\s*([0-9]{1,6})\s*\]?\s*",
                  re.ASCII)


def parse_box(text: str) -> list[int]:
    """A multipart ``box`` field: "x,y,w,h" (or "[x, y, w, h]") of ASCII digits -> four ints; 422 otherwise
    (``str.isdigit`` and ``int`` also take superscripts, Arabic-Indic and full-width digits)."""
    m = _BOX.fullmatch(text)
    if m is None:
        raise APIError(422, f"box must be x,y,w,h non-negative integers (ASCII digits), got {text[:40]!r}")
    return [int(g) for g in m.groups()]


async def read_edit_body(request) -> tuple[Any, bytes, bytes | None]:
    """POST /v1/edit's body (JSON with base64 PNGs, or multipart with PNG files) -> (EditRequest, image, mask)."""
    S = schemas()
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form(max_files=4, max_fields=40)
        data, files = {}, {}
        for k, v in form.multi_items():
            if hasattr(v, "read"):
                files[k] = await v.read()
            elif k == "box":
                data[k] = parse_box(v)
            elif v != "":
                data[k] = v
        if "image" not in files:
            raise APIError(422, "send the image as a file field named image")
        data["image"] = ""
        req = validate(S.EditRequest, data, strict=False)
        return req, files["image"], files.get("mask")
    if ctype in ("application/json", ""):
        req = validate(S.EditRequest, parse_json_object(await request.body()))
        return req, decode_b64(req.image, "image"), decode_b64(req.mask, "mask") if req.mask is not None else None
    raise APIError(415, f"send application/json or multipart/form-data, not {ctype[:60]}")


async def read_generate_body(request) -> Any:
    """POST /v1/generate's JSON body -> GenerateRequest (strict types)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("application/json", ""):
        raise APIError(415, f"send application/json, not {ctype[:60]}")
    return validate(schemas().GenerateRequest, parse_json_object(await request.body()))


# ================================================================ images

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


# ================================================================ middleware

class BodyLimit:
    """ASGI middleware: 413 for a body above ``max_bytes`` (by Content-Length, or counted while streaming); 408
    when the whole body has not arrived ``timeout_s`` seconds after the app first asked for it (a stalled upload,
    or one drip-fed a byte at a time); 503 for a body still arriving when ``stop_at()`` (a ``time.monotonic()``
    shutdown deadline, or None) has passed. After a request whose body was ``TRIM_AFTER_BYTES`` or more, freed
    memory goes back to the OS (``inference.malloc.trim_malloc``), so bursts of large uploads do not raise the resident
    memory for good."""

    def __init__(self, app, max_bytes: int, timeout_s: float = 30.0, stop_at=lambda: None):
        self.app, self.max_bytes, self.timeout_s, self.stop_at = app, max_bytes, timeout_s, stop_at

    async def _next(self, receive, give_up: float):
        """``await receive()`` before ``give_up`` (the body's deadline) and the shutdown deadline."""
        from starlette.exceptions import HTTPException  # FastAPI passes it through while reading the body
        task = asyncio.ensure_future(receive())
        while True:
            stop = self.stop_at()
            left = min(give_up, stop if stop is not None else give_up) - time.monotonic()
            done, _ = await asyncio.wait({task}, timeout=max(0.0, min(left, 0.25)))
            if done:
                return task.result()
            if time.monotonic() >= give_up:
                task.cancel()
                raise HTTPException(408, f"the request body did not arrive within {self.timeout_s:g} s")
            if stop is not None and time.monotonic() >= stop:
                task.cancel()
                raise HTTPException(503, "the server shut down before this request's body arrived",
                                    headers={"Retry-After": "5"})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.exceptions import HTTPException
        from starlette.responses import JSONResponse
        message = f"the request body is larger than this server's limit of {self.max_bytes / 2 ** 20:.3g} MB"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or len(length) > 18):
            return await JSONResponse({"error": "Content-Length is not a number"}, 400)(scope, receive, send)
        if length is not None and int(length) > self.max_bytes:
            return await JSONResponse({"error": message}, 413)(scope, receive, send)
        seen, complete, give_up = 0, False, None

        async def limited():
            nonlocal seen, complete, give_up
            if complete:  # the body is in: what follows is the disconnect (waited for without a deadline)
                return await receive()
            if give_up is None:  # the whole body, however it is split, within timeout_s
                give_up = time.monotonic() + self.timeout_s
            msg = await self._next(receive, give_up)
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                complete = not msg.get("more_body", False)
            else:
                complete = True
            if seen > self.max_bytes:
                raise HTTPException(413, message)
            return msg

        try:
            return await self.app(scope, limited, send)
        finally:
            if seen >= TRIM_AFTER_BYTES:
                from maskgit.inference.malloc import trim_malloc
                trim_malloc()
