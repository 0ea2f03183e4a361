"""Helpers shared by the CLI commands."""

from __future__ import annotations

import argparse

from maskgit.config import check_seed
from maskgit.devices import resolve_device  # noqa: F401  (the commands' device choice)
from maskgit.errors import MaskGITError


def device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")


def speed_args(p: argparse.ArgumentParser) -> None:
    """--precision and --compile: the opt-in speed modes of a pipeline (see Pipeline.set_precision / compile)."""
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "int8", "bf16", "fp16"],
                   help="auto (default): bf16 where the CPU (avx512_bf16, AMX) or GPU multiplies bf16 in hardware, "
                        "else fp32; fp32: the exact reference; int8: CPU dynamic quantisation of the linear layers; "
                        "bf16: the transformer under bf16 autocast; fp16: GPU autocast. The non-fp32 modes change "
                        "results slightly (see benchmarks/RESULTS.md)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the transformer with frozen weights (faster after a ~30 s first call per "
                        "batch size; needs a C++ compiler; decoding with --cache runs its steps eager)")


def seed_arg(text: str) -> int:
    """argparse type of --seed: an integer in [0, 2**63), the message the library gives for the same seed."""
    try:
        return check_seed(int(text))
    except (ValueError, MaskGITError) as e:
        msg = str(e) if isinstance(e, MaskGITError) else f"seed must be an integer in [0, 2**63), got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def load_pipeline(args, **kw):
    """The pipeline named by --model on --device, with --precision and --compile applied."""
    from maskgit.pipeline import load
    kw.setdefault("lora", getattr(args, "lora_weights", None))
    pipe = load(args.model, resolve_device(args.device), args.precision, **kw)
    if args.precision == "auto":
        print(f"precision: {pipe.precision} (auto on {pipe.device.type})")
    return pipe.compile() if args.compile else pipe


def parse_ints(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip() != ""]
    except ValueError:
        raise MaskGITError(f"{what} must be comma-separated integers, got {text!r}") from None


def int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def parse_labels(text: str, class_names: list[str] | None = None) -> list[int]:
    """--labels: comma-separated class ids or class names ("207,golden retriever"): a name matches exactly, else
    ignoring case and "_" vs " "; a name that matches several classes (ImageNet's two "crane"s) needs the id."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if int_or_none(part) is not None:
            out.append(int(part))
            continue
        names = class_names or []
        ids = [i for i, n in enumerate(names) if n == part]
        if not ids:
            key = part.lower().replace("_", " ")
            ids = [i for i, n in enumerate(names) if n.lower().replace("_", " ") == key]
        if len(ids) > 1:
            raise MaskGITError(f"--labels: {part!r} names classes {', '.join(map(str, ids))}: give the id")
        if not ids:
            shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
            raise MaskGITError(f"--labels {text}: {part!r} is not a class of this model: give comma-separated "
                               f"integers (class ids) or class names" + (f" ({shown})" if names else
                                                                          " (this model has no class names)"))
        out.append(ids[0])
    return out
