"""The web page in headless Chromium (Playwright) against a real uvicorn server on a loopback port."""

import base64
import io
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
playwright_api = pytest.importorskip("playwright.sync_api")

from PIL import Image

import maskgit
from maskgit.serving.app import ServerConfig, create_app

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Chromium: apt-get install chromium")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(app):
    """Start ``app`` under uvicorn on a free loopback port in a thread; (server, thread) once it listens."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    t0 = time.monotonic()
    while not server.started:
        assert thread.is_alive() and time.monotonic() - t0 < 60, "uvicorn did not start"
        time.sleep(0.05)
    return server, thread


@pytest.fixture(scope="module")
def server_url():
    server, thread = _serve(create_app(maskgit.load("fashion-mnist"), "fashion-mnist", ServerConfig()))
    yield f"http://127.0.0.1:{server.config.port}"
    server.should_exit = True
    thread.join(30)


def png_from_data_url(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2]))))


def test_generate_paint_inpaint_outpaint(server_url, tmp_path):
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            errors, foreign = [], []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: None if r.url.startswith((server_url, "data:", "blob:"))
                    else foreign.append(r.url))
            page.goto(server_url + "/")
            page.wait_for_function("document.getElementById('label').options.length === 11")  # none + 10 classes
            page.select_option("#label", "7")
            page.eval_on_selector("#steps", "el => { el.value = '6'; el.dispatchEvent(new Event('input')); }")
            page.evaluate("""() => { window.frames_seen = 0;
                new MutationObserver(() => window.frames_seen++).observe(
                    document.getElementById('result'), {attributes: true, attributeFilter: ['src']}); }""")
            page.click("#generate")
            page.wait_for_selector("#result[data-kind=generate]", timeout=30_000)
            assert page.evaluate("window.frames_seen") >= 7  # 6 decoding steps animated, then the result
            generated = png_from_data_url(page.get_attribute("#download", "href"))
            assert generated.shape == (32, 32) and generated.std() > 0

            page.click("#use-result")
            page.wait_for_function("!document.getElementById('inpaint').disabled")
            box = page.locator("#mask-canvas").bounding_box()
            page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.6, steps=12)
            page.mouse.up()
            painted = page.evaluate("""() => { const c = document.getElementById('mask-canvas');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }""")
            assert 20 < painted < 32 * 32 / 2

            page.click("#inpaint")
            page.wait_for_selector("#result[data-kind=inpaint]", timeout=30_000)
            page.wait_for_function("document.getElementById('result').complete && "
                                   "document.getElementById('result').naturalWidth === 32")
            inpainted = png_from_data_url(page.get_attribute("#download", "href"))
            assert inpainted.shape == (32, 32) and inpainted.std() > 0
            # the stroke spans pixel rows ~10-19; with the brush's width and the 2 px feather the edited cells reach
            # up to pixel row 2, so rows 0-1 lie outside every edited cell and its feather: untouched
            assert np.array_equal(inpainted[:2], generated[:2])
            shot = tmp_path / "web.png"
            page.screenshot(path=str(shot), full_page=True)
            result_shot = tmp_path / "result.png"
            page.locator("#result").screenshot(path=str(result_shot))
            assert shot.stat().st_size > 0 and np.asarray(Image.open(result_shot)).std() > 0

            page.fill("#tokens", "2")
            page.click("#outpaint")
            page.wait_for_selector("#result[data-kind=outpaint]", timeout=30_000)
            assert png_from_data_url(page.get_attribute("#download", "href")).shape == (32, 40)
            assert page.text_content("#status").startswith("outpaint done")
            assert not errors and not foreign, (errors, foreign)
        finally:
            browser.close()


def test_text_model_page_generates_from_a_prompt():
    """A text-conditioned model: the page shows prompt fields instead of classes and sends the prompt."""
    from test_text import HashEncoder, text_model

    from maskgit.pipeline import Pipeline
    tok, tr = text_model()
    pipe = Pipeline(tok, tr, text_encoder=HashEncoder())
    server, thread = _serve(create_app(pipe, "text", ServerConfig()))
    url = f"http://127.0.0.1:{server.config.port}"
    try:
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            try:
                page = browser.new_page()
                errors = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(url + "/")
                page.wait_for_function("!document.getElementById('prompt-row').classList.contains('hidden')")
                assert page.is_hidden("#class-row") and page.is_visible("#negative-row")
                page.fill("#prompt", "a red circle")
                page.fill("#negative", "blue")
                page.click("#generate")
                page.wait_for_selector("#result[data-kind=generate]", timeout=30_000)
                got = png_from_data_url(page.get_attribute("#download", "href"))
                steps = int(page.eval_on_selector("#steps", "el => el.value"))
                cfg = float(page.eval_on_selector("#cfg", "el => el.value"))
                seed = int(page.eval_on_selector("#seed", "el => el.value") or 0)
                expect = pipe.generate(prompts=["a red circle"], negative_prompts="blue", seed=seed, steps=steps,
                                       cfg=cfg, output="np")
                assert np.array_equal(got, expect.reshape(got.shape))
                assert not errors, errors
            finally:
                browser.close()
    finally:
        server.should_exit = True
        thread.join(30)
