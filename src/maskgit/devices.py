"""The one device choice: names ("auto", "cpu", "cuda", "cuda:N") -> a device that is there, or one clear error."""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device) -> str:
    """The one device choice: "auto" -> cuda when available, else cpu; a CUDA device that is not there is a clear
    error."""
    name = str(name)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        from maskgit.errors import MaskGITError
        raise MaskGITError("--device cuda was asked for but no CUDA device is available (use --device cpu)")
    return name


def check_device(device) -> torch.device:
    """The device of a Python call as torch.device ("auto": CUDA when there is one); a CUDA device that is not
    there, or a name that is no device, is one MaskGITError (instead of torch's AssertionError later)."""
    from maskgit.errors import MaskGITError
    try:
        dev = torch.device(resolve_device(device) if str(device) == "auto" else device)
    except (RuntimeError, TypeError, ValueError):
        raise MaskGITError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', not {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MaskGITError(f"device={str(device)!r}: no CUDA device is available here (use device='cpu' or 'auto')")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise MaskGITError(f"device={str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev
