"""Load test of `maskgit serve`: throughput and latency of POST /v1/generate at several concurrency levels.

Starts the server on a free loopback port with the shipped model (or uses --url), sends --requests requests at
each concurrency level (distinct seeds, classes 0..9 in turn), checks every answer (status, one 32x32 PNG, the
label and seed asked for), and prints a Markdown table: images/s, latency p50/p95 and the mean batch size
(requests per batched decode, from GET /v1/stats). The whole run is bounded by --timeout seconds.

    python benchmarks/load_server.py                       # 100 requests at concurrency 1, 4, 16, 64
    python benchmarks/load_server.py --levels 1,8 --requests 40 --steps 4
    python benchmarks/load_server.py --abandon-after 0.3   # every other client gives up after 0.3 s

With --abandon-after, every other request's client closes its connection after that many seconds; the table then
counts those requests apart (they are not failures) and reports, from GET /v1/stats, how many of them the server
dropped before decoding and how many images it decoded for clients that had already left (a batch already running
when its client leaves finishes). With a server it started itself, the script also reports the server's resident
memory before the first level and after the last.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "maskgit", "serve", "--model", args.model, "--host", "127.0.0.1",
           "--port", str(port), "--device", "cpu", "--log-level", "warning", "--max-batch", str(args.max_batch),
           "--max-wait-ms", str(args.max_wait_ms), "--queue-size", str(max(256, args.requests))]
    proc = subprocess.Popen(cmd, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while time.monotonic() - t0 < 90:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not come up within 90 s")


def check(r: httpx.Response, label: int, seed: int, size: int) -> str | None:
    """None when the answer is what was asked for, else what is wrong."""
    if r.status_code != 200:
        return f"status {r.status_code}: {r.text[:200]}"
    j = r.json()
    if len(j["images"]) != 1 or j["labels"] != [label] or j["seed"] != seed:
        return f"wrong answer: {len(j['images'])} images, labels {j['labels']}, seed {j['seed']}"
    im = Image.open(io.BytesIO(base64.b64decode(j["images"][0])))
    if im.size != (size, size) or np.asarray(im).std() == 0:
        return f"bad image {im.size}"
    return None


async def level(client: httpx.AsyncClient, concurrency: int, n: int, first_seed: int, args, size: int,
                deadline: float) -> dict:
    sem = asyncio.Semaphore(concurrency)
    latencies, problems = [], []
    before = (await client.get("/v1/stats")).json()

    gave_up = []

    async def one(i: int):
        label, seed = i % args.num_classes, first_seed + i
        leaves = args.abandon_after is not None and i % 2 == 1
        async with sem:
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/generate", json={"label": label, "seed": seed, "steps": args.steps},
                                      timeout=args.abandon_after if leaves else max(1.0, deadline - time.monotonic()))
            except httpx.TimeoutException as e:
                (gave_up if leaves else problems).append(type(e).__name__)
                return
            except httpx.HTTPError as e:
                problems.append(f"{type(e).__name__}")
                return
            latencies.append(time.perf_counter() - t0)
            if (p := check(r, label, seed, size)) is not None:
                problems.append(p)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - t0
    await asyncio.sleep(0.5)  # the server notices the last disconnects
    after = (await client.get("/v1/stats")).json()
    batches = after["batches"] - before["batches"]
    ok = n - len(problems) - len(gave_up)
    return {"concurrency": concurrency, "requests": n - len(gave_up), "ok": ok, "wall": wall, "images_s": ok / wall,
            "gave_up": len(gave_up), "dropped": after["abandoned"] - before["abandoned"],
            "decoded_for_gone": after["abandoned_images_decoded"] - before["abandoned_images_decoded"],
            "p50": np.percentile(latencies, 50) * 1000 if latencies else float("nan"),
            "p95": np.percentile(latencies, 95) * 1000 if latencies else float("nan"),
            "mean_batch": (after["requests"] - before["requests"]) / batches if batches else float("nan"),
            "problems": problems[:3]}


async def run(args, url: str) -> list[dict]:
    deadline = time.monotonic() + args.timeout
    limits = httpx.Limits(max_connections=max(args.levels) + 4, max_keepalive_connections=max(args.levels) + 4)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=args.timeout) as client:
        model = (await client.get("/v1/models")).json()["models"][0]
        args.num_classes = max(model["num_classes"], 1)
        size = model["image_size"]
        await client.post("/v1/generate", json={"label": 0, "steps": args.steps})  # warm-up
        rows = []
        for k, c in enumerate(args.levels):
            if time.monotonic() > deadline:
                print(f"stopped before concurrency {c}: the {args.timeout:.0f} s budget is spent", file=sys.stderr)
                break
            try:
                row = await asyncio.wait_for(level(client, c, args.requests, 10_000 * (k + 1), args, size, deadline),
                                             timeout=max(1.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                print(f"concurrency {c} did not finish within the {args.timeout:.0f} s budget", file=sys.stderr)
                break
            rows.append(row)
            print(f"concurrency {c}: {row['ok']}/{row['requests']} ok, {row['images_s']:.1f} images/s, "
                  f"p50 {row['p50']:.0f} ms, p95 {row['p95']:.0f} ms, mean batch {row['mean_batch']:.1f}",
                  file=sys.stderr)
        return rows


def table(rows: list[dict], args) -> str:
    head = (f"POST /v1/generate, {args.requests} requests per level, 1 image each, steps={args.steps}, "
            f"max_batch={args.max_batch}, max_wait_ms={args.max_wait_ms}; {os.cpu_count()} CPUs, load average "
            f"{args.load_before:.1f} before / {os.getloadavg()[0]:.1f} after")
    if args.rss:
        head += f"; server RSS {args.rss[0]:.0f} MiB before, {args.rss[1]:.0f} MiB after"
    gone = args.abandon_after is not None
    extra = " clients that gave up | dropped before decoding | images decoded for gone clients |" if gone else ""
    out = [head, "",
           "| concurrency | ok | wall (s) | images/s | p50 latency (ms) | p95 latency (ms) | mean batch size |" + extra,
           "|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if gone else "")]
    for r in rows:
        out.append(f"| {r['concurrency']} | {r['ok']}/{r['requests']} | {r['wall']:.1f} | {r['images_s']:.1f} | "
                   f"{r['p50']:.0f} | {r['p95']:.0f} | {r['mean_batch']:.1f} |"
                   + (f" {r['gave_up']} | {r['dropped']} | {r['decoded_for_gone']} |" if gone else ""))
    return "\n".join(out)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=None, help="a running server (default: start one on a free loopback port)")
    p.add_argument("--model", default="fashion-mnist")
    p.add_argument("--levels", default="1,4,16,64", help="comma-separated concurrency levels")
    p.add_argument("--requests", type=int, default=100, help="requests per level")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--timeout", type=float, default=120.0, help="budget for all levels together, in seconds")
    p.add_argument("--abandon-after", type=float, default=None,
                   help="every other client gives up (closes its connection) after this many seconds")
    args = p.parse_args()
    args.levels = [int(v) for v in args.levels.split(",")]
    args.load_before = os.getloadavg()[0]  # other work on the machine skews every number
    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(args)
    args.rss = None
    try:
        before = rss_mib(proc.pid) if proc is not None else None
        rows = asyncio.run(run(args, url))
        if proc is not None:
            args.rss = (before, rss_mib(proc.pid))
    finally:
        if proc is not None:
            proc.terminate()  # SIGTERM: uvicorn finishes in-flight requests, the worker drains its queue
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(table(rows, args))
    bad = [r for r in rows if r["ok"] != r["requests"]]
    for r in bad:
        print(f"concurrency {r['concurrency']}: {r['requests'] - r['ok']} failed, e.g. {r['problems']}",
              file=sys.stderr)
    return 1 if bad or len(rows) < len(args.levels) else 0


if __name__ == "__main__":
    sys.exit(main())
