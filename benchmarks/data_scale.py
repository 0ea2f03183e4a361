"""Streaming tokenize at scale: peak memory against dataset size, throughput against its two ceilings, kill -9 +
--resume, and torchrun.

Builds synthetic image folders of 256 px JPEGs (8 classes; cached under --root) and tokenizes them with the
``rgb256-f16-small`` tokenizer (random weights: speed and memory do not depend on them) through the CLI, one child
process per run:
- peak RSS of each run: ``ru_maxrss`` of the child (the largest process of its tree: main or a loader worker) and
  the peak of the summed PSS of the whole tree (main + workers), sampled from /proc every 0.2 s;
- throughput (images/s in the encode loop, as the command prints it) next to two ceilings measured in the same
  run: the loader alone (decode + resize, same workers and chunks) and the encoder alone on in-memory tensors;
- a run killed with SIGKILL half-way and finished with --resume gives the same store bytes as one uninterrupted run;
- ``torchrun --nproc_per_node 2`` gives the same store bytes as one process.

    python benchmarks/data_scale.py --sizes 2000,20000 --check-n 400 --json benchmarks/results/data_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from maskgit.config import vqgan_preset
from maskgit.data.encode import partial_dir
from maskgit.data.imagefiles import ImageFolderDataset
from maskgit.data.loader import GroupLoader, Key
from maskgit.models.vqgan import VQGAN
from maskgit.storage.checkpoint import save_model

PRESET = "rgb256-f16-small"
CLASSES = 8


def _draw(args) -> None:
    path, seed = args
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:256, 0:256] / 255.0
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = (x * rng.uniform(-1, 1) + y * rng.uniform(-1, 1))[..., None]
    base = np.clip(c0 + (c1 - c0) * (t - t.min()) / (np.ptp(t) + 1e-9), 0, 255)
    base += rng.normal(0, 12, base.shape)  # texture, so JPEG has real work to do
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 8))):
        a, b = rng.integers(0, 256, 2), rng.integers(16, 120, 2)
        box = [int(a[0]), int(a[1]), int(a[0] + b[0]), int(a[1] + b[1])]
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=fill)
    img.save(path, quality=90)


def build_folder(root: Path, n: int) -> Path:
    """root/images_N/class_k/NNNNNN.jpg, made once (a marker file says it is complete)."""
    folder = root / f"images_{n}"
    if (folder / ".complete").exists():
        return folder
    for k in range(CLASSES):
        (folder / f"class_{k}").mkdir(parents=True, exist_ok=True)
    jobs = [(folder / f"class_{i % CLASSES}" / f"{i:06d}.jpg", i) for i in range(n)]
    with Pool(os.cpu_count() or 1) as pool:
        pool.map(_draw, jobs, chunksize=64)
    (folder / ".complete").write_text("")
    return folder


def _tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += [c for c, pp in parent.items() if pp == p]
    return out


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_measured(cmd: list[str], env: dict, kill_when=None) -> dict:
    """Run ``cmd``; its wall time, ru_maxrss (MiB, from wait4), peak summed PSS of its tree (MiB) and output. When
    ``kill_when()`` turns true, the whole process group gets SIGKILL."""
    t0 = time.time()
    with tempfile.TemporaryFile() as log:
        p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        peak_pss, killed = 0, False
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid == p.pid:
                break
            peak_pss = max(peak_pss, sum(_pss_kb(q) for q in _tree(p.pid)))
            if kill_when is not None and not killed and kill_when():
                os.killpg(p.pid, signal.SIGKILL)
                killed = True
            time.sleep(0.2)
        p.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        out = log.read().decode(errors="replace")
    return {"rc": p.returncode, "wall_s": time.time() - t0, "maxrss_mib": ru.ru_maxrss / 1024,
            "tree_pss_mib": peak_pss / 1024, "output": out, "killed": killed}


def _store_bytes(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def loader_ceiling(folder: Path, workers: int, batch_size: int, limit: int) -> float:
    ds = ImageFolderDataset(folder, image_size=256)
    n = min(limit, len(ds))
    chunk = max(1, min(64, -(-batch_size // max(1, workers))))
    keys = [Key(tuple(range(s, min(n, s + chunk)))) for s in range(0, n, chunk)]
    it = iter(GroupLoader(ds, keys, workers))
    first = next(it)  # worker start-up is not decoding
    t0, count = time.time(), 0
    for b in it:
        count += len(b["images"])
    return count / (time.time() - t0) if count else float(len(first["images"]))


@torch.no_grad()
def encoder_ceiling(model: VQGAN, batch_size: int, batches: int) -> float:
    model.prepare_for_inference(channels_last=True)  # what `maskgit tokenize` runs on a CPU
    x = torch.randint(0, 256, (batch_size, 3, 256, 256), dtype=torch.uint8)
    model.encode(x.float() / 255)
    t0 = time.time()
    for _ in range(batches):
        model.encode(x.float().div_(255.0))
    return batch_size * batches / (time.time() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="2000,20000", help="image counts to tokenize (default: %(default)s)")
    ap.add_argument("--check-n", type=int, default=400, help="images for the kill/resume and torchrun checks")
    ap.add_argument("--root", default="/tmp/maskgit_data_scale", help="cache of folders, stores, tokenizer")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-seconds", type=float, default=0,
                    help="stop a tokenize run after this long (SIGKILL) and report it as partial (0: no limit)")
    ap.add_argument("--skip-checks", action="store_true", help="only the --sizes runs")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MASKGIT_HOME": str(root / "cache"), "PYTHONUNBUFFERED": "1"}
    os.environ["MASKGIT_HOME"] = env["MASKGIT_HOME"]
    torch.manual_seed(0)
    model = VQGAN(vqgan_preset(PRESET)).eval()
    tok = root / "tokenizer"
    save_model(model, tok)
    params = sum(p.numel() for p in model.parameters())
    sizes = [int(s) for s in args.sizes.split(",") if s]
    res = {"machine": {"cpu": _cpu_model(), "threads": torch.get_num_threads(),
                       "torch": torch.__version__, "load_avg_start": os.getloadavg()},
           "preset": PRESET, "params": params, "workers": args.workers, "batch_size": args.batch_size, "runs": []}

    def tokenize_cmd(folder: Path, out: Path, extra=()) -> list[str]:
        return ["-m", "maskgit", "tokenize", "--model", str(tok), "--data", f"imagefolder:{folder}", "--out",
                str(out), "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--device", "cpu",
                *extra]

    for n in sizes:
        t0 = time.time()
        folder = build_folder(root, n)
        ImageFolderDataset(folder, image_size=256)  # the one-time verification pass, cached, outside the timing
        print(f"N={n}: folder ready in {time.time() - t0:.0f}s", flush=True)
        lo = loader_ceiling(folder, args.workers, args.batch_size, limit=min(n, 1000))
        enc = encoder_ceiling(model, args.batch_size, batches=max(2, 160 // args.batch_size))
        out = root / f"store_{n}"
        start = time.time()
        over = (lambda: time.time() - start > args.max_seconds) if args.max_seconds else None
        r = run_measured([sys.executable, *tokenize_cmd(folder, out)], env, kill_when=over)
        if r["killed"]:  # partial: images done from the store's progress bytes
            d = np.frombuffer((partial_dir(out) / "done.u8").read_bytes(), dtype=np.uint8)
            done_imgs = int(d.sum()) * args.batch_size
            ips, partial = done_imgs / r["wall_s"], f"{done_imgs} of {n} images in {r['wall_s']:.0f} s (killed)"
        else:
            assert r["rc"] == 0, r["output"][-2000:]
            ips, partial = float(r["output"].rsplit("(", 1)[1].split()[0]), None
        row = {"n": n, "partial": partial, "images_per_s": ips, "loader_ceiling": lo, "encoder_ceiling": enc,
               "share_of_lower_ceiling": ips / min(lo, enc), "wall_s": r["wall_s"], "maxrss_mib": r["maxrss_mib"],
               "tree_pss_mib": r["tree_pss_mib"], "load_avg": os.getloadavg()}
        res["runs"].append(row)
        print(json.dumps(row), flush=True)
        _save(res, args.json)

    if args.skip_checks:
        return 0
    # kill -9 half-way + --resume, and torchrun, against one uninterrupted 1-process store
    n = args.check_n
    folder = build_folder(root, n)
    ImageFolderDataset(folder, image_size=256)
    ref = root / f"check_ref_{n}"
    r = run_measured([sys.executable, *tokenize_cmd(folder, ref)], env)
    assert r["rc"] == 0, r["output"][-2000:]
    cut = root / f"check_cut_{n}"
    done = partial_dir(cut) / "done.u8"

    def half_done() -> bool:
        try:
            d = np.frombuffer(done.read_bytes(), dtype=np.uint8)
        except OSError:
            return False
        return d.size > 0 and d.mean() >= 0.5

    r1 = run_measured([sys.executable, *tokenize_cmd(folder, cut)], env, kill_when=half_done)
    d = np.frombuffer(done.read_bytes(), dtype=np.uint8)
    r2 = run_measured([sys.executable, *tokenize_cmd(folder, cut, ["--resume"])], env)
    assert r2["rc"] == 0, r2["output"][-2000:]
    res["kill_resume"] = {"n": n, "killed": r1["killed"], "rc_killed": r1["rc"], "batches_done_at_kill":
                          f"{int(d.sum())}/{d.size}", "identical": _store_bytes(cut) == _store_bytes(ref)}
    print(json.dumps(res["kill_resume"]), flush=True)
    two = root / f"check_torchrun_{n}"
    r3 = run_measured([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                       "29561", *tokenize_cmd(folder, two)], env)
    res["torchrun"] = {"n": n, "rc": r3["rc"], "identical": r3["rc"] == 0 and _store_bytes(two) == _store_bytes(ref),
                       "wall_s": r3["wall_s"]}
    print(json.dumps(res["torchrun"]), flush=True)
    _save(res, args.json)
    return 0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _save(res: dict, path: str | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
