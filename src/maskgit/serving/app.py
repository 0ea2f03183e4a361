"""HTTP API and web page for a pipeline (FastAPI + uvicorn; ``pip install maskgit-suite[server]``).

Endpoints: ``POST /v1/generate``, ``POST /v1/edit`` (inpaint / outpaint / class edit), ``GET /v1/models``,
``GET /v1/stats``, ``GET /healthz``, the page at ``/`` and the OpenAPI docs at ``/docs``. Images travel as
base64 PNG in JSON, or as the PNG bytes when the client sends ``Accept: image/png`` and the answer is one image.
Every error is JSON ``{"error": "..."}``: 400 unreadable input (bad JSON, JSON nested deeper than
``MAX_JSON_DEPTH``, bad base64, not a PNG), 406 PNG asked for several images, 408 a body not all there
``body_timeout`` seconds after the request began (stalled or drip-fed), 413 body too large, 415 unknown content
type, 422 a well-formed request the model cannot serve (a field of the wrong type: ``"7"`` or ``true`` is not an
int; a non-finite or out-of-range number; label out of range, a prompt for a class model or a label for a text
model, a prompt above ``MAX_PROMPT_CHARS``, wrong image or mask size, unknown schedule, steps/num above the limits,
an integer of more than 4300 digits, a multipart ``box`` with other than ASCII digits, ...), 503 queue full or
shutting down (with ``Retry-After``). Field types and ranges are checked before any work (see schemas.py and
handlers.py). A client that closes its connection mid-body is dropped without a log entry; a connection that takes
more than ``header_timeout`` seconds to send a request head is closed (connections.py).

Text-conditioned models take ``prompt`` (and ``negative_prompt``, CFG's unconditional branch) in generate and in
inpaint/outpaint edits; an empty or missing prompt is the learned null text (unconditional). Requests with
different prompts share a batched decode: each image carries its own text embedding.

Batching. All inference runs in ONE worker thread (the ``Batcher``); the asyncio side only validates, enqueues
and awaits a future. Requests wait in a bounded FIFO queue. The worker takes the oldest one, waits at most
``max_wait_ms`` (from that request's arrival) for company, then decodes together every queued generate request
with the same settings (the whole SampleConfig plus ``return_steps``), up to ``max_batch`` images, in one
``Pipeline.generate`` call; a single request larger than ``max_batch`` runs alone, and so does every edit.
Each request is answered exactly once. The queue bound counts images, not requests. A request whose client
disconnects while it waits is taken out of the queue and never decoded.

Shutdown (SIGTERM / SIGINT): new requests get 503 at once; accepted ones are decoded until ``shutdown_timeout``
seconds have passed; then every request not yet answered gets 503 (also one whose batch is still being decoded:
the decode is not waited for), uploads still arriving get 503, and the process exits.

Seeds. Every request draws its decoding noise from its own ``torch.Generator().manual_seed(seed)``, also inside a
shared decode (``sampling.noise.RowGenerators``: each request's block of rows has its own generator), so it gets the
images of ``maskgit.load(model).generate(labels, seed=seed, **settings)``:
- decoded alone (a batch of one, or sent with ``"exact": true``, which is never shared) they are equal bit for bit;
- in a shared decode only the float rounding of the matmuls can differ (their kernels depend on the batch size):
  ``benchmarks/batched_seeds.py`` measured identical token grids for 128 of 128 shipped-model requests and images
  within 1/255 per pixel. Edits always run alone, so they are always exact."""

import asyncio
import logging
import os
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

from maskgit.errors import MaskGITError
from maskgit.serving.batching import APIError, Batcher, ServerConfig
from maskgit.serving.handlers import Handlers
from maskgit.serving.schemas import BodyLimit, schemas, validation_message

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"
SWAGGER_UI = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5"
# no installed package ships Swagger UI's files, so /docs loads them from a CDN and says so: offline, the page
# shows where the same API description is (/openapi.json) instead of a blank page
DOCS_HTML = f"""<!doctype html><html><head><meta charset="utf-8"><title>MaskGIT API</title>
<link rel="stylesheet" href="{SWAGGER_UI}/swagger-ui.css"></head><body>
<p id="offline" style="font-family:sans-serif;margin:1em">This page loads Swagger UI from {SWAGGER_UI} and needs
the internet for that. Without it, the API's description is at <a href="/openapi.json">/openapi.json</a> (OpenAPI
3 JSON, served by this server) and the endpoints are listed at the top of <code>maskgit.serving.app</code>.</p>
<div id="swagger-ui"></div>
<script src="{SWAGGER_UI}/swagger-ui-bundle.js"></script>
<script>if (window.SwaggerUIBundle) {{ document.getElementById("offline").style.display = "none";
  SwaggerUIBundle({{url: "/openapi.json", dom_id: "#swagger-ui"}}); }}</script></body></html>"""


def require_server() -> None:
    """MaskGITError with the install line when FastAPI / uvicorn / python-multipart are missing."""
    import importlib.util
    missing = [m for m in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(m) is None]
    if missing:
        raise MaskGITError(f"the server needs {', '.join(missing)}: pip install maskgit-suite[server]")


def create_app(pipe, name: str = "model", config: ServerConfig = ServerConfig()):
    """The FastAPI app serving ``pipe``; its worker starts and drains with the app's lifespan."""
    require_server()
    from fastapi import FastAPI

    S = schemas()
    batcher = Batcher(pipe, config.max_batch, config.max_wait_ms / 1000, config.queue_size)
    h = Handlers(pipe, name, config, batcher)
    index_html = (WEB_DIR / "index.html").read_text(encoding="utf-8") if (WEB_DIR / "index.html").exists() else ""

    from maskgit import __version__
    app = FastAPI(title="MaskGIT", version=__version__, lifespan=_lifespan(batcher, config), docs_url=None,
                  redoc_url=None, description="Generation and editing with a MaskGIT pipeline. See "
                                              "maskgit.serving.app for the batching and seed semantics.")
    app.state.batcher, app.state.pipe, app.state.config = batcher, pipe, config
    app.add_middleware(BodyLimit, max_bytes=int(config.max_body_mb * 2 ** 20), timeout_s=config.body_timeout,
                       stop_at=lambda: batcher.stop_at)
    _add_error_handlers(app)
    _add_routes(app, S, h, batcher, index_html)
    return app


def _lifespan(batcher: Batcher, config: ServerConfig):
    """The app's lifespan: the worker starts with the app and drains until the shutdown deadline."""

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        try:
            yield
        finally:  # the batch being decoded is waited for until the shutdown deadline, not past it
            stop = batcher.stop_at
            left = config.shutdown_timeout if stop is None else max(0.0, stop - time.monotonic())
            await asyncio.to_thread(batcher.close, left + 0.5)

    return lifespan


def _add_error_handlers(app) -> None:
    """Every error as JSON ``{"error": "..."}`` with its status (see the module doc)."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)

    @app.exception_handler(MaskGITError)
    async def _user_error(request, exc: MaskGITError):
        return JSONResponse({"error": str(exc)}, 422)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request, exc: ClientDisconnect):  # nobody reads this answer; no traceback in the log
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def _bug(request, exc: Exception):
        return JSONResponse({"error": f"internal error ({type(exc).__name__}): see the server log"}, 500)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        return JSONResponse({"error": validation_message(exc.errors())}, 422)

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc: HTTPException):
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=exc.headers)


def _body_doc(model, multipart: bool = False) -> dict:
    """The OpenAPI request body of an endpoint that reads its JSON (or form) body itself."""
    content = {"application/json": {"schema": model.model_json_schema()}}
    if multipart:
        content["multipart/form-data"] = {"schema": {"type": "object", "description": "the same fields as form "
                                          "fields; image (and mask) as PNG files; box as x,y,w,h"}}
    return {"requestBody": {"required": True, "content": content}}


def _add_routes(app, S, h: Handlers, batcher: Batcher, index_html: str) -> None:
    """The endpoints (see the module doc), the web page and the API docs page."""
    from fastapi import Request
    from fastapi.responses import HTMLResponse, JSONResponse

    png_response = {200: {"content": {"application/json": {}, "image/png": {}},
                          "description": "JSON with base64 PNGs, or PNG bytes with Accept: image/png"}}

    @app.post("/v1/generate", responses=png_response, openapi_extra=_body_doc(S.GenerateRequest))
    async def generate(request: Request):
        """Generate images of a class (label / labels), unconditionally, or from a prompt (text models)."""
        return await h.generate(request)

    @app.post("/v1/edit", responses=png_response, openapi_extra=_body_doc(S.EditRequest, multipart=True))
    async def edit(request: Request):
        """Inpaint (mask or box), outpaint (side + tokens) or class-edit (mode edit, box + label) one image."""
        return await h.edit(request)

    @app.get("/v1/models")
    async def models():
        """The served model: classes, token grid, image size and channels, defaults and limits."""
        return h.models()

    @app.get("/v1/stats")
    async def stats():
        """Requests, decode batches, mean batch size, abandoned requests since start."""
        return batcher.snapshot()

    @app.get("/healthz")
    async def healthz():
        ok = batcher.alive
        return JSONResponse({"status": "ok" if ok else "unavailable", "queued": batcher.queued()}, 200 if ok else 503)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(index_html or "<p>the web page is not installed</p>")

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs():
        return HTMLResponse(DOCS_HTML)


def serve(model: str | None, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
          config: ServerConfig = ServerConfig(), log_level: str = "info", precision: str = "fp32",
          compile: bool = False) -> None:
    """Load ``model`` and serve it until interrupted: SIGTERM / SIGINT refuse new requests, finish accepted ones
    within ``config.shutdown_timeout`` seconds, answer the rest 503 and exit (a second SIGINT exits at once)."""
    require_server()  # before the model loads
    import uvicorn

    from maskgit.pipeline import load, resolve
    pipe = load(model, device, precision)
    if compile:
        pipe.compile()
    name = model if model and not Path(model).exists() else resolve(model).name
    app = create_app(pipe, name, config)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            app.state.batcher.begin_shutdown(config.shutdown_timeout)
            super().handle_exit(sig, frame)

    # every request has its answer (200 or 503) by the deadline; uvicorn cancels what is still open only a
    # moment later (a cancelled request would be a 500 with a traceback), so nothing can keep the process alive
    from maskgit.serving.connections import header_timeout_protocol
    server = Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                   http=header_timeout_protocol(config.header_timeout),
                                   timeout_graceful_shutdown=config.shutdown_timeout + 2))
    log.info(f"maskgit: serving {name} at http://{host}:{port}/ (API docs at /docs); Ctrl+C stops")
    try:
        server.run()  # re-raises the signal that stopped it once the shutdown is done, as uvicorn.run does
    except KeyboardInterrupt:
        pass
    if app.state.batcher._thread.is_alive():  # a decode past the deadline (its clients got 503): do not wait
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
