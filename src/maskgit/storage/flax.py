"""Flax msgpack checkpoints (``flax.serialization.to_bytes``) read and written without flax or pickle:
nested maps of numpy arrays, arrays as msgpack extension types (and flax's chunked form for huge arrays)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskgit.errors import MaskGITError
from maskgit.storage.files import atomic_write

OFFICIAL_FILES = {
    "tokenizer": ("tokenizer_imagenet256_checkpoint", "tokenizer_imagenet512_checkpoint"),
    "transformer": ("maskgit_imagenet256_checkpoint", "maskgit_imagenet512_checkpoint"),
}
OFFICIAL_URL = "https://storage.googleapis.com/maskgit-public/checkpoints/"

# flax.serialization's msgpack extension codes
_EXT_NDARRAY, _EXT_COMPLEX, _EXT_NPSCALAR = 1, 2, 3


_CHUNKED = "__msgpack_chunked_array__"  # flax splits arrays over 2**30 bytes into {"shape", "chunks"} maps


# ================================================================ reading and writing the Flax msgpack format
def _msgpack():
    try:
        import msgpack
    except ImportError:
        raise MaskGITError("reading official (Flax) checkpoints needs the msgpack package: "
                           "pip install 'maskgit-suite[convert]' (or pip install msgpack)") from None
    return msgpack


def _array_from_payload(data: bytes) -> np.ndarray:
    """Payload of ext type 1 (or 3): msgpack ``(shape, dtype name, raw C-order bytes)`` -> read-only array."""
    shape, name, buf = _msgpack().unpackb(data, raw=True)
    name = name.decode("ascii") if isinstance(name, bytes) else str(name)
    shape = tuple(int(s) for s in shape)
    count = math.prod(shape)
    if name == "bfloat16":  # numpy has no bfloat16: widen the 16 bits to float32 exactly
        if len(buf) != 2 * count:
            raise ValueError(f"bfloat16 array of shape {shape} has {len(buf)} bytes")
        bits = np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    dtype = np.dtype(name)
    if dtype.hasobject or len(buf) != count * dtype.itemsize:
        raise ValueError(f"array of shape {shape} and dtype {name} has {len(buf)} bytes")
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def _ext_hook(code: int, data: bytes):
    if code == _EXT_NDARRAY:
        return _array_from_payload(data)
    if code == _EXT_NPSCALAR:
        return _array_from_payload(data)[()]
    if code == _EXT_COMPLEX:
        re_, im = _msgpack().unpackb(data)
        return complex(re_, im)
    raise ValueError(f"unknown msgpack extension type {code}")


def _unchunk(tree: Any) -> Any:
    if not isinstance(tree, dict):
        return tree
    if tree.get(_CHUNKED):
        shape = tuple(int(tree["shape"][str(i)]) for i in range(len(tree["shape"])))
        chunks = [np.asarray(tree["chunks"][str(i)]).reshape(-1) for i in range(len(tree["chunks"]))]
        return np.concatenate(chunks).reshape(shape)
    return {k: _unchunk(v) for k, v in tree.items()}


def _sniff(head: bytes, size: int) -> str | None:
    """What a file that is not a Flax checkpoint most likely is (for the error message)."""
    pickle = "a Python pickle (never loaded here)"
    kinds = [(b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
             (b"PK\x03\x04", "a zip archive (a PyTorch .pt/.pth file is one)"),
             (b"\x89HDF", "an HDF5 (Keras) file"),
             (b"\x80\x02", pickle), (b"\x80\x03", pickle), (b"\x80\x04", pickle), (b"\x80\x05", pickle),
             (b"{", "a JSON file"), (b"<", "an HTML/XML page (a failed download?)")]
    for magic, what in kinds:
        if head.startswith(magic):
            return what
    if len(head) >= 10 and head[8:10] == b'{"' and int.from_bytes(head[:8], "little") + 8 <= size:
        return "a safetensors file (already our format? load it with maskgit.storage.checkpoint)"
    return None


def load_flax_msgpack(path: str | Path) -> dict:
    """Read a ``flax.serialization.to_bytes`` file into a nested dict of (read-only) numpy arrays.

    Streams the file (no whole-file copy in memory); never unpickles anything."""
    msgpack = _msgpack()
    path = Path(path)
    if not path.exists():
        raise MaskGITError(f"checkpoint {path} does not exist (the official files are "
                           f"{', '.join(OFFICIAL_FILES['tokenizer'] + OFFICIAL_FILES['transformer'])}, "
                           f"from {OFFICIAL_URL})")
    if path.is_dir():
        raise MaskGITError(f"{path} is a directory: give the checkpoint file itself "
                           f"(e.g. {OFFICIAL_FILES['transformer'][0]})")
    size = path.stat().st_size
    if size == 0:
        raise MaskGITError(f"{path} is empty: download it again")
    with open(path, "rb") as f:
        head = f.read(16)
        what = _sniff(head, size)  # (the PNG signature's 0x89 is also a msgpack map header)
        if what or (head[0] not in range(0x80, 0x90) and head[0] not in (0xDE, 0xDF)):  # not a msgpack map
            raise MaskGITError(f"{path} is not a Flax msgpack checkpoint" + (f": it looks like {what}" if what
                               else "") + "; give one of the official MaskGIT files (e.g. "
                               f"{OFFICIAL_FILES['tokenizer'][0]})")
        f.seek(0)
        unpacker = msgpack.Unpacker(f, raw=False, strict_map_key=False, ext_hook=_ext_hook,
                                    read_size=1 << 20, max_buffer_size=2**31 - 1)
        try:
            tree = unpacker.unpack()
        except msgpack.OutOfData:
            raise MaskGITError(f"{path} is truncated ({size} bytes, it ends inside the data): download it "
                               f"again") from None
        except (ValueError, TypeError, UnicodeDecodeError, msgpack.UnpackException) as e:
            raise MaskGITError(f"{path} is not a valid Flax msgpack checkpoint ({e})") from None
        if unpacker.tell() != size:
            raise MaskGITError(f"{path} has {size - unpacker.tell()} unexpected bytes after the checkpoint "
                               f"data: not a single Flax checkpoint (corrupt or concatenated download?)")
    if not isinstance(tree, dict):
        raise MaskGITError(f"{path} holds a msgpack {type(tree).__name__}, not a Flax variable tree")
    return _unchunk(tree)


def _payload(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr)
    if arr.dtype.hasobject or arr.dtype.fields is not None:
        raise MaskGITError(f"cannot write an array of dtype {arr.dtype} to a Flax checkpoint")
    return _msgpack().packb((list(arr.shape), arr.dtype.name, arr.tobytes()), use_bin_type=True)


def write_flax_msgpack(tree: dict, path: str | Path) -> Path:
    """Write ``tree`` (nested dicts of arrays / tensors / scalars) in flax.serialization's msgpack layout."""
    msgpack = _msgpack()

    def default(obj):
        if torch.is_tensor(obj):
            obj = obj.detach().cpu().numpy()
        if isinstance(obj, np.ndarray):
            return msgpack.ExtType(_EXT_NDARRAY, _payload(obj))
        if isinstance(obj, np.generic):
            return msgpack.ExtType(_EXT_NPSCALAR, _payload(np.asarray(obj)))
        if isinstance(obj, complex):
            return msgpack.ExtType(_EXT_COMPLEX, msgpack.packb((obj.real, obj.imag)))
        if isinstance(obj, tuple):
            return list(obj)
        raise TypeError(f"cannot serialise a {type(obj).__name__}")

    path = Path(path)
    data = msgpack.packb(tree, default=default, use_bin_type=True, strict_types=True)
    return atomic_write(path, lambda f: f.write(data))


# ================================================================ tree helpers
def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a/b/c": leaf}."""
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(flatten(v, key + "/"))
        else:
            flat[key] = v
    return flat


def unflatten(flat: dict[str, Any]) -> dict:
    tree: dict = {}
    for key, v in flat.items():
        *parents, leaf = key.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def params_of(tree: dict) -> dict:
    """The parameter tree, with or without flax's ``{"params": ...}`` variables wrapper."""
    if isinstance(tree.get("params"), dict):
        return tree["params"]
    return tree
