"""Run the README's command blocks as written, in a fresh clone, and list each block with its exit code.

Every ```bash and ```python block of README.md is run in order inside a fresh `git clone` of this repository and
a fresh virtual environment (its `bin/` first on PATH, so the README's `pip install` lines install into it, as on
a new machine; bash blocks with `bash -e`, python blocks with its python), each under a time limit; the serving
block runs in the background while the block of requests that follows it runs against it. Blocks that need the
network (Google's bucket, the Hugging Face Hub) or hardware this machine lacks (CUDA, ImageNet on disk), and the
blocks whose first line says they are sized for a GPU or run for over an hour on a CPU, are listed as skipped with
the reason unless ``--all`` is given; a block still running at its time limit is listed with exit
code 124.

    python3 benchmarks/readme_blocks.py --out /tmp/readme_run [--only 1,2,9] [--timeout 900]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEEDS = [  # (pattern in the block, why it cannot run on an offline CPU machine)
    (r"google/maskgit-imagenet|amused/amused-|--init amused/", "downloads weights (Google's bucket or the Hub)"),
    (r"--device cuda|/data/imagenet", "needs CUDA GPUs and ImageNet on disk"),
    (r"^# sized for a GPU", "sized for a GPU: up to 100,000 steps per training line, many hours on a CPU"),
    (r"^# over an hour each on a CPU", "benchmarks that run for over an hour each on a CPU"),
]


def blocks(readme: Path) -> list[tuple[int, str, str]]:
    """(line number, language, text) of every bash / python fenced block."""
    text = readme.read_text()
    out = []
    for m in re.finditer(r"^```(bash|python)\n(.*?)^```", text, re.S | re.M):
        out.append((text[:m.start()].count("\n") + 1, m.group(1), m.group(2)))
    return out


def skip_reason(body: str) -> str | None:
    for pattern, why in NEEDS:
        if re.search(pattern, body, re.M):
            return why
    return None


def venv_env(venv: Path) -> dict:
    env = dict(os.environ, VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}")
    env.pop("PYTHONPATH", None)
    return env


def run_block(lang: str, body: str, cwd: Path, timeout: float, log: Path, env: dict) -> tuple[int, float]:
    cmd = ["bash", "-e", "-c", body] if lang == "bash" else ["python", "-c", body]
    t0 = time.monotonic()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait()
            rc = 124
    return rc, time.monotonic() - t0


def start_server(body: str, cwd: Path, log: Path, env: dict) -> subprocess.Popen:
    f = open(log, "w")
    p = subprocess.Popen(["bash", "-e", "-c", body], cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                         start_new_session=True, env=env)
    for _ in range(240):
        try:
            urllib.request.urlopen("http://127.0.0.1:8000/healthz", timeout=1).read()
            return p
        except OSError:
            if p.poll() is not None:
                return p
            time.sleep(0.5)
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for the clone and the logs")
    ap.add_argument("--only", default="", help="block numbers to run (default: all)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per block")
    ap.add_argument("--all", action="store_true", help="also the blocks that need the network or CUDA")
    args = ap.parse_args()
    out = Path(args.out)
    clone = out / "clone"
    if not clone.exists():
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    venv = out / "venv"
    if not venv.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = venv_env(venv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True,
                            text=True).stdout.strip()
    only = {int(v) for v in args.only.split(",") if v}
    print(f"fresh clone of {commit} in {clone}")
    print("| block | README line | language | exit code | seconds | note |\n|---:|---:|---|---:|---:|---|")
    server = None
    try:
        for i, (line, lang, body) in enumerate(blocks(clone / "README.md")):
            if only and i not in only:
                continue
            why = None if args.all else skip_reason(body)
            if why:
                print(f"| {i} | {line} | {lang} | - | - | skipped: {why} |", flush=True)
                continue
            log = out / f"block{i:02d}.log"
            if lang == "bash" and re.search(r"^maskgit serve ", body, re.M):
                server = start_server(body, clone, log, env)
                alive = server.poll() is None
                print(f"| {i} | {line} | {lang} | {'running' if alive else server.returncode} | - | "
                      f"server {'up' if alive else 'failed'}, kept for the next block |", flush=True)
                continue
            rc, sec = run_block(lang, body, clone, args.timeout, log, env)
            last = (log.read_text().strip().splitlines() or [""])[-1][:80].replace("|", "/")
            print(f"| {i} | {line} | {lang} | {rc} | {sec:.0f} | {'time limit' if rc == 124 else last} |",
                  flush=True)
            if server is not None and "127.0.0.1:8000" in body:
                os.killpg(server.pid, signal.SIGINT)
                server.wait(timeout=60)
                print(f"|  |  |  | {server.returncode} |  | server stopped by SIGINT |", flush=True)
                server = None
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)


if __name__ == "__main__":
    main()
