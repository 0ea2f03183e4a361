"""Helpers shared by the CLI commands."""

from __future__ import annotations

import argparse

import torch

from ..errors import MaskGITError


def device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MaskGITError("--device cuda was asked for but no CUDA device is available")
    return name


def parse_ints(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip() != ""]
    except ValueError:
        raise MaskGITError(f"{what} must be comma-separated integers, got {text!r}") from None
