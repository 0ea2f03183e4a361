"""The HTTP API in process (httpx + ASGI, the app's lifespan run by hand) against the tiny random pipeline."""

import asyncio
import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from conftest import b64, png, wait_until_healthy
from PIL import Image

import maskgit
from maskgit.errors import MaskGITError
from maskgit.serving.app import ServerConfig, create_app, require_server
from maskgit.serving.batching import Batcher, Job

SIZE = 16  # the tiny pipeline: 16x16 grey images, 8x8 tokens, classes 0..3 and a null class


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    return maskgit.load(tiny_pipeline_dir)


def serve(pipe, scenario, raise_app_exceptions=True, **config):
    """Run ``await scenario(client, app)`` against a fresh app whose worker lives for the scenario."""
    app = create_app(pipe, "tiny", ServerConfig(**config))

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
                return await scenario(client, app)

    return asyncio.run(main())


def image_of(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


async def wait_queued(app, n: int, timeout: float = 10.0) -> None:
    t0 = time.monotonic()
    while app.state.batcher.queued() < n:
        assert time.monotonic() - t0 < timeout, f"only {app.state.batcher.queued()} of {n} requests queued"
        await asyncio.sleep(0.005)


IMAGE = (np.arange(SIZE * SIZE).reshape(SIZE, SIZE) % 256).astype(np.uint8)
MASK = np.zeros((SIZE, SIZE), np.uint8)
MASK[4:8, 4:10] = 255


# ---------------------------------------------------------------- endpoints

def test_models_health_stats_page_docs(pipe):
    async def scenario(c, app):
        return [await c.get(p) for p in ("/v1/models", "/healthz", "/v1/stats", "/", "/openapi.json", "/docs",
                                         "/nope")]

    models, health, stats, page, spec, docs, missing = serve(pipe, scenario)
    m = models.json()["models"][0]
    assert (m["name"], m["conditioning"], m["num_classes"], m["classes"]) == ("tiny", "class", 4, ["a", "b", "c", "d"])
    assert (m["grid"], m["image_size"], m["channels"], m["unconditional"]) == ([8, 8], SIZE, 1, True)
    assert m["limits"]["max_steps"] == 64 and "cosine" in m["schedules"]
    assert health.json()["status"] == "ok"
    assert stats.json()["requests"] == 0 and stats.json()["mean_batch_size"] == 0
    assert page.status_code == 200 and "<canvas" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN, fonts or other fetches
    assert {"/v1/generate", "/v1/edit", "/v1/models"} <= set(spec.json()["paths"])
    assert docs.status_code == 200
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}


def test_generate_json_png_and_steps(pipe):
    async def scenario(c, app):
        return (await c.post("/v1/generate", json={"label": 2, "num": 3, "steps": 3}),
                await c.post("/v1/generate", json={"labels": [0, 1], "num": 2, "steps": 2}),
                await c.post("/v1/generate", json={"steps": 2}),
                await c.post("/v1/generate", json={"label": 1, "steps": 2}, headers={"Accept": "image/png"}),
                await c.post("/v1/generate", json={"num": 2}, headers={"Accept": "image/png"}),
                await c.post("/v1/generate", json={"label": 0, "steps": 4, "return_steps": True}))

    one, many, uncond, as_png, png_many, steps = serve(pipe, scenario)
    j = one.json()
    assert one.status_code == 200 and j["labels"] == [2, 2, 2] and j["label_names"] == ["c"] * 3
    assert len(j["images"]) == 3 and image_of(j["images"][0]).shape == (SIZE, SIZE) and j["seconds"] > 0
    assert many.json()["labels"] == [0, 0, 1, 1] and len(many.json()["images"]) == 4
    assert uncond.json()["labels"] == [-1]
    assert as_png.headers["content-type"] == "image/png" and as_png.content.startswith(b"\x89PNG")
    assert png_many.status_code == 406 and "exactly one image" in png_many.json()["error"]
    s = steps.json()["steps"]
    assert len(s) == 1 and len(s[0]) == 4  # one frame per decoding step
    assert np.array_equal(image_of(s[0][-1]), image_of(steps.json()["images"][0]))


def test_generate_alone_equals_library_call(pipe):
    body = {"labels": [1, 3], "seed": 1234, "steps": 3, "temperature": 1.5, "cfg": 1.0, "exact": True}

    async def scenario(c, app):
        return [await c.post("/v1/generate", json=body) for _ in range(2)]

    first, again = serve(pipe, scenario)
    expected = pipe.generate(labels=[1, 3], seed=1234, steps=3, temperature=1.5, cfg=1.0, output="np")[..., 0]
    got = np.stack([image_of(t) for t in first.json()["images"]])
    assert np.array_equal(got, expected)
    assert first.json()["images"] == again.json()["images"]


@pytest.mark.parametrize("body, status, message", [
    ({"label": 4}, 422, "out of range"),
    ({"labels": [0, -2]}, 422, "out of range"),
    ({"steps": 0}, 422, "steps"),
    ({"steps": 65}, 422, "limit of 64"),
    ({"num": 65}, 422, "limit is 64"),
    ({"labels": [0, 1], "num": 33}, 422, "66 images"),
    ({"num": 0}, 422, "num"),
    ({"schedule": "zigzag"}, 422, "unknown mask schedule"),
    ({"temperature": -1}, 422, "temperature"),
    ({"top_p": 0}, 422, "top_p"),
    ({"cfg_schedule": "wavy"}, 422, "cfg_schedule"),
    ({"seed": -1}, 422, "seed"),
    ({"label": "three"}, 422, "label"),
    ({"label": 1, "labels": [1]}, 422, "one of label, labels or prompt"),
    ({"labels": []}, 422, "empty"),
    ({"prompt": "a red dress"}, 422, "class-conditional"),
    ({"colour": "red"}, 422, "colour"),
])
def test_generate_bad_input(pipe, body, status, message):
    async def scenario(c, app):
        return await c.post("/v1/generate", json=body)

    r = serve(pipe, scenario)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and message in r.json()["error"]


def test_malformed_and_oversized_bodies(pipe):
    async def chunks():
        for _ in range(64):
            yield b" " * 1024

    async def scenario(c, app):
        return (await c.post("/v1/generate", content=b"{not json", headers={"content-type": "application/json"}),
                await c.post("/v1/generate", content=b'{"label": 1, "pad": "' + b"x" * 80_000 + b'"}',
                             headers={"content-type": "application/json"}),
                await c.post("/v1/generate", content=chunks(), headers={"content-type": "application/json"}),
                await c.post("/v1/edit", content=b"[1, 2]", headers={"content-type": "application/json"}),
                await c.post("/v1/edit", content=b"{oops", headers={"content-type": "application/json"}),
                await c.post("/v1/edit", content=b"hello", headers={"content-type": "text/plain"}))

    bad_json, too_big, streamed, not_object, edit_bad_json, wrong_type = serve(pipe, scenario, max_body_mb=0.05)
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["error"]
    assert too_big.status_code == 413 and "limit of 0.05 MB" in too_big.json()["error"]
    assert streamed.status_code == 413  # no Content-Length: counted while reading
    assert not_object.status_code == 422 and "JSON object" in not_object.json()["error"]
    assert edit_bad_json.status_code == 400 and "not valid JSON" in edit_bad_json.json()["error"]
    assert wrong_type.status_code == 415 and "multipart/form-data" in wrong_type.json()["error"]


def conditioned_pipeline(**changes):
    """The tiny models with a changed transformer config (e.g. no null class, text conditioning)."""
    import dataclasses

    from conftest import tiny_models

    from maskgit.models.transformer import MaskGITTransformer
    from maskgit.pipeline import Pipeline
    tok, tr = tiny_models()
    return Pipeline(tok, MaskGITTransformer(dataclasses.replace(tr.config, **changes)).eval())


def test_conditioning_errors():
    async def scenario(c, app):
        return [await c.post("/v1/generate", json=b) for b in ({"steps": 2}, {"label": 1, "cfg": 2, "steps": 2},
                                                                {"label": 1, "steps": 2})]

    no_label, cfg, ok = serve(conditioned_pipeline(null_class=False), scenario)
    assert no_label.status_code == 422 and "label: this model has no 'no class' id" in no_label.json()["error"]
    assert cfg.status_code == 422 and "CFG" in cfg.json()["error"]
    assert ok.status_code == 200

    async def prompt(c, app):
        return [await c.post("/v1/generate", json=b) for b in ({"prompt": "a"}, {"negative_prompt": "a"})]

    for r in serve(conditioned_pipeline(), prompt):  # a class model takes no text
        assert r.status_code == 422 and "not text-conditioned" in r.json()["error"]


# ---------------------------------------------------------------- text-conditioned models

@pytest.fixture(scope="module")
def text_pipe():
    from test_text import HashEncoder, text_model

    from maskgit.pipeline import Pipeline
    tok, tr = text_model()
    return Pipeline(tok, tr, text_encoder=HashEncoder())


def test_text_model_generates_from_prompts_like_the_library(text_pipe):
    async def scenario(c, app):
        model = (await c.get("/v1/models")).json()["models"][0]
        a = await c.post("/v1/generate", json={"prompt": "a red circle", "seed": 3, "steps": 3, "cfg": 2.0})
        neg = await c.post("/v1/generate", json={"prompt": "a red circle", "negative_prompt": "blue",
                                                 "seed": 3, "steps": 3, "cfg": 2.0})
        empty = await c.post("/v1/generate", json={"num": 2, "seed": 1, "steps": 3})
        return model, a, neg, empty

    model, a, neg, empty = serve(text_pipe, scenario)
    assert model["conditioning"] == "text" and model["cfg"] and model["text_encoder"] == "hash"
    kw = dict(seed=3, steps=3, cfg=2.0, output="np")
    for r, expect in ((a, text_pipe.generate(prompts=["a red circle"], **kw)),
                      (neg, text_pipe.generate(prompts=["a red circle"], negative_prompts="blue", **kw)),
                      (empty, text_pipe.generate(prompts=["", ""], seed=1, steps=3, output="np"))):
        assert r.status_code == 200, r.text
        got = np.stack([image_of(x) for x in r.json()["images"]])
        assert np.array_equal(got, expect.reshape(got.shape))
    assert a.json()["prompt"] == "a red circle" and empty.json()["prompt"] == ""
    assert not np.array_equal(image_of(a.json()["images"][0]), image_of(neg.json()["images"][0]))


def test_text_requests_with_different_prompts_share_a_batch(text_pipe):
    async def scenario(c, app):
        app.state.batcher.hold()
        bodies = [{"prompt": p, "seed": i, "steps": 2} for i, p in enumerate(["a", "b b", "", "c"])]
        bodies[1]["negative_prompt"] = "d"
        tasks = [asyncio.create_task(c.post("/v1/generate", json=b)) for b in bodies]
        await wait_queued(app, 4)
        app.state.batcher.release()
        return await asyncio.gather(*tasks), (await c.get("/v1/stats")).json()

    answers, stats = serve(text_pipe, scenario, max_wait_ms=0)
    assert [r.status_code for r in answers] == [200] * 4
    assert stats["batches"] == 1 and stats["requests"] == 4
    # the shared decode equals the library call with the same rows, each row drawing from its request's seed
    import torch

    from maskgit.sampling.noise import RowGenerators
    expect = text_pipe.generate(prompts=["a", "b b", "", "c"], negative_prompts=["", "d", "", ""], seed=None,
                                generator=RowGenerators([(torch.Generator().manual_seed(i), 1) for i in range(4)]),
                                steps=2, output="np")
    got = np.stack([image_of(r.json()["images"][0]) for r in answers])
    assert np.array_equal(got, expect.reshape(got.shape))


@pytest.mark.parametrize("body,status,words", [
    ({"label": 1}, 422, "text-conditioned"),
    ({"labels": [0]}, 422, "text-conditioned"),
    ({"prompt": "x" * 1001}, 422, "limit is 1000"),
    ({"negative_prompt": "y" * 2000, "prompt": "a"}, 422, "negative_prompt has 2000"),
    ({"prompt": 5}, 422, "prompt"),
])
def test_text_model_rejects_bad_requests(text_pipe, body, status, words):
    async def scenario(c, app):
        return await c.post("/v1/generate", json=body)

    r = serve(text_pipe, scenario)
    assert r.status_code == status and words in r.json()["error"], r.text


def test_text_model_inpaints_and_outpaints_with_a_prompt(text_pipe):
    img = np.zeros((SIZE, SIZE), np.uint8)

    async def scenario(c, app):
        inp = await c.post("/v1/edit", json={"image": b64(png(img)), "box": [0, 0, 8, 8], "prompt": "a",
                                             "seed": 2, "steps": 2})
        out = await c.post("/v1/edit", json={"image": b64(png(img)), "side": "left", "tokens": 2,
                                             "prompt": "b", "seed": 2, "steps": 2})
        cls_edit = await c.post("/v1/edit", json={"image": b64(png(img)), "mode": "edit", "box": [0, 0, 8, 8],
                                                  "label": 1})
        return inp, out, cls_edit

    inp, out, cls_edit = serve(text_pipe, scenario)
    assert inp.status_code == 200, inp.text
    expect = text_pipe.inpaint(img, box=[0, 0, 8, 8], prompt="a", seed=2, steps=2, output="np")
    assert np.array_equal(image_of(inp.json()["images"][0]), expect.reshape(SIZE, SIZE))
    assert out.status_code == 200, out.text
    assert cls_edit.status_code == 422 and "text-conditioned" in cls_edit.json()["error"]


def test_server_config_is_checked():
    with pytest.raises(MaskGITError, match="positive"):
        ServerConfig(queue_size=0)


# ---------------------------------------------------------------- editing

def test_edit_modes_json_and_multipart(pipe):
    img, mask = png(IMAGE), png(MASK)

    async def scenario(c, app):
        return (await c.post("/v1/edit", json={"image": b64(img), "mask": b64(mask), "steps": 3, "seed": 5}),
                await c.post("/v1/edit", json={"image": "data:image/png;base64," + b64(img), "box": [0, 0, 4, 4],
                                               "label": 1, "steps": 2}),
                await c.post("/v1/edit", json={"image": b64(img), "side": "right", "tokens": 2, "steps": 2}),
                await c.post("/v1/edit", json={"image": b64(img), "mode": "edit", "box": [2, 2, 8, 8], "label": 3,
                                               "steps": 4}),
                await c.post("/v1/edit", files={"image": ("a.png", img, "image/png"),
                                                "mask": ("m.png", mask, "image/png")},
                             data={"steps": "3", "seed": "5"}),
                await c.post("/v1/edit", files={"image": ("a.png", img, "image/png")},
                             data={"box": "0,0,4,4", "steps": "2"}, headers={"Accept": "image/png"}))

    inpaint, box, outpaint, class_edit, multipart, as_png = serve(pipe, scenario)
    for r, mode in ((inpaint, "inpaint"), (box, "inpaint"), (outpaint, "outpaint"), (class_edit, "edit")):
        assert r.status_code == 200 and r.json()["mode"] == mode, r.text
    out = image_of(inpaint.json()["images"][0])
    assert out.shape == (SIZE, SIZE)
    untouched = np.ones((SIZE, SIZE), bool)
    untouched[:12, :14] = False  # the masked 2x2-pixel token cells plus the 2 px feather around them
    assert np.array_equal(out[untouched], IMAGE[untouched])
    assert image_of(outpaint.json()["images"][0]).shape == (SIZE, SIZE + 4)  # 2 tokens of 2 px
    assert multipart.json()["images"] == inpaint.json()["images"]  # same input, same seed
    assert as_png.headers["content-type"] == "image/png"
    expected = pipe.inpaint(IMAGE, mask=MASK > 127, steps=3, seed=5, output="np")[..., 0]
    assert np.array_equal(out, expected)


@pytest.mark.parametrize("fields, status, message", [
    ({"image": "not base64!"}, 400, "not valid base64"),
    ({"image": b64(b"GIF89a....")}, 400, "not a PNG"),
    ({"image": b64(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)}, 400, "not a readable PNG"),
    ({"image": b64(png(np.zeros((20, 16), np.uint8)))}, 422, "16x20"),
    ({"mask": b64(png(np.full((8, 8), 255, np.uint8)))}, 422, "mask is 8x8"),
    ({"mask": b64(png(np.zeros((SIZE, SIZE), np.uint8)))}, 422, "mask is empty"),
    ({"mask": "%%%"}, 400, "mask is not valid base64"),
    ({}, 422, "exactly one of mask"),
    ({"mask": b64(png(MASK)), "box": [0, 0, 4, 4]}, 422, "exactly one of mask"),
    ({"box": [0, 0, 40, 4]}, 422, "inside the 16x16 image"),
    ({"box": [0, 0, 4]}, 422, "box"),
    ({"box": [0, 0, 4, 4], "label": 9}, 422, "out of range"),
    ({"side": "right"}, 422, "side"),
    ({"side": "up", "tokens": 1}, 422, "side"),
    ({"side": "left", "tokens": 8}, 422, "below the grid size"),
    ({"mode": "edit", "box": [0, 0, 4, 4]}, 422, "needs box"),
    ({"mode": "edit", "box": [0, 0, 4, 4], "label": 1, "steps": 4, "start_step": 4}, 422, "start_step"),
    ({"mode": "paint", "box": [0, 0, 4, 4]}, 422, "mode"),
    ({"box": [0, 0, 4, 4], "steps": 99}, 422, "limit of 64"),
])
def test_edit_bad_input(pipe, fields, status, message):
    body = {"image": b64(png(IMAGE)), **fields}

    async def scenario(c, app):
        return await c.post("/v1/edit", json=body)

    r = serve(pipe, scenario)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and message in r.json()["error"], r.json()


def test_edit_multipart_bad_input(pipe):
    async def scenario(c, app):
        return (await c.post("/v1/edit", files={"mask": ("m.png", png(MASK), "image/png")}, data={"steps": "2"}),
                await c.post("/v1/edit", files={"image": ("a.png", png(IMAGE), "image/png")}, data={"box": "a,b"}),
                await c.post("/v1/edit", files={"image": ("a.jpg", b"\xff\xd8\xff", "image/jpeg")},
                             data={"box": "0,0,4,4"}))

    no_image, bad_box, jpeg = serve(pipe, scenario)
    assert no_image.status_code == 422 and "file field named image" in no_image.json()["error"]
    assert bad_box.status_code == 422 and "box" in bad_box.json()["error"]
    assert jpeg.status_code == 400 and "not a PNG" in jpeg.json()["error"]


# ---------------------------------------------------------------- queueing and batching

def test_queue_full_answers_503_with_retry_after(pipe):
    async def scenario(c, app):
        app.state.batcher.hold()
        waiting = [asyncio.create_task(c.post("/v1/generate", json={"seed": i, "steps": 2})) for i in range(2)]
        await wait_queued(app, 2)
        refused = await c.post("/v1/generate", json={"steps": 2})
        refused_edit = await c.post("/v1/edit", json={"image": b64(png(IMAGE)), "box": [0, 0, 4, 4]})
        app.state.batcher.release()
        return refused, refused_edit, await asyncio.gather(*waiting), (await c.get("/v1/stats")).json()

    refused, refused_edit, answered, stats = serve(pipe, scenario, queue_size=2)
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
    assert "queue is full" in refused.json()["error"]
    assert refused_edit.status_code == 503
    assert [r.status_code for r in answered] == [200, 200]
    assert stats["rejected"] == 2 and stats["requests"] == 2


def test_concurrent_requests_are_batched_by_settings(pipe):
    async def scenario(c, app):
        app.state.batcher.hold()
        bodies = [{"label": i % 4, "seed": i, "steps": 2 if i % 3 else 3} for i in range(12)]
        tasks = [asyncio.create_task(c.post("/v1/generate", json=b)) for b in bodies]
        await wait_queued(app, 12)
        app.state.batcher.release()
        return await asyncio.gather(*tasks), (await c.get("/v1/stats")).json()

    answers, stats = serve(pipe, scenario, max_wait_ms=0)
    assert all(r.status_code == 200 for r in answers)
    assert stats["batches"] == 2  # one decode per settings group (steps 2 and steps 3)
    assert stats["requests"] == 12 and stats["mean_batch_size"] == 6
    assert {r.json()["batch"]["requests"] for r in answers} == {4, 8}


def test_a_batched_request_gets_the_images_of_its_own_seed(pipe):
    """Requests that share a decode each draw their noise from their own seed, so each gets what the library call
    with its seed gives (up to the float rounding of a larger matmul: here at most 1/255 per pixel)."""
    bodies = [{"labels": [i % 4] * (1 + i % 2), "seed": 100 + i, "steps": 3, "temperature": 2.0} for i in range(5)]

    async def scenario(c, app):
        app.state.batcher.hold()
        tasks = [asyncio.create_task(c.post("/v1/generate", json=b)) for b in bodies]
        await wait_queued(app, len(bodies))
        app.state.batcher.release()
        return await asyncio.gather(*tasks)

    answers = serve(pipe, scenario, max_wait_ms=0)
    assert {r.json()["batch"]["requests"] for r in answers} == {5}
    for body, r in zip(bodies, answers):
        got = np.stack([image_of(t) for t in r.json()["images"]]).astype(int)
        alone = pipe.generate(labels=body["labels"], seed=body["seed"], steps=3, temperature=2.0, output="np")
        assert np.abs(got - alone[..., 0].astype(int)).max() <= 1, body


def test_max_batch_splits_and_exact_requests_run_alone(pipe):
    async def scenario(c, app):
        app.state.batcher.hold()
        bodies = [{"seed": i, "num": 2, "steps": 2} for i in range(5)] + [{"seed": 9, "steps": 2, "exact": True}]
        tasks = [asyncio.create_task(c.post("/v1/generate", json=b)) for b in bodies]
        await wait_queued(app, 6)
        app.state.batcher.release()
        return await asyncio.gather(*tasks), (await c.get("/v1/stats")).json()

    answers, stats = serve(pipe, scenario, max_batch=4, max_wait_ms=0)
    assert [r.json()["batch"]["images"] for r in answers] == [4, 4, 4, 4, 2, 1]
    assert stats["batches"] == 4


def test_fifty_concurrent_requests_each_answered_once(pipe):
    n = 50

    async def scenario(c, app):
        bodies = [{"labels": [i % 4], "num": 1 + i % 3, "seed": 1000 + i, "steps": 2 + i % 2} for i in range(n)]
        answers = await asyncio.gather(*(c.post("/v1/generate", json=b) for b in bodies))
        return bodies, answers, (await c.get("/v1/stats")).json()

    bodies, answers, stats = serve(pipe, scenario, max_batch=16, max_wait_ms=20)
    for body, r in zip(bodies, answers):
        assert r.status_code == 200, r.text
        j = r.json()
        assert j["seed"] == body["seed"] and j["labels"] == body["labels"] * body["num"]
        assert len(j["images"]) == body["num"]
    assert stats["requests"] == n and stats["images"] == sum(b["num"] for b in bodies)
    assert stats["mean_batch_size"] > 1 and stats["queued"] == 0 and stats["errors"] == 0


def test_shutdown_drains_accepted_requests(pipe):
    app = create_app(pipe, "tiny", ServerConfig(max_batch=2, max_wait_ms=0))

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as c:
            lifespan = app.router.lifespan_context(app)
            await lifespan.__aenter__()
            app.state.batcher.hold()
            tasks = [asyncio.create_task(c.post("/v1/generate", json={"seed": i, "steps": 2})) for i in range(7)]
            await wait_queued(app, 7)
            await lifespan.__aexit__(None, None, None)  # shutdown: refuse new work, finish the queue
            late = await c.post("/v1/generate", json={"steps": 2})
            return await asyncio.gather(*tasks), late

    answers, late = asyncio.run(main())
    assert [r.status_code for r in answers] == [200] * 7
    assert late.status_code == 503 and "shutting down" in late.json()["error"]
    assert app.state.batcher.snapshot()["requests"] == 7


def test_batcher_survives_failures_and_skips_cancelled(pipe):
    b = Batcher(pipe, max_batch=8, max_wait_s=0, queue_size=8)
    b.hold()
    b.start()

    def boom():
        raise RuntimeError("bug")

    failing = b.submit(Job(fn=boom, shared=False))
    cancelled = b.submit(Job(fn=lambda: 1, shared=False))
    ok = b.submit(Job(fn=lambda: 2, shared=False))
    assert cancelled.cancel()
    b.close(timeout=30)
    assert isinstance(failing.exception(), RuntimeError) and ok.result() == 2
    assert b.snapshot()["edits"] == 1 and b.snapshot()["errors"] == 1


def test_a_bug_is_a_json_500_and_the_worker_lives_on(pipe, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    async def scenario(c, app):
        monkeypatch.setattr(pipe, "generate", broken)
        failed = await c.post("/v1/generate", json={"steps": 2})
        monkeypatch.undo()
        return failed, await c.post("/v1/generate", json={"steps": 2})

    failed, after = serve(pipe, scenario, raise_app_exceptions=False)
    assert failed.status_code == 500 and "RuntimeError" in failed.json()["error"]
    assert after.status_code == 200


def test_missing_extra_names_the_install_line(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    with pytest.raises(MaskGITError, match=r"pip install maskgit-suite\[server\]"):
        require_server()


# ---------------------------------------------------------------- the real thing

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_cli_serve_finishes_accepted_requests_on_sigint(tiny_pipeline_dir):
    """`maskgit serve` for real: requests that are queued when SIGINT arrives are still answered."""
    pytest.importorskip("uvicorn")
    import threading
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "maskgit", "serve", "--model", str(tiny_pipeline_dir),
                             "--port", str(port), "--device", "cpu", "--log-level", "warning",
                             "--max-wait-ms", "3000"],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url)
        answers = {}

        def ask(i):
            answers[i] = httpx.post(url + "/v1/generate", json={"label": i % 4, "seed": i, "steps": 2},
                                    headers={"Accept": "image/png"}, timeout=60)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        while httpx.get(url + "/healthz", timeout=5).json()["queued"] < 6:  # held back by --max-wait-ms
            assert time.monotonic() - t0 < 2.5, "the requests did not arrive together"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        for t in threads:
            t.join(60)
        assert proc.wait(timeout=60) == 0
        assert sorted(answers) == list(range(6))
        assert all(r.status_code == 200 and r.content.startswith(b"\x89PNG") for r in answers.values())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_worker_thread_is_joined(pipe):
    """The worker thread is joined on shutdown (no thread keeps the process alive)."""
    import threading

    async def scenario(c, app):
        await c.post("/v1/generate", json={"steps": 1})
        return app.state.batcher

    batcher = serve(pipe, scenario)
    assert not batcher.alive
    assert "maskgit-worker" not in [t.name for t in threading.enumerate()]
