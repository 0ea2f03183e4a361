"""A new user's first ImageNet image by name, against a loopback server holding full-size official-format files
(random weights in the released ImageNet-256 trees, written as flax msgpack like Google's bucket serves them):

    python benchmarks/official_download.py [--rate-mib 200]

1. From an empty MASKGIT_HOME: ``maskgit sample --model google/maskgit-imagenet256 --labels "golden retriever"
   --steps 8 --out x.png``, timed as a whole and per phase (download, conversion, first image) from its own output.
2. The same command again: from the cache (no request reaches the server).
3. From an empty cache again, the command killed once half of the files has arrived, then run again: the second
   run continues the .part file with an HTTP Range request (the server's log shows it) and ends with the same image.

The server sends at ``--rate-mib`` MiB/s (a stand-in for a real connection; loopback alone is faster than any)."""

from __future__ import annotations

import argparse
import hashlib
import http.server
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

CMD = ["-m", "maskgit", "sample", "--model", "google/maskgit-imagenet256", "--labels", "golden retriever",
       "--steps", "8"]


def official_files(folder: Path) -> dict[str, Path]:
    """Random full-size checkpoints in the official trees (the converter's expected shapes), as flax msgpack."""
    from maskgit.config import transformer_preset, vqgan_preset
    from maskgit.storage.flax import write_flax_msgpack
    from maskgit.storage.official import expected_flax_shapes, unflatten
    rng = np.random.default_rng(0)
    out = {}
    for name, cfg in (("tokenizer_imagenet256_checkpoint", vqgan_preset("imagenet-f16")),
                      ("maskgit_imagenet256_checkpoint", transformer_preset("maskgit-imagenet256"))):
        flat = {}
        for path, shape in expected_flax_shapes(cfg).items():
            a = rng.standard_normal(shape, dtype=np.float32) * 0.02
            flat[path] = (a + 1) if path.endswith("/scale") else a  # norm scales near 1
        write_flax_msgpack({"params": unflatten(flat)}, folder / name)
        out[name] = folder / name
    return out


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        srv = self.server
        name = self.path.rsplit("/", 1)[-1]
        rng = self.headers.get("Range")
        srv.log.append((name, rng))
        data = srv.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        step = 1 << 20
        try:
            for i in range(start, len(data), step):
                t0 = time.perf_counter()
                self.wfile.write(data[i:i + step])
                srv.sent += min(step, len(data) - i)
                wait = step / (srv.rate * (1 << 20)) - (time.perf_counter() - t0)
                if wait > 0:
                    time.sleep(wait)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


def run(env: dict, out: Path, kill_after_bytes: int | None = None, srv=None) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, *CMD, "--out", str(out)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    if kill_after_bytes is not None:
        while p.poll() is None and srv.sent < kill_after_bytes:
            time.sleep(0.05)
        p.kill()
    text = p.communicate()[0]
    return time.perf_counter() - t0, p.returncode, text


def phases(text: str) -> str:
    """The command's own timing lines (download, conversion, the image) as printed."""
    keep = [ln.strip() for ln in re.split(r"[\r\n]", text) if re.search(r"convert|download|wrote|image|s/it", ln)]
    return " / ".join(dict.fromkeys(keep[-6:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate-mib", type=float, default=200.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        files = official_files(tmp)
        sizes = {n: p.stat().st_size for n, p in files.items()}
        print(f"wrote random official-format files in {time.perf_counter() - t0:.0f} s: "
              + ", ".join(f"{n} {s / 2**20:.0f} MiB" for n, s in sizes.items()), flush=True)
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        srv.files = {n: p.read_bytes() for n, p in files.items()}
        srv.log, srv.sent, srv.rate = [], 0, args.rate_mib
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        env = {**os.environ, "MASKGIT_HOME": str(tmp / "home"), "NO_PROXY": "127.0.0.1", "TQDM_MININTERVAL": "5",
               "MASKGIT_OFFICIAL_URL": f"http://127.0.0.1:{srv.server_address[1]}/maskgit/"}
        secs, rc, text = run(env, tmp / "x.png")
        print(f"1. first call, empty cache: rc {rc}, {secs:.1f} s; requests {srv.log}\n   {phases(text)}", flush=True)
        first = hashlib.sha256((tmp / "x.png").read_bytes()).hexdigest() if rc == 0 else None
        if rc:
            print(text[-3000:])
            return
        srv.log.clear()
        secs, rc, text = run(env, tmp / "y.png")
        print(f"2. second call, from the cache: rc {rc}, {secs:.1f} s; requests {srv.log or 'none'}", flush=True)
        subprocess.run([sys.executable, "-m", "maskgit", "cache", "rm", "google/maskgit-imagenet256"], env=env,
                       check=True, capture_output=True)
        srv.log.clear()
        srv.sent = 0
        half = sum(sizes.values()) // 2
        secs, rc, _ = run(env, tmp / "z.png", kill_after_bytes=half, srv=srv)
        parts = {p.name: p.stat().st_size for p in (tmp / "home" / "downloads").glob("*.part")}
        print(f"3a. killed after {srv.sent / 2**20:.0f} MiB ({secs:.1f} s, rc {rc}); .part files {parts}", flush=True)
        srv.log.clear()
        secs, rc, text = run(env, tmp / "z.png")
        same = rc == 0 and hashlib.sha256((tmp / "z.png").read_bytes()).hexdigest() == first
        print(f"3b. called again: rc {rc}, {secs:.1f} s; requests {srv.log}; same image as call 1: {same}", flush=True)
        srv.shutdown()


if __name__ == "__main__":
    main()
