"""Sample generation for evaluation, timing, and the benchmark tables (the seed's claim, schedules, trade-offs).

Everything here drives the pipeline; metrics come from ``maskgit.evaluation.metrics``."""

from __future__ import annotations

import datetime
import platform
import statistics
import time
from pathlib import Path

import torch

from maskgit.pipeline import Pipeline
from maskgit.storage.files import atomic_write


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {torch.get_num_threads()} threads, {dev}, torch {torch.__version__}"


def uniform_labels(num: int, num_classes: int) -> torch.Tensor:
    return torch.arange(num) % num_classes if num_classes else torch.full((num,), -1)


@torch.inference_mode()
def generate(pipe: Pipeline, labels: torch.Tensor, arch: str = "maskgit", sample_kw: dict | None = None,
             seed: int = 0, batch_size: int = 100, use_cache: bool = True,
             progress: bool = False) -> tuple[torch.Tensor, float]:
    """Images (N,C,H,W) float for ``labels`` and the wall time in seconds (tokenizer decoding included); chunk c
    of ``batch_size`` images is seeded with ``chunk_seed(seed, c)``, as `maskgit sample` seeds its chunks.
    ``progress``: a progress bar on a terminal."""
    from tqdm import tqdm

    from maskgit.sampling.noise import chunk_seed
    sample_kw = sample_kw or {}
    out = []
    t0 = time.perf_counter()
    with tqdm(total=len(labels), unit="img", desc="sampling", disable=None if progress else True, leave=False) as bar:
        for c, i in enumerate(range(0, len(labels), batch_size)):
            lab = labels[i:i + batch_size]
            out.append(pipe.generate(lab.tolist(), seed=chunk_seed(seed, c), output="tensor", arch=arch,
                                     use_cache=use_cache, **sample_kw))
            bar.update(len(lab))
    return torch.cat(out), time.perf_counter() - t0


def time_per_image(pipe: Pipeline, arch: str, batch: int, sample_kw: dict, repeats: int = 3,
                   use_cache: bool = True) -> float:
    """Median seconds per image over ``repeats`` batches of ``batch`` images (after one warm-up)."""
    labels = uniform_labels(batch, pipe.transformer.config.num_classes)
    generate(pipe, labels[:1], arch, sample_kw, 0, batch, use_cache)
    times = [generate(pipe, labels, arch, sample_kw, r, batch, use_cache)[1] / batch for r in range(repeats)]
    return statistics.median(times)


INDEPENDENT_DIR = Path(__file__).resolve().parents[1] / "weights" / "eval"


def independent_features(dataset: str, channels: int | None = None, image_size: int | None = None):
    """The second, independent feature network shipped for ``dataset`` (``weights/eval/<dataset>/``: a classifier of
    another width and seed that neither scores class agreement nor picks candidates), or None when none ships or
    it does not fit the images."""
    from maskgit.storage.checkpoint import load_model
    path = INDEPENDENT_DIR / str(dataset).split(":", 1)[0]
    if not (path / "config.json").exists():
        return None
    net = load_model(path, "features")
    c = net.config
    if (channels is not None and c.channels != channels) or (image_size is not None and c.image_size != image_size):
        return None
    return net


class Evaluator:
    """Real reference statistics + feature network + classifier, reused across many evaluations. ``independent``:
    a second feature network whose FD is reported beside the first (``fd_independent``), so that no setting is
    chosen in the feature space of the network that also scores class agreement."""

    def __init__(self, features_net, real_images: torch.Tensor, cache: str | Path | None = None, independent=None):
        from maskgit.evaluation.metrics import ProjectFeatures, reference_stats
        self.net = features_net.eval()
        self.extractor = ProjectFeatures(self.net)
        self.real = reference_stats(self.extractor, real_images, cache)
        self.second = None
        if independent is not None:
            self.second = ProjectFeatures(independent.eval(), name="independent")
            self.second_real = reference_stats(self.second, real_images)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor | None) -> dict:
        from maskgit.evaluation.metrics import extract_features, frechet_distance, iter_metrics
        lab = labels if labels is not None and (labels >= 0).all() else None
        out = dict(iter_metrics(images, lab, self.real, self.extractor, self.net))
        if self.second is not None:
            fake = extract_features(self.second, images)
            out["fd_independent"] = frechet_distance(torch.as_tensor(self.second_real["features"]), fake)
        return out


def load_real(dataset: str, split: str, image_size: int, limit: int | None = None) -> torch.Tensor:
    from maskgit.data.datasets import load_dataset
    ds = load_dataset(dataset, split=split, image_size=image_size)
    n = len(ds) if limit is None else min(limit, len(ds))
    if hasattr(ds, "images"):
        return ds.images[:n].float() / 255
    return torch.stack([ds[i][0] for i in range(n)])


def append_results(path: str | Path | None, title: str, command: str, table: str, notes: str = "") -> None:
    """Write one section (title, command, machine, date, table) into a results file: it replaces the section of the
    same title (a file holds each claim's latest table; git keeps the history), or is appended. No path: nothing
    is written (the table was printed)."""
    if path is None:
        return
    path = Path(path)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"## {title}\n\nCommand: `{command}`  \nMachine: {machine_description()}  \nDate: {date}\n\n"
            f"{table}\n" + (f"\n{notes}\n" if notes else ""))
    old = path.read_text() if path.exists() else ""
    head = f"## {title}\n"
    start = 0 if old.startswith(head) else old.find("\n" + head) + 1  # 0 when absent too: checked below
    if old[start:].startswith(head):
        end = old.find("\n## ", start + len(head))
        new = old[:start] + text + (old[end:] if end >= 0 else "")
    else:
        new = old.rstrip("\n") + "\n\n" + text if old else text
    atomic_write(path, lambda f: f.write(new.encode()))


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)




