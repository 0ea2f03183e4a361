"""Hostile and careless input against a live `maskgit serve` (the shipped model on loopback): the report's bad
requests, deep JSON, broken uploads, then --fuzz random JSON and multipart bodies. After every case /healthz must
answer; the script counts answers by status class, the slowest /healthz, tracebacks in the server's log, and the
server's resident memory over the run. Then the cases of fault_cases.py: hostile PNG uploads sent --rounds times
(the memory case), integers too long to read, non-ASCII digits, 50 clients that leave mid-body, a body and a
request head drip-fed a byte a second, and last a SIGTERM while heavy batches are decoded.

    python benchmarks/fault_server.py --fuzz 400
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter

import fault_cases  # this folder's multi-request cases
import httpx
import numpy as np
from load_server import free_port, rss_mib  # this folder's load test: the same server helpers
from PIL import Image

HUGE = 10 ** 30
BAD_GENERATE = [
    {"label": 1, "num": 400_000_000}, {"label": 1, "num": HUGE}, {"label": 9223372036854775808},
    {"labels": [9223372036854775808]}, {"label": 10}, {"labels": [0, -2]}, {"label": "7"}, {"label": True},
    {"num": 1.5}, {"num": "2"}, {"seed": HUGE}, {"steps": HUGE}, {"top_k": HUGE}, {"cfg": float("nan")},
    {"cfg": float("inf")}, {"cfg": -1e308}, {"temperature": float("inf")}, {"choice_temperature": float("inf")},
    {"choice_temperature": float("-inf")}, {"top_p": float("nan")}, {"return_steps": "yes"}, {"schedule": 3},
]
BAD_EDIT = [
    {"box": [0, 0, 4, 4], "label": 9223372036854775808}, {"box": [0, 0, 4, HUGE]}, {"box": [0, 0, 4, "4"]},
    {"box": [0, 0, 4, 4], "cfg": float("nan")}, {"box": [0, 0, 4, 4], "dilate": True},
    {"side": "left", "tokens": HUGE}, {"mode": "edit", "box": [0, 0, 4, 4], "label": 1, "start_step": HUGE},
]
FIELDS = ["label", "labels", "num", "seed", "steps", "cfg", "temperature", "top_k", "top_p", "choice_temperature",
          "schedule", "order", "return_steps", "image", "mask", "box", "side", "tokens", "mode", "start_step",
          "dilate", "feather", "prompt"]


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def random_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(12 if depth < 3 else 9)
    return [lambda: rng.randint(-5, 40), lambda: rng.choice([HUGE, -HUGE, 2 ** 63, -(2 ** 63) - 1]),
            lambda: rng.choice([float("nan"), float("inf"), -float("inf"), 1e308, -1e-308, 0.5]),
            lambda: rng.choice(["", "7", "cosine", "halton", "x" * rng.randint(1, 5000), "\u0000\ud7ff"]),
            lambda: rng.choice([True, False]), lambda: None, lambda: rng.uniform(-10, 10),
            lambda: base64.b64encode(os.urandom(rng.randint(0, 200))).decode(),
            lambda: rng.choice(["left", "right", "top", "bottom", "edit", "inpaint"]),
            lambda: [random_value(rng, depth + 1) for _ in range(rng.randint(0, 6))],
            lambda: {rng.choice(FIELDS): random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))},
            lambda: [0, 0, rng.randint(-3, 40), rng.randint(-3, 40)]][kind]()


def cases(args, rng: random.Random, image: bytes):
    """(name, method, path, request kwargs) in order."""
    def jsn(body):
        return {"content": json.dumps(body, allow_nan=True).encode(), "headers": {"content-type": "application/json"}}
    b64 = base64.b64encode(image).decode()
    for body in BAD_GENERATE:
        yield "report: generate", "/v1/generate", jsn(body)
    for body in BAD_EDIT:
        yield "report: edit", "/v1/edit", jsn({"image": b64, **body})
    for path in ("/v1/generate", "/v1/edit"):
        deep = b"[" * 100_000 + b"]" * 100_000
        yield "deep JSON", path, {"content": deep, "headers": {"content-type": "application/json"}}
    yield "not JSON", "/v1/generate", {"content": b"{\"label\": ", "headers": {"content-type": "application/json"}}
    yield "not an image", "/v1/edit", jsn({"image": base64.b64encode(b"GIF89a" + os.urandom(50)).decode(),
                                          "box": [0, 0, 4, 4]})
    yield "huge image", "/v1/edit", jsn({"image": base64.b64encode(png(np.zeros((4000, 4000), np.uint8))).decode(),
                                        "box": [0, 0, 4, 4]})
    for _ in range(args.fuzz):
        body = {rng.choice(FIELDS): random_value(rng) for _ in range(rng.randint(0, 6))}
        if rng.random() < 0.5:
            yield "fuzz: generate JSON", "/v1/generate", jsn(body)
        elif rng.random() < 0.5:
            yield "fuzz: edit JSON", "/v1/edit", jsn({"image": b64, **body} if rng.random() < 0.7 else body)
        else:
            files = {"image": ("x.png", image if rng.random() < 0.7 else os.urandom(rng.randint(0, 300)), "image/png")}
            if rng.random() < 0.3:
                files["mask"] = ("m.png", os.urandom(rng.randint(0, 100)), "image/png")
            data = {k: json.dumps(v, allow_nan=True) if not isinstance(v, str) else v for k, v in body.items()}
            yield "fuzz: edit multipart", "/v1/edit", {"data": data, "files": files}


def post(c, name: str, path: str, kw: dict, counts: Counter, by_case: Counter, failures: list) -> None:
    try:
        r = c.post(path, **kw)
        cls = f"{r.status_code // 100}xx"
        if r.status_code >= 500:
            failures.append(f"{name}: {r.status_code} {r.text[:150]}")
        elif name in ("huge integer", "non-ASCII digits") and r.status_code < 400:
            failures.append(f"{name}: accepted ({r.status_code})")
    except httpx.HTTPError as e:
        cls = f"connection error ({type(e).__name__})"
        failures.append(f"{name}: {cls}")
    counts[cls] += 1
    by_case[name] += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="fashion-mnist")
    ap.add_argument("--fuzz", type=int, default=400, help="random bodies after the fixed cases")
    ap.add_argument("--rounds", type=int, default=3, help="times the hostile uploads are sent (the memory case)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    limits = ["--max-num", "4", "--max-steps", "8", "--body-timeout", "3", "--header-timeout", "3",
              "--shutdown-timeout", "3"]
    cmd = [sys.executable, "-m", "maskgit", "serve", "--model", args.model, "--host", "127.0.0.1", "--port", str(port),
           "--device", "cpu", *limits]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    counts, by_case, worst_health, failures, rss = Counter(), Counter(), 0.0, [], {}
    try:
        with httpx.Client(base_url=url, timeout=120) as c:
            for _ in range(600):
                try:
                    if c.get("/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            size = c.get("/v1/models").json()["models"][0]["image_size"]
            image = png((np.arange(size * size).reshape(size, size) % 256).astype(np.uint8))
            c.post("/v1/generate", json={"label": 0, "steps": 2})  # warm-up
            rss["start"] = rss_mib(proc.pid)
            uploads = fault_cases.hostile_uploads(size)
            for i in range(args.rounds):
                for name, path, kw in uploads:
                    post(c, f"hostile upload: {name}", path, kw, counts, by_case, failures)
                rss[f"hostile uploads, round {i + 1}"] = rss_mib(proc.pid)
            fixed = list(cases(args, random.Random(args.seed), image)) + fault_cases.number_cases(image)
            for name, path, kw in fixed:
                post(c, name, path, kw, counts, by_case, failures)
                t = time.perf_counter()
                ok = c.get("/healthz", timeout=5).status_code == 200
                worst_health = max(worst_health, time.perf_counter() - t)
                if not ok:
                    failures.append(f"{name}: /healthz not ok")
            rss["bad and fuzzed requests"] = rss_mib(proc.pid)
            fault_cases.disconnect_mid_body(port, 50)
            by_case["disconnect mid-body"] += 50
            ends = {}
            for what in ("body", "head"):
                ends[what] = fault_cases.drip(port, what, every_s=1.0, limit_s=20)
                by_case[f"drip-fed {what}"] += 1
            if ends["body"][0] != "408" or ends["body"][1] > 3 + 1.5:
                failures.append(f"drip-fed body: {ends['body']} (expected 408 within the 3 s body timeout)")
            if ends["head"][0] != "closed" or ends["head"][1] > 3 + 1.5:
                failures.append(f"drip-fed head: {ends['head']} (expected closed within the 3 s header timeout)")
            rss["end"] = rss_mib(proc.pid)
            heavy = {"labels": [1, 2, 3, 0], "steps": 8, "candidates": 16}
        shutdown = fault_cases.shutdown_under_load(proc, url, port, heavy, deadline_s=3.0)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
    late = [a for a in shutdown["answers"] if a[0] not in ("200", "503") or a[1] > shutdown["deadline_s"] + 0.5]
    if late or shutdown["exit_s"] > shutdown["deadline_s"] + 2.5:
        failures.append(f"shutdown: {shutdown}")
    log.seek(0)
    text = log.read()
    tracebacks = text.count("Traceback") + text.count("Exception in ASGI")
    grown = rss["end"] - rss["start"]
    if grown >= 100:
        failures.append(f"RSS grew {grown:.0f} MiB")
    print(f"server: maskgit serve --model {args.model} {' '.join(limits)} on loopback; {os.cpu_count()} CPUs")
    print(f"\n| cases | {' | '.join(sorted(counts))} | 5xx | tracebacks in the log | slowest /healthz after a case |")
    print("|" + "---:|" * (len(counts) + 4))
    print(f"| {sum(counts.values())} ({', '.join(f'{n} {k}' for k, n in by_case.items())}) | "
          + " | ".join(str(counts[k]) for k in sorted(counts))
          + f" | {sum(n for k, n in counts.items() if k.startswith('5'))} | {tracebacks}"
          f" | {worst_health * 1000:.0f} ms |")
    print("\n| server RSS after | MiB |\n|---|---:|")
    for k, v in rss.items():
        print(f"| {k} | {v:.0f} |")
    print(f"| growth over the run | {grown:+.0f} |")
    print(f"\ndrip-fed body: {ends['body'][0]} after {ends['body'][1]:.1f} s; drip-fed head: {ends['head'][0]} after "
          f"{ends['head'][1]:.1f} s (one byte a second; body and header timeouts 3 s)")
    answers = ", ".join(f"{st} at {t:+.1f} s" for st, t in shutdown["answers"])
    print(f"SIGTERM under load ({len(shutdown['answers'])} x {json.dumps(heavy)} and 2 stalled uploads, signal "
          f"1.5 s after they were sent, --shutdown-timeout 3): answers after the signal: {answers}; stalled "
          f"uploads: {shutdown['stalled']}; process exited {shutdown['exit_s']:.1f} s after the signal "
          f"(rc {shutdown['rc']})")
    for f in failures[:10]:
        print("FAILED:", f, file=sys.stderr)
    return 1 if failures or tracebacks else 0


if __name__ == "__main__":
    sys.exit(main())
