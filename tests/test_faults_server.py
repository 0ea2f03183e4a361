"""The server under hostile and careless requests: every bad input is a 4xx before any work, property-based
fuzzing of the JSON and multipart schemas never gets a 5xx, abandoned requests are never decoded, stalled uploads
time out, and a shutdown with a stalled upload and requests in flight exits after its deadline."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
hypothesis = pytest.importorskip("hypothesis")
from conftest import asgi_call, b64, png, wait_until_healthy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

import maskgit
from maskgit.serving.app import ServerConfig, create_app
from maskgit.serving.batching import APIError, Batcher, Job

SIZE = 16  # the tiny pipeline: 16x16 grey images, 8x8 tokens, classes 0..3 and a null class


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    return maskgit.load(tiny_pipeline_dir)


@pytest.fixture(scope="module")
def client(pipe):
    """One live app (small limits, so fuzzed valid requests stay cheap) shared by the fuzzing tests."""
    app = create_app(pipe, "tiny", ServerConfig(max_num=4, max_steps=3, max_body_mb=0.5))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


IMAGE = (np.arange(SIZE * SIZE).reshape(SIZE, SIZE) % 256).astype(np.uint8)
MASK = np.zeros((SIZE, SIZE), np.uint8)
MASK[4:8, 4:10] = 255


def post_json(client, path: str, body) -> httpx.Response:
    """Post ``body`` as JSON as a careless client writes it (NaN and Infinity included)."""
    raw = body if isinstance(body, bytes) else json.dumps(body, allow_nan=True).encode()
    return client.post(path, content=raw, headers={"content-type": "application/json"})


def assert_healthy(client) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"


# ---------------------------------------------------------------- every input of the report

HUGE = 10 ** 30
BAD_GENERATE = [
    ({"label": 1, "num": 400_000_000}, "limit is 4"),
    ({"label": 1, "num": HUGE}, "num"),
    ({"label": 9223372036854775808}, "label"),
    ({"labels": [9223372036854775808]}, "labels"),
    ({"label": 4}, "out of range"),
    ({"labels": [0, -2]}, "labels.1"),
    ({"label": "7"}, "label"),
    ({"label": True}, "label"),
    ({"num": 1.5}, "num"),
    ({"num": "2"}, "num"),
    ({"seed": HUGE}, "seed"),
    ({"steps": HUGE}, "steps"),
    ({"top_k": HUGE}, "top_k"),
    ({"cfg": float("nan")}, "cfg"),
    ({"cfg": float("inf")}, "cfg"),
    ({"cfg": -1e308}, "cfg"),
    ({"temperature": float("inf")}, "temperature"),
    ({"choice_temperature": float("inf")}, "choice_temperature"),
    ({"choice_temperature": float("-inf")}, "choice_temperature"),
    ({"top_p": float("nan")}, "top_p"),
    ({"return_steps": "yes"}, "return_steps"),
    ({"schedule": 3}, "schedule"),
]


@pytest.mark.parametrize("body, words", BAD_GENERATE, ids=[str(b)[:40] for b, _ in BAD_GENERATE])
def test_bad_generate_field_is_422_naming_it(client, body, words):
    r = post_json(client, "/v1/generate", body)
    assert r.status_code == 422, r.text
    assert set(r.json()) == {"error"} and words in r.json()["error"]
    assert_healthy(client)


BAD_EDIT = [
    ({"box": [0, 0, 4, 4], "label": 9223372036854775808}, "label"),
    ({"box": [0, 0, 4, HUGE]}, "inside"),
    ({"box": [0, 0, 4, "4"]}, "box"),
    ({"box": [0, 0, 4, 4], "cfg": float("nan")}, "cfg"),
    ({"box": [0, 0, 4, 4], "dilate": True}, "dilate"),
    ({"side": "left", "tokens": HUGE}, "tokens"),
    ({"mode": "edit", "box": [0, 0, 4, 4], "label": 1, "start_step": HUGE}, "start_step"),
]


@pytest.mark.parametrize("fields, words", BAD_EDIT, ids=[str(b)[:40] for b, _ in BAD_EDIT])
def test_bad_edit_field_is_422_naming_it(client, fields, words):
    r = post_json(client, "/v1/edit", {"image": b64(png(IMAGE)), **fields})
    assert r.status_code == 422, r.text
    assert words in r.json()["error"]


@pytest.mark.parametrize("path", ["/v1/generate", "/v1/edit"])
def test_json_nested_100k_deep_is_400_not_a_recursion_error(client, path):
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"label": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"):
        r = post_json(client, path, body)
        assert r.status_code == 400 and "nests deeper" in r.json()["error"], r.text
    assert_healthy(client)


def test_num_400_million_is_refused_without_building_a_list(client):
    tracemalloc.start()
    try:
        r = post_json(client, "/v1/generate", {"label": 1, "num": 400_000_000})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert r.status_code == 422 and "400000000 images asked for" in r.json()["error"]
    assert peak < 20 * 2 ** 20, f"{peak / 2 ** 20:.0f} MB allocated to refuse one request"


def test_bad_content_length_is_400(client):
    r = client.post("/v1/generate", content=b"{}", headers={"content-type": "application/json",
                                                            "content-length": "1e9"})
    assert r.status_code in (400, 413)  # the HTTP layer or the server: never a 5xx


# ---------------------------------------------------------------- fuzzing (hypothesis)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8)
small_ints = st.integers(-2, 5) | st.sampled_from([2 ** 31, 2 ** 63 - 1, 2 ** 63, -(2 ** 63) - 1, HUGE])
numbers = st.floats() | small_ints
sample_fields = {
    "steps": small_ints | json_values, "schedule": st.sampled_from(["cosine", "linear", "zig"]) | json_values,
    "temperature": numbers | json_values, "top_k": small_ints, "top_p": numbers,
    "choice_temperature": numbers, "cfg": numbers | json_values,
    "cfg_schedule": st.sampled_from(["constant", "linear", "wavy"]) | json_values, "seed": small_ints | json_values,
}
generate_bodies = st.fixed_dictionaries({}, optional={
    **sample_fields, "label": small_ints | json_values, "labels": st.lists(small_ints, max_size=3) | json_values,
    "num": small_ints | json_values, "prompt": json_values, "return_steps": st.booleans() | json_values,
    "exact": st.booleans() | json_values, "extra": json_values,
})
images = st.sampled_from([b64(png(IMAGE)), b64(png(MASK)), b64(png(np.zeros((8, 8), np.uint8))), "%%",
                          b64(b"\x89PNG\r\n\x1a\n" + b"\0" * 30), ""])
edit_bodies = st.fixed_dictionaries({"image": images | json_values}, optional={
    **sample_fields, "mode": st.sampled_from(["inpaint", "outpaint", "edit", "x"]) | json_values,
    "mask": images | json_values, "box": st.lists(small_ints, min_size=3, max_size=5) | json_values,
    "label": small_ints | json_values, "side": st.sampled_from(["left", "up"]) | json_values,
    "tokens": small_ints | json_values, "start_step": small_ints | json_values,
    "dilate": small_ints | json_values, "feather": small_ints | json_values,
})
form_text = st.text(max_size=12) | small_ints.map(str) | st.floats().map(str) | st.sampled_from(
    ["nan", "inf", "-inf", "true", "1e400", "0,0,4,4", "[0, 0, 4, 4]", "1,2", "cosine", "right"])
form_fields = st.dictionaries(st.sampled_from([*sample_fields, "mode", "box", "label", "side", "tokens",
                                               "start_step", "dilate", "feather", "bogus"]), form_text, max_size=6)
form_files = st.dictionaries(st.sampled_from(["image", "mask", "other"]),
                             st.sampled_from([png(IMAGE), png(MASK), b"GIF89a", b"", png(np.zeros((4, 4), np.uint8))]),
                             max_size=3)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow], database=None)


def check_answer(r: httpx.Response) -> None:
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert set(r.json()) == {"error"}


@FUZZ
@given(body=generate_bodies)
def test_fuzz_generate_json_never_5xx(client, body):
    check_answer(post_json(client, "/v1/generate", body))
    assert_healthy(client)


@FUZZ
@given(body=edit_bodies)
def test_fuzz_edit_json_never_5xx(client, body):
    check_answer(post_json(client, "/v1/edit", body))
    assert_healthy(client)


@FUZZ
@given(fields=form_fields, files=form_files)
def test_fuzz_edit_multipart_never_5xx(client, fields, files):
    r = client.post("/v1/edit", data=fields, files={k: (f"{k}.png", v, "image/png") for k, v in files.items()}
                    or {"none": ("n.txt", b"", "text/plain")})
    check_answer(r)
    assert_healthy(client)


# ---------------------------------------------------------------- queue, abandonment, stalls

def run_app(pipe, scenario, **config):
    app = create_app(pipe, "tiny", ServerConfig(**config))

    async def main():
        async with app.router.lifespan_context(app):
            return await scenario(app)

    return asyncio.run(main())


async def asgi_post(app, path: str, chunks: list[bytes], gone: asyncio.Event | None = None,
                    stall: bool = False) -> list[dict]:
    """POST ``chunks`` to ``app`` by hand: after the body the client leaves when ``gone`` is set; with ``stall``
    it never sends the last part. Returns the ASGI messages sent back."""
    msgs = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1 or stall}
            for i, c in enumerate(chunks)]
    forever = asyncio.Event()

    async def receive():
        if msgs:
            return msgs.pop(0)
        await (gone or forever).wait()
        return {"type": "http.disconnect"}

    return await asgi_call(app, path, receive)


async def until(condition, timeout: float = 20.0) -> None:
    t0 = time.monotonic()
    while not condition():
        assert time.monotonic() - t0 < timeout, "condition not reached"
        await asyncio.sleep(0.01)


def test_request_of_a_client_that_left_is_never_decoded(pipe):
    async def scenario(app):
        b = app.state.batcher
        b.hold()
        gone = asyncio.Event()
        task = asyncio.create_task(asgi_post(app, "/v1/generate", [b'{"num": 4, "steps": 2}'], gone))
        await until(lambda: b.queued() == 1)
        gone.set()  # the client disconnects while its request waits
        await until(lambda: b.queued() == 0)
        b.release()
        sent = await task
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            after = await c.post("/v1/generate", json={"steps": 2})
        return sent, after, b.snapshot()

    sent, after, stats = run_app(pipe, scenario)
    assert sent[0]["status"] == 499
    assert stats["abandoned"] == 1 and stats["images"] == 1 and stats["abandoned_images_decoded"] == 0
    assert after.status_code == 200


def test_cancelled_request_leaves_the_queue(pipe):
    async def scenario(app):
        b = app.state.batcher
        b.hold()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            task = asyncio.create_task(c.post("/v1/generate", json={"num": 3, "steps": 2}))
            await until(lambda: b.queued() == 1)
            task.cancel()
            await until(lambda: b.queued() == 0)
        b.release()
        return b.snapshot()

    stats = run_app(pipe, scenario)
    assert stats["abandoned"] == 1 and stats["images"] == 0


def test_queue_bound_counts_images_not_requests(pipe):
    async def scenario(app):
        b = app.state.batcher
        b.hold()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=60) as c:
            first = asyncio.create_task(c.post("/v1/generate", json={"num": 3, "steps": 2}))
            await until(lambda: b.queued() == 1)
            too_many = await c.post("/v1/generate", json={"num": 2, "steps": 2})
            fits = asyncio.create_task(c.post("/v1/generate", json={"num": 1, "steps": 2}))
            await until(lambda: b.queued() == 2)
            b.release()
            return too_many, await first, await fits

    too_many, first, fits = run_app(pipe, scenario, queue_size=4)
    assert too_many.status_code == 503 and "3 images waiting" in too_many.json()["error"]
    assert too_many.headers["Retry-After"]
    assert first.status_code == 200 and fits.status_code == 200


def test_stalled_upload_gets_408(pipe):
    async def scenario(app):
        return await asgi_post(app, "/v1/generate", [b'{"label": '], stall=True)

    sent = run_app(pipe, scenario, body_timeout=0.2)
    assert sent[0]["status"] == 408 and b"did not arrive" in sent[1]["body"]


def test_shutdown_deadline_answers_waiting_requests_503(pipe):
    b = Batcher(pipe, max_batch=4, max_wait_s=0, queue_size=8)  # never started: nothing is decoded
    futures = [b.submit(Job(labels=[0], settings=("s", False))) for _ in range(3)]
    b.begin_shutdown(0.05)
    for f in futures:
        error = f.exception(timeout=20)
        assert isinstance(error, APIError) and error.status == 503 and "shut down" in error.message
    with pytest.raises(APIError, match="shutting down"):
        b.submit(Job(labels=[0]))
    assert b.snapshot()["shutdown_refused"] == 3


# ---------------------------------------------------------------- the real process

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sigterm_with_a_stalled_upload_and_requests_in_flight_exits_after_the_deadline(tiny_pipeline_dir):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "maskgit", "serve", "--model", str(tiny_pipeline_dir),
                             "--port", str(port), "--device", "cpu", "--log-level", "warning",
                             "--max-wait-ms", "2000", "--shutdown-timeout", "2", "--body-timeout", "600"],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    stalled = None
    try:
        wait_until_healthy(url)
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 100\r\n\r\n{\"label\":")  # 9 of 100 bytes, then silence
        answers = {}

        def ask(i):
            try:
                answers[i] = httpx.post(url + "/v1/generate", json={"label": i % 4, "seed": i, "steps": 2},
                                        timeout=60).status_code
            except httpx.TransportError as e:
                answers[i] = repr(e)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        while httpx.get(url + "/healthz", timeout=5).json()["queued"] < 4:
            assert time.monotonic() - t0 < 30, "the requests did not arrive"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)  # without a deadline it never exits (the stalled upload keeps it open)
        for t in threads:
            t.join(60)
        assert all(answers[i] in (200, 503) for i in range(4)), answers  # answered or refused, never lost
        log = proc.stdout.read().decode()
        assert "Traceback" not in log, log
    finally:
        if stalled is not None:
            stalled.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
