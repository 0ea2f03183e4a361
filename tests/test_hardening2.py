"""The second hardening pass (issue 33): a model folder whose config does not describe its weights, hostile uploads
and connections against the server, odd image folders, and the ONNX model card; each test is named for what broke."""

import asyncio
import json
import logging
import os
import shutil
import socket
import struct
import threading
import time
import zlib

import httpx
import numpy as np
import pytest
import torch
from conftest import asgi_call, b64, png, tiny_models
from PIL import Image

import maskgit
from maskgit.cli import main
from maskgit.errors import MaskGITError
from maskgit.storage.checkpoint import MANIFEST, load_model, read_header, save_model

SIZE = 16  # the tiny pipeline: 16x16 grey images, 8x8 tokens, classes 0..3 and a null class
IMAGE = (np.arange(SIZE * SIZE).reshape(SIZE, SIZE) % 256).astype(np.uint8)
LONG_INT = "1" + "0" * 4400  # above Python's 4300-digit int-from-string limit


@pytest.fixture
def unverified(tiny_pipeline_dir, tmp_path):
    """A copy of the tiny pipeline with its manifests deleted (a folder written by hand or by another tool)."""
    root = tmp_path / "pipe"
    shutil.copytree(tiny_pipeline_dir, root)
    for mf in root.glob(f"*/{MANIFEST}"):
        mf.unlink()
    return root


def edit_config(folder, **changes):
    f = folder / "config.json"
    doc = json.loads(f.read_text())
    doc["config"].update(changes)
    f.write_text(json.dumps(doc))


# ---------------------------------------------------------------- defect 7: config vs weights, no manifest

CLAIMS = [{"codebook_size": 10 ** 9}, {"depth": 10 ** 6}, {"width": 10 ** 5},
          {"codebook_size": 10 ** 9, "depth": 10 ** 6, "width": 10 ** 5}]


@pytest.mark.parametrize("claim", CLAIMS, ids=[",".join(c) for c in CLAIMS])
def test_config_claiming_a_billion_codes_or_a_million_blocks_fails_fast_without_allocating(unverified, claim,
                                                                                           capsys):
    edit_config(unverified / "maskgit", **claim)
    t0 = time.monotonic()
    with pytest.raises(MaskGITError) as e:
        maskgit.load(unverified)
    assert time.monotonic() - t0 < 10  # it was killed after 120 s at 2.6 GB
    msg = str(e.value)
    assert "\n" not in msg and "model.safetensors" in msg and ("config" in msg or "shape" in msg), msg
    out = unverified.parent / "o.png"
    assert main(["sample", "--model", str(unverified), "--labels", "1", "--steps", "1", "--device", "cpu",
                 "--out", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and not out.exists()


def test_config_with_more_blocks_than_the_file_stops_while_building(unverified, monkeypatch):
    """depth 10**6 is refused in the first blocks: the model is never built (not even on the meta device)."""
    from maskgit.models import transformer
    built = []
    real = transformer.Block.__init__

    def counting(self, *a, **k):
        built.append(1)
        real(self, *a, **k)

    monkeypatch.setattr(transformer.Block, "__init__", counting)
    edit_config(unverified / "maskgit", depth=10 ** 6)
    with pytest.raises(MaskGITError, match="more parameters than the 33 tensors"):
        load_model(unverified / "maskgit")
    assert len(built) <= 3


BAD_FIELDS = [("tokenizer", {"channels": -5}, "channels"), ("tokenizer", {"filters": 0}, "filters"),
              ("tokenizer", {"channel_mult": []}, "channel_mult"),
              ("tokenizer", {"channel_mult": [1, "x"]}, "integers"),
              ("tokenizer", {"num_groups": 3}, "num_groups"), ("tokenizer", {"codebook_size": 1.5}, "codebook_size"),
              ("maskgit", {"heads": 0}, "heads"), ("maskgit", {"heads": 3}, "must divide width"),
              ("maskgit", {"depth": -1}, "depth"), ("maskgit", {"dropout": 1.0}, "dropout"),
              ("maskgit", {"arch": "rnn"}, "arch"), ("maskgit", {"grid_size": 0}, "grid_size")]


@pytest.mark.parametrize("part, change, words", BAD_FIELDS, ids=[f"{p}:{c}" for p, c, _ in BAD_FIELDS])
def test_negative_or_impossible_size_in_config_json_is_one_line_naming_it(unverified, part, change, words):
    edit_config(unverified / part, **change)
    with pytest.raises(MaskGITError) as e:
        maskgit.load(unverified)
    msg = str(e.value)
    assert "\n" not in msg and words in msg and f"{part}/config.json" in msg, msg


def test_model_configs_refuse_impossible_sizes_when_made():
    from maskgit.config import TransformerConfig, VQGANConfig
    from maskgit.models.features import FeatureNetConfig
    for cls, kw in ((VQGANConfig, {"channels": -5}), (VQGANConfig, {"embedding_dim": True}),
                    (TransformerConfig, {"width": 10, "heads": 4}), (TransformerConfig, {"mlp_dim": 0}),
                    (FeatureNetConfig, {"width": 0})):
        with pytest.raises(MaskGITError, match=cls.__name__):
            cls(**kw)


def test_weights_without_a_manifest_load_with_a_note_that_they_are_not_verified(unverified, capsys):
    f = unverified / "maskgit" / "model.safetensors"
    b = bytearray(f.read_bytes())
    b[-3] ^= 0x01  # a flipped bit in the last weight: nothing can tell without a checksum
    f.write_bytes(bytes(b))
    maskgit.load(unverified)
    notes = [line for line in capsys.readouterr().err.splitlines() if "not verified" in line]
    assert len(notes) == 2 and all(MANIFEST in n for n in notes)  # tokenizer and transformer, a line each


def test_weights_without_a_manifest_holding_nan_are_refused(tmp_path):
    _, tr = tiny_models()
    with torch.no_grad():
        tr.head_bias[3] = float("nan")
    save_model(tr, tmp_path / "m")
    (tmp_path / "m" / MANIFEST).unlink()
    with pytest.raises(MaskGITError, match="head_bias holds NaN"):
        load_model(tmp_path / "m")


def test_weights_with_their_manifest_load_without_a_note(tiny_pipeline_dir, capsys):
    maskgit.load(tiny_pipeline_dir)
    assert "not verified" not in capsys.readouterr().err


def test_safetensors_header_is_read_without_the_data(tiny_pipeline_dir):
    shapes = read_header(tiny_pipeline_dir / "maskgit" / "model.safetensors")
    assert shapes["tok_emb.weight"] == (38, 32) and len(shapes) == 33


# ---------------------------------------------------------------- the ONNX model card (defect 10)

def test_model_card_without_sha256_entries_is_one_line_naming_the_graph(tmp_path):
    pytest.importorskip("onnxruntime")
    from maskgit import runtime
    card = {"format": "maskgit-onnx", "format_version": 1, "mask_id": 37, "num_classes": 4, "null_class": True,
            "grid": [8, 8], "files": {"transformer": {"path": "transformer.onnx"}, "decoder": {"path": "d.onnx"}}}
    (tmp_path / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(MaskGITError, match="gives no sha256 for the transformer graph"):
        runtime.load(tmp_path)


# ---------------------------------------------------------------- server: numbers, boxes, uploads

@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    pytest.importorskip("fastapi")
    return maskgit.load(tiny_pipeline_dir)


def make_app(pipe, **config):
    from maskgit.serving.app import ServerConfig, create_app
    return create_app(pipe, "tiny", ServerConfig(**config))


def serve(pipe, scenario, **config):
    """``await scenario(client, app)`` against a fresh app whose worker lives for the scenario."""
    app = make_app(pipe, **config)

    async def run():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
                return await scenario(client, app)

    return asyncio.run(run())


def test_integers_of_4401_digits_are_422_not_500(pipe):
    async def scenario(c, app):
        out = []
        for raw in (f'{{"label": 1, "seed": {LONG_INT}}}', f'{{"labels": [{LONG_INT}]}}', f'{{"steps": -{LONG_INT}}}'):
            out.append(await c.post("/v1/generate", content=raw.encode(), headers={"content-type": "application/json"}))
        out.append(await c.post("/v1/edit", data={"box": "0,0,4,4", "seed": LONG_INT},
                                files={"image": ("x.png", png(IMAGE), "image/png")}))
        return out

    for r in serve(pipe, scenario):
        assert r.status_code == 422 and set(r.json()) == {"error"}, r.text


@pytest.mark.parametrize("box", ["\u00b3,0,4,4", "\u0663,0,4,4", "\uff10,0,4,4", "0,0,4,4\u00b2", "0,0,4,\u0664"])
def test_multipart_box_of_non_ascii_digits_is_422_not_500_or_accepted(pipe, box):
    async def scenario(c, app):
        return await c.post("/v1/edit", data={"box": box}, files={"image": ("x.png", png(IMAGE), "image/png")})

    r = serve(pipe, scenario)
    assert r.status_code == 422 and "ASCII digits" in r.json()["error"], r.text


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _grey_png(w: int, h: int, before_idat: bytes = b"", extra_zeros: int = 0) -> bytes:
    z = zlib.compressobj(9)
    idat = z.compress((b"\0" + bytes(w)) * min(h, 64)) + z.compress(bytes(extra_zeros)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + before_idat
            + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))


def test_hostile_png_uploads_are_refused_from_their_headers_or_bounded(pipe):
    """The report's uploads: a 30000^2 bomb as JSON, multipart and mask; a 6 MB iTXt chunk; zTXt and iCCP bombs;
    64 MB of extra IDAT. Bombs are 400 from the header; none is a 5xx; each is answered within seconds."""
    bomb = _grey_png(30000, 30000)
    good = _grey_png(SIZE, SIZE)
    zeros = zlib.compress(bytes(64 * 2 ** 20), 9)
    cases = [
        ("bomb as JSON", {"json": {"image": b64(bomb), "box": [0, 0, 4, 4]}}, 400),
        ("bomb as multipart", {"data": {"box": "0,0,4,4"}, "files": {"image": ("b.png", bomb, "image/png")}}, 400),
        ("bomb as mask", {"files": {"image": ("i.png", good, "image/png"), "mask": ("m.png", bomb, "image/png")}},
         400),
        ("6 MB iTXt", {"data": {"box": "0,0,4,4", "steps": "1"}, "files": {"image": ("x.png", _grey_png(
            SIZE, SIZE, _chunk(b"iTXt", b"k\0\0\0\0\0" + b"a" * (6 * 2 ** 20))), "image/png")}}, None),
        ("zTXt bomb", {"data": {"box": "0,0,4,4"}, "files": {"image": ("x.png", _grey_png(
            SIZE, SIZE, _chunk(b"zTXt", b"k\0\0" + zeros)), "image/png")}}, 400),
        ("iCCP bomb", {"data": {"box": "0,0,4,4"}, "files": {"image": ("x.png", _grey_png(
            SIZE, SIZE, _chunk(b"iCCP", b"icc\0\0" + zeros)), "image/png")}}, 400),
        ("64 MB extra IDAT", {"data": {"box": "0,0,4,4", "steps": "1"}, "files": {"image": ("x.png", _grey_png(
            SIZE, SIZE, extra_zeros=64 * 2 ** 20), "image/png")}}, None),
    ]

    async def scenario(c, app):
        out = []
        for name, kw, want in cases:
            t0 = time.monotonic()
            r = await c.post("/v1/edit", **kw)
            out.append((name, r, want, time.monotonic() - t0))
        return out

    for name, r, want, seconds in serve(pipe, scenario):
        assert r.status_code < 500 and (want is None or r.status_code == want), (name, r.status_code, r.text)
        assert seconds < 20, (name, seconds)
        if r.status_code == 400:
            assert "readable PNG" in r.json()["error"], (name, r.text)


def test_a_request_body_of_a_mib_or_more_gives_its_memory_back_when_answered(pipe, monkeypatch):
    """glibc keeps freed blocks under tune_malloc's raised thresholds: after a large upload the server trims."""
    import maskgit.inference.malloc
    trims = []
    monkeypatch.setattr(maskgit.inference.malloc, "trim_malloc", lambda: trims.append(1) or True)
    big = _grey_png(SIZE, SIZE, _chunk(b"tEXt", b"k\0" + b"a" * (2 * 2 ** 20)))

    async def scenario(c, app):
        small = await c.post("/v1/edit", data={"box": "0,0,4,4", "steps": "1"},
                             files={"image": ("x.png", png(IMAGE), "image/png")})
        n_small = len(trims)
        large = await c.post("/v1/edit", data={"box": "0,0,4,4", "steps": "1"},
                             files={"image": ("x.png", big, "image/png")})
        return small, n_small, large

    small, n_small, large = serve(pipe, scenario)
    assert small.status_code == 200 and n_small == 0
    assert large.status_code == 200 and len(trims) == 1


def test_trim_malloc_returns_freed_memory_on_glibc():
    import platform

    from maskgit.inference.malloc import trim_malloc
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    assert trim_malloc() is True


def test_docs_page_says_it_needs_the_internet_and_where_the_spec_is(pipe):
    async def scenario(c, app):
        return await c.get("/docs")

    r = serve(pipe, scenario)
    assert r.status_code == 200 and "needs" in r.text and "the internet" in r.text and "/openapi.json" in r.text


# ---------------------------------------------------------------- server: connections and shutdown

def run_app(pipe, scenario, **config):
    app = make_app(pipe, **config)

    async def run():
        async with app.router.lifespan_context(app):
            return await scenario(app)

    return asyncio.run(run())


def test_client_that_closes_mid_body_leaves_no_traceback(pipe, caplog):
    async def scenario(app):
        out = []
        for _ in range(5):
            msgs = [{"type": "http.request", "body": b'{"label": 1, "seed": ', "more_body": True},
                    {"type": "http.disconnect"}]

            async def receive():
                return msgs.pop(0) if msgs else {"type": "http.disconnect"}

            out.append(await asgi_call(app, "/v1/generate", receive))  # raises if the app lets it escape
        return out

    with caplog.at_level(logging.ERROR):
        answers = run_app(pipe, scenario)
    assert all(a == [] or a[0]["status"] == 499 for a in answers), answers
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_body_drip_fed_a_byte_at_a_time_gets_408_at_the_body_timeout(pipe):
    async def scenario(app):
        async def receive():
            await asyncio.sleep(0.05)  # each part well within the timeout, the whole body never
            return {"type": "http.request", "body": b" ", "more_body": True}

        t0 = time.monotonic()
        sent = await asgi_call(app, "/v1/generate", receive)
        return sent, time.monotonic() - t0

    sent, seconds = run_app(pipe, scenario, body_timeout=0.5)
    assert sent[0]["status"] == 408 and b"did not arrive within 0.5 s" in sent[1]["body"]
    assert seconds < 2.0


def test_connection_slow_to_send_its_request_head_is_closed(pipe):
    uvicorn = pytest.importorskip("uvicorn")
    from maskgit.serving.connections import header_timeout_protocol
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = make_app(pipe)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           http=header_timeout_protocol(0.5)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        t0 = time.monotonic()
        while not server.started:
            assert thread.is_alive() and time.monotonic() - t0 < 60
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            t0 = time.monotonic()
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            closed = b""
            for _ in range(20):
                try:
                    conn.sendall(b"X")  # a drip keeps the head arriving, never completing it
                    closed = conn.recv(1, socket.MSG_DONTWAIT)
                    if closed == b"":
                        break
                except BlockingIOError:
                    time.sleep(0.2)
                except (ConnectionResetError, BrokenPipeError):
                    break
            seconds = time.monotonic() - t0
        assert closed == b"" and seconds < 3, (closed, seconds)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200  # others are served
    finally:
        server.should_exit = True
        thread.join(30)


def test_request_whose_decode_runs_past_the_shutdown_deadline_gets_503_in_time(pipe, monkeypatch):
    """SIGTERM under load: a request whose batch is still decoding at the deadline is answered 503 at the deadline
    (not 500 from a cancelled task, and not after the decode)."""
    started, gate = threading.Event(), threading.Event()
    real = pipe.generate

    def slow(*a, **k):
        started.set()
        gate.wait(30)
        return real(*a, **k)

    monkeypatch.setattr(pipe, "generate", slow)

    async def scenario(c, app):
        task = asyncio.create_task(c.post("/v1/generate", json={"label": 1, "steps": 2}))
        while not started.is_set():
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        app.state.batcher.begin_shutdown(0.3)
        r = await task
        seconds = time.monotonic() - t0
        gate.set()
        return r, seconds

    r, seconds = serve(pipe, scenario)
    assert r.status_code == 503 and "shut down" in r.json()["error"] and r.headers["Retry-After"]
    assert seconds < 1.5


# ---------------------------------------------------------------- image folders: silent where a word is due

def _img(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)


def _load(root):
    import warnings

    from maskgit.data.imagefiles import ImageFolderDataset
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ImageFolderDataset(root, image_size=8)
    return ds, [str(w.message) for w in caught]


def test_imagefolder_empty_class_folder_is_a_warning_naming_it(tmp_path):
    _img(tmp_path / "cat/a.png")
    (tmp_path / "dog").mkdir()
    _img(tmp_path / "fox/b.png")
    ds, warned = _load(tmp_path)
    assert ds.classes == ["cat", "dog", "fox"] and ds.targets == [0, 2]
    assert len(warned) == 1 and "dog (label 1)" in warned[0] and "no readable images" in warned[0]


def test_imagefolder_folder_named_like_an_image_is_a_warning(tmp_path):
    _img(tmp_path / "cat/a.png")
    _img(tmp_path / "cat/x.png/inner.png")
    ds, warned = _load(tmp_path)
    assert len(ds) == 2  # what is inside it is still read
    assert len(warned) == 1 and "named like an image" in warned[0] and "x.png" in warned[0]


def test_imagefolder_symlink_loops_are_a_warning_and_never_followed(tmp_path):
    _img(tmp_path / "cat/a.png")
    os.symlink("l2.png", tmp_path / "cat/l1.png")
    os.symlink("l1.png", tmp_path / "cat/l2.png")
    os.symlink("..", tmp_path / "cat/up")  # a folder loop
    ds, warned = _load(tmp_path)
    assert len(ds) == 1 and len(warned) == 2
    assert any("2 symlink(s) that loop or point nowhere" in w and "l1.png" in w for w in warned), warned
    assert any("symlinked folder(s)" in w and "not followed" in w and "up" in w for w in warned), warned


def test_imagefolder_non_utf8_file_names_are_read_with_a_warning(tmp_path):
    _img(tmp_path / "cat/a.png")
    raw = os.fsencode(tmp_path / "cat") + b"/\xff\xfe.png"
    shutil.copy(os.fsencode(tmp_path / "cat/a.png"), raw)
    ds, warned = _load(tmp_path)
    assert len(ds) == 2 and len(warned) == 1
    assert "not valid UTF-8" in warned[0] and "\\xff\\xfe.png" in warned[0]
    warned[0].encode("utf-8")  # printable


def test_imagefolder_class_folder_whose_name_is_not_utf8_is_an_error(tmp_path):
    _img(tmp_path / "cat/a.png")
    os.mkdir(os.fsencode(tmp_path) + b"/\xffdog")
    _img(tmp_path / "cat/b.png")
    shutil.copy(os.fsencode(tmp_path / "cat/a.png"), os.fsencode(tmp_path) + b"/\xffdog/c.png")
    with pytest.raises(MaskGITError, match=r"class folder .*\\xffdog has a name that is not valid UTF-8") as e:
        _load(tmp_path)
    str(e.value).encode("utf-8")


def test_imagefolder_of_plain_files_has_no_warning(tmp_path):
    _img(tmp_path / "cat/a.png")
    _img(tmp_path / "dog/b.jpg")
    ds, warned = _load(tmp_path)
    assert len(ds) == 2 and not warned
