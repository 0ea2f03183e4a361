import dataclasses

import pytest
import torch

from maskgit.config import transformer_preset, vqgan_preset
from maskgit.models.transformer import MaskGITTransformer
from maskgit.models.vqgan import VQGAN
from maskgit.storage.checkpoint import save_model

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MASKGIT_HOME", str(tmp_path_factory.getbasetemp() / "home"))  # the one cache folder


def tiny_models(seed: int = 0):
    """A tiny tokenizer (16 px grey -> 8x8 tokens of 32 codes) and a matching tiny transformer."""
    torch.manual_seed(seed)
    tok = VQGAN(vqgan_preset("tiny")).eval()
    tcfg = dataclasses.replace(transformer_preset("tiny"), grid_size=8)
    return tok, MaskGITTransformer(tcfg).eval()


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    tok, tr = tiny_models()
    root = tmp_path_factory.mktemp("pipe")
    save_model(tok, root / "tokenizer")
    save_model(tr, root / "maskgit", meta={"class_names": ["a", "b", "c", "d"]})
    return root


def wait_until_healthy(url: str, tries: int = 600) -> None:
    """Poll ``url``/healthz (a server started in a subprocess) until it answers 200, for about a minute at most."""
    import time

    import httpx
    for _ in range(tries):
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail("the server did not come up")


def small_store(path, n: int, seed: int = 0):
    """A token store of ``n`` random 4x4 grids over 32 codes with labels in 0..3 (classes a-d)."""
    import numpy as np

    from maskgit.data.tokenstore import write_store
    rng = np.random.default_rng(seed)
    write_store(path, rng.integers(0, 32, size=(n, 4, 4)), labels=rng.integers(0, 4, size=n),
                meta={"codebook_size": 32, "classes": ["a", "b", "c", "d"]})
    return path


def png(a) -> bytes:
    """A uint8 array as PNG bytes (request bodies for the server tests)."""
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    import base64
    return base64.b64encode(data).decode()


async def asgi_call(app, path: str, receive) -> list[dict]:
    """One JSON POST to the ASGI ``app`` by hand, the request's messages coming from ``receive``; returns the ASGI
    messages sent back (for what a test client cannot do: a client that stalls or leaves mid-request)."""
    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1),
             "server": ("test", 80)}
    await app(scope, receive, send)
    return sent


def write_image_folder(root, height: int, width: int, classes=("cat", "dog"), per_class: int = 6):
    """An image folder of random RGB PNGs, ``per_class`` per class sub-folder; returns ``root``."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir()
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root
