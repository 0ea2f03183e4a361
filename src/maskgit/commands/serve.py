"""`maskgit serve`: the HTTP API and web page for a model (needs ``pip install maskgit-suite[server]``)."""

from __future__ import annotations

from maskgit.commands.common import device_arg, resolve_device, speed_args
from maskgit.commands.parser import add_dataclass_args, override


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP (API + web page)",
                       description="Serve generation and editing over HTTP: POST /v1/generate, POST /v1/edit, "
                                   "GET /v1/models, GET /v1/stats, GET /healthz, docs at /docs and a web page at "
                                   "/. Concurrent generate requests are batched into one decode.")
    p.add_argument("--model", default=None, help="shipped model name or directory (default: fashion-mnist)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 = every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    device_arg(p)
    speed_args(p)
    from maskgit.serving.app import ServerConfig
    add_dataclass_args(p, ServerConfig)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from maskgit.serving.app import (
        ServerConfig,
        serve,  # imports FastAPI; MaskGITError with the install hint when it is missing
    )
    serve(args.model, args.host, args.port, resolve_device(args.device), override(ServerConfig(), args),
          args.log_level, precision=args.precision, compile=args.compile)
    return 0
