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


def _upload_images(tmp_path) -> dict[str, Path]:
    """394x454 images (the report's size): a disc in the centred square and black bands above and below it, which a
    crop cuts away and a squash would keep. As a PNG, and as a JPEG stored sideways with an EXIF orientation."""
    from PIL import ImageDraw
    shown = Image.new("L", (394, 454), 255)
    draw = ImageDraw.Draw(shown)
    draw.rectangle((0, 0, 393, 19), fill=0)
    draw.rectangle((0, 434, 393, 453), fill=0)
    draw.ellipse((72, 102, 322, 352), fill=0)  # diameter 250 in the square rows 30..423
    shown.save(tmp_path / "tall.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    shown.transpose(Image.Transpose.ROTATE_90).convert("RGB").save(tmp_path / "sideways.jpg", exif=exif, quality=95)
    return {"png": tmp_path / "tall.png", "jpeg with EXIF orientation": tmp_path / "sideways.jpg"}


def test_first_visit_guidance_at_the_model_default_no_broken_image_and_uploads_cropped(server_url, tmp_path):
    """The guidance slider starts at the model's stored cfg (and generate sends it), the result box shows no
    broken-image icon before the first image, and a 394x454 upload is drawn cropped to the square, not squashed."""
    import httpx
    default_cfg = httpx.get(server_url + "/v1/models").json()["models"][0]["defaults"]["cfg"]
    assert default_cfg > 0  # the shipped model guides by default
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            errors, sent = [], []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/v1/generate") else None)
            page.goto(server_url + "/")
            page.wait_for_function("document.getElementById('label').options.length === 11")
            assert float(page.eval_on_selector("#cfg", "el => el.value")) == default_cfg
            assert float(page.text_content("#cfg-out")) == default_cfg
            assert page.is_hidden("#result") and page.is_visible("#result-empty")  # no <img> without a src shown
            for what, path in _upload_images(tmp_path).items():
                page.evaluate("document.getElementById('status').textContent = ''")
                page.set_input_files("#upload", str(path))
                page.wait_for_function("document.getElementById('status').textContent.startsWith('cropped')")
                assert page.text_content("#status") == "cropped 394×454 to 32×32", what
                drawn = png_from_data_url(page.evaluate(
                    "document.getElementById('src-canvas').toDataURL('image/png')"))[..., 0]
                dark = drawn < 128
                assert not dark[0].any() and not dark[-1].any(), (what, dark.astype(int))  # the bands are cut off
                rows, cols = np.nonzero(dark)
                height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
                assert abs(int(height) - int(width)) <= 1 and 18 <= width <= 22, (what, height, width)  # a disc
                box = page.locator("#src-canvas").bounding_box()
                assert box["width"] == box["height"]  # shown square
            page.click("#generate")
            page.wait_for_selector("#result[data-kind=generate]", timeout=30_000)
            assert page.is_visible("#result") and page.is_hidden("#result-empty")
            assert sent and sent[-1]["cfg"] == default_cfg
            assert not errors, errors
        finally:
            browser.close()
