"""Sample-quality metrics with pluggable feature networks: Frechet distance and KID (through torchmetrics),
k-NN precision/recall, Inception Score and classifier accuracy.

A *feature extractor* maps float images (B,C,H,W) in [0,1] to (B,D) features. ``ProjectFeatures`` uses the
project's own ``FeatureNet`` (works offline); ``InceptionFeatures`` is the standard FID path (needs
``pip install maskgit-suite[fid]`` and the Inception weights). FD over FeatureNet features is *not* comparable with
published FIDs; the metric names carry the extractor's name (``fd_featurenet``, ``fd_inception``) for that reason.

``evaluate_images`` runs them all and returns ``(name, value)`` pairs; real-image statistics are cached in a
``.npz`` (no pickle) by ``reference_stats``."""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from maskgit.errors import MaskGITError
from maskgit.storage.files import atomic_write
from maskgit.storage.images import to_uint8

BATCH_SIZE = 500
STATS_VERSION = 1


@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps float images (B,C,H,W) in [0,1] to features (B,D); ``name`` labels the metrics, ``dim`` is D.
    An optional ``fingerprint`` (e.g. a hash of the weights) guards cached reference statistics."""

    name: str
    dim: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def _weights_fingerprint(module: nn.Module) -> str:
    h = hashlib.blake2b(digest_size=8)
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class ProjectFeatures:
    """Penultimate features of a (trained) ``FeatureNet``, or of any module with ``.features(x) -> (B,D)`` and
    ``.config.feature_dim``."""

    def __init__(self, net: nn.Module, name: str = "featurenet"):
        self.net = net.eval()
        self.device = next(net.parameters()).device
        if self.device.type == "cpu":
            net.to(memory_format=torch.channels_last)  # same results, ~1.5x faster convolutions on CPU
        self.name = name
        self.dim = int(net.config.feature_dim)
        self.channels = int(net.config.channels)
        self.fingerprint = f"{name}-{_weights_fingerprint(net)}"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] != self.channels:
            raise MaskGITError(f"the feature network takes {self.channels}-channel images, got "
                               f"{images.shape[1]} channels: use a feature network trained on this data")
        x = images.to(self.device)
        if self.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net.features(x)


class InceptionFeatures:
    """The standard FID feature path: torch-fidelity's Inception-v3 (2048-d pool features, as wrapped by
    torchmetrics; TF1-style resizing to 299 px). Grey images are repeated to RGB."""

    name = "inception"
    dim = 2048

    def __init__(self, weights_path: str | None = None, device: str | torch.device = "cpu"):
        try:
            import torch_fidelity  # noqa: F401
            from torchmetrics.image.fid import NoTrainInceptionV3
        except ImportError:
            raise MaskGITError("the Inception feature path needs torch-fidelity: `pip install maskgit-suite[fid]`; its "
                               "Inception weights must also be available (downloaded once, or pass weights_path "
                               "to a local pt_inception-2015-12-05 file). Offline, use the project's FeatureNet "
                               "(ProjectFeatures) instead") from None
        try:
            self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(self.dim)],
                                          feature_extractor_weights_path=weights_path, antialias=False)
        except (OSError, RuntimeError, ValueError, AssertionError) as e:  # download / missing or bad weights
            raise MaskGITError(f"could not load the Inception weights ({e}); they must be downloadable or given "
                               "as weights_path") from None
        self.net = self.net.to(device).eval()
        self.fingerprint = f"inception-{weights_path or 'default'}"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        x = torch.from_numpy(to_uint8(images)).permute(0, 3, 1, 2)  # (B, 3, H, W) uint8
        return self.net(x.to(next(self.net.parameters()).device))


# ---------------------------------------------------------------- images in, features out
def as_nchw(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 images NHWC/NCHW/NHW or float images NCHW in [0,1] -> a tensor in NCHW layout (dtype kept)."""
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if not torch.is_tensor(x):
        raise MaskGITError(f"images must be a tensor or numpy array, got {type(images).__name__}")
    if x.dtype == torch.uint8:
        if x.dim() == 3:
            x = x[:, None]  # (N,1,H,W)
        elif x.dim() == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW
    elif x.is_floating_point():
        if x.dim() != 4:
            raise MaskGITError(f"float images must be (N,C,H,W) in [0,1], got shape {tuple(x.shape)}")
        lo, hi = (float(x.min()), float(x.max())) if x.numel() else (0.0, 0.0)
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1e-3 or hi > 1 + 1e-3:
            raise MaskGITError(f"float images must lie in [0,1], got values in [{lo:.3g}, {hi:.3g}] "
                               "(map [-1,1] outputs with (x + 1) / 2)")
    else:
        raise MaskGITError(f"images must be uint8 or float, got {x.dtype}")
    if x.dim() != 4:
        raise MaskGITError(f"images must be a batch (N,C,H,W) or (N,H,W,C), got shape {tuple(x.shape)}")
    return x


def _float_batch(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float().clamp(0, 1)


@torch.inference_mode()
def extract_features(extractor: FeatureExtractor, images, batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """Features (N,D) float64 on the CPU, extracted in batches of ``batch_size``."""
    x = as_nchw(images)
    out = [extractor(_float_batch(x[i:i + batch_size])).double().cpu() for i in range(0, len(x), batch_size)]
    if not out:
        raise MaskGITError("no images to extract features from")
    return torch.cat(out)


# ---------------------------------------------------------------- torchmetrics adapters
def _torchmetrics_image():
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance
    except ImportError:
        raise MaskGITError("FD and KID need torchmetrics: `pip install maskgit-suite[metrics]`") from None
    return FrechetInceptionDistance, KernelInceptionDistance


class ImageFeatures(nn.Module):
    """The ``feature=`` module torchmetrics' FID/KID call: uint8 (0..255) or float ([0,1]) images -> (B,D)
    float64 features of ``extractor``."""

    def __init__(self, extractor: FeatureExtractor):
        super().__init__()
        self.extractor = extractor
        self.num_features = int(extractor.dim)  # torchmetrics reads this instead of probing with a dummy image

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.extractor(_float_batch(images)).double()


class _GivenFeatures(nn.Module):
    """Identity ``feature=`` module: lets torchmetrics consume features (B,D) that were extracted already."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return feats.double()


def fid_metric(extractor: FeatureExtractor):
    """A torchmetrics ``FrechetInceptionDistance`` over ``extractor``; ``update(images, real=...)`` takes float
    images in [0,1] (or uint8)."""
    fid_cls, _ = _torchmetrics_image()
    return fid_cls(feature=ImageFeatures(extractor), normalize=True)


def kid_metric(extractor: FeatureExtractor, subsets: int = 100, subset_size: int = 1000):
    """A torchmetrics ``KernelInceptionDistance`` over ``extractor`` (float images in [0,1] or uint8)."""
    _, kid_cls = _torchmetrics_image()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        return kid_cls(feature=ImageFeatures(extractor), subsets=subsets, subset_size=subset_size, normalize=True)


def _feature_pair(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.as_tensor(np.asarray(a) if not torch.is_tensor(a) else a).double().cpu()
    b = torch.as_tensor(np.asarray(b) if not torch.is_tensor(b) else b).double().cpu()
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise MaskGITError(f"feature sets must be (N,D) with the same D, got {tuple(a.shape)} and {tuple(b.shape)}")
    if len(a) < 2 or len(b) < 2:
        raise MaskGITError(f"need at least 2 samples per set, got {len(a)} and {len(b)}")
    return a, b


def frechet_distance(feats_a, feats_b) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N,D) (torchmetrics' FID formula)."""
    a, b = _feature_pair(feats_a, feats_b)
    fid_cls, _ = _torchmetrics_image()
    metric = fid_cls(feature=_GivenFeatures(a.shape[1]), normalize=True)
    metric.update(a, real=True)
    metric.update(b, real=False)
    return float(metric.compute())


def kid(feats_a, feats_b, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (mean, std over random subsets) between two feature sets (N,D), through
    torchmetrics; the subsets are drawn from ``seed`` without disturbing the global RNG."""
    a, b = _feature_pair(feats_a, feats_b)
    _, kid_cls = _torchmetrics_image()
    size = min(subset_size, len(a), len(b))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = kid_cls(feature=_GivenFeatures(a.shape[1]), subsets=subsets, subset_size=size)
    metric.update(a, real=True)
    metric.update(b, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


# ---------------------------------------------------------------- classifier-based and k-NN metrics
def inception_score(logits_or_probs, splits: int = 10, from_logits: bool | None = None) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) per split of the rows (in order), as (mean, std) over splits.

    Rows that are non-negative and sum to 1 are taken as probabilities unless ``from_logits`` says otherwise."""
    p = torch.as_tensor(np.asarray(logits_or_probs) if not torch.is_tensor(logits_or_probs)
                        else logits_or_probs).double().cpu()
    if p.dim() != 2 or len(p) == 0:
        raise MaskGITError(f"inception_score needs (N, num_classes) predictions, got shape {tuple(p.shape)}")
    if not 1 <= splits <= len(p):
        raise MaskGITError(f"splits must be between 1 and the number of samples ({len(p)}), got {splits}")
    if from_logits is None:
        from_logits = not (bool((p >= 0).all()) and torch.allclose(p.sum(1), torch.ones(len(p),
                                                                                         dtype=p.dtype), atol=1e-4))
    if from_logits:
        p = p.softmax(dim=1)
    scores = []
    for part in torch.tensor_split(p, splits):
        py = part.mean(dim=0, keepdim=True)  # (1, K)
        kl = (torch.xlogy(part, part) - torch.xlogy(part, py)).sum(dim=1).mean()
        scores.append(math.exp(float(kl)))
    s = np.asarray(scores)
    return float(s.mean()), float(s.std())


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = a.square().sum(1)[:, None] + b.square().sum(1)[None, :] - 2 * a @ b.T  # (Na, Nb)
    return d.clamp_min_(0)


def _knn_radii(x: torch.Tensor, k: int, batch: int) -> torch.Tensor:
    """Squared distance from each point to its k-th nearest other point in the same set."""
    return torch.cat([_sq_dists(x[i:i + batch], x).topk(k + 1, dim=1, largest=False).values[:, -1]
                      for i in range(0, len(x), batch)])


def _covered(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, batch: int) -> torch.Tensor:
    """Whether each point lies inside at least one k-NN ball around the centres."""
    return torch.cat([(_sq_dists(points[i:i + batch], centres) <= radii[None, :]).any(dim=1)
                      for i in range(0, len(points), batch)])


def precision_recall(real_feats, fake_feats, k: int = 3, batch_size: int = 1000) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): precision = share of fakes inside the real
    manifold (union of k-NN balls around the real features), recall = share of reals inside the fake one."""
    real, fake = (f.float() for f in _feature_pair(real_feats, fake_feats))  # fp32 distances: ~2x faster
    if not 1 <= k < min(len(real), len(fake)):
        raise MaskGITError(f"k must be at least 1 and below the set sizes ({len(real)}, {len(fake)}), got {k}")
    precision = _covered(fake, real, _knn_radii(real, k, batch_size), batch_size).double().mean()
    recall = _covered(real, fake, _knn_radii(fake, k, batch_size), batch_size).double().mean()
    return float(precision), float(recall)


@torch.inference_mode()
def classifier_logits(classifier: nn.Module, images, batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """Logits (N, K) of ``classifier`` (float images in [0,1] -> logits) over a batch of images, on the CPU."""
    x = as_nchw(images)
    device = next(classifier.parameters()).device
    return torch.cat([classifier(_float_batch(x[i:i + batch_size]).to(device)).float().cpu()
                      for i in range(0, len(x), batch_size)])


def class_accuracy(classifier: nn.Module, images, labels, batch_size: int = BATCH_SIZE) -> float:
    """Share of images that ``classifier`` assigns to the class they were generated for."""
    labels = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels).long().cpu()
    if len(labels) != len(images):
        raise MaskGITError(f"{len(images)} images but {len(labels)} labels")
    return float((classifier_logits(classifier, images, batch_size).argmax(1) == labels).double().mean())


# ---------------------------------------------------------------- reference statistics (.npz, no pickle)
def _images_fingerprint(x: torch.Tensor) -> str:
    return hashlib.blake2b(x.contiguous().numpy().tobytes(), digest_size=8).hexdigest()


def reference_stats(extractor: FeatureExtractor, images, cache: str | Path | None = None,
                    batch_size: int = BATCH_SIZE) -> dict:
    """Features of the real images plus their mean and covariance: dict(mu, sigma, features, name, fingerprint,
    images). With ``cache``, reuse a matching ``.npz`` (same extractor weights and images) or write one."""
    x = as_nchw(images).cpu()
    fingerprint = str(getattr(extractor, "fingerprint", extractor.name))
    images_fp = _images_fingerprint(x)
    if cache is not None and Path(cache).exists():
        stats = load_stats(cache)
        if stats["fingerprint"] == fingerprint and stats["images"] == images_fp:
            return stats
    feats = extract_features(extractor, x, batch_size).numpy()
    stats = {"mu": feats.mean(axis=0), "sigma": np.cov(feats, rowvar=False), "features": feats,
             "name": extractor.name, "fingerprint": fingerprint, "images": images_fp}
    if cache is not None:
        save_stats(cache, stats)
    return stats


def save_stats(path: str | Path, stats: dict) -> Path:
    """Write reference statistics to a ``.npz`` (arrays and strings only; written atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, version=np.asarray(STATS_VERSION), mu=np.asarray(stats["mu"], np.float64),
             sigma=np.asarray(stats["sigma"], np.float64), features=np.asarray(stats["features"], np.float64),
             name=np.asarray(str(stats["name"])), fingerprint=np.asarray(str(stats["fingerprint"])),
             images=np.asarray(str(stats.get("images", "")))))
    return path


def load_stats(path: str | Path) -> dict:
    """Read statistics written by ``save_stats`` (never unpickles)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) > STATS_VERSION:
                raise MaskGITError(f"{path} was written by a newer maskgit (stats version {int(z['version'])})")
            stats = {k: z[k] for k in ("mu", "sigma", "features")}
            stats.update({k: str(z[k]) for k in ("name", "fingerprint", "images")})
    except (OSError, ValueError, KeyError) as e:
        raise MaskGITError(f"{path} is not a maskgit statistics file ({e}); delete it to recompute") from None
    return stats


# ---------------------------------------------------------------- the evaluator
def iter_metrics(fake_images, labels, real, extractor: FeatureExtractor, classifier: nn.Module | None = None,
                 k: int = 3, kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0,
                 batch_size: int = BATCH_SIZE, cache: str | Path | None = None) -> Iterator[tuple[str, float]]:
    """Yield ``(name, value)`` for FD, KID (mean), precision and recall over ``extractor`` features, then the
    Inception Score and class accuracy of ``classifier`` (when given; accuracy needs ``labels``).

    ``real`` is real images or a dict from ``reference_stats``; fakes are uint8 NHWC/NCHW or float NCHW."""
    real_stats = real if isinstance(real, dict) else reference_stats(extractor, real, cache, batch_size)
    fake = as_nchw(fake_images)
    fake_feats = extract_features(extractor, fake, batch_size)
    real_feats = torch.as_tensor(real_stats["features"])
    n = extractor.name
    yield f"fd_{n}", frechet_distance(real_feats, fake_feats)
    yield f"kid_{n}", kid(real_feats, fake_feats, kid_subsets, kid_subset_size, seed)[0]
    precision, recall = precision_recall(real_feats, fake_feats, k=k)
    yield f"precision_{n}", precision
    yield f"recall_{n}", recall
    if classifier is not None:
        if isinstance(extractor, ProjectFeatures) and classifier is extractor.net and hasattr(classifier, "head"):
            with torch.no_grad():  # the features already went through this network: reuse them
                logits = classifier.head(fake_feats.float().to(extractor.device)).cpu()
        else:
            logits = classifier_logits(classifier, fake, batch_size)
        yield "inception_score", inception_score(logits, splits=min(10, len(logits)), from_logits=True)[0]
        if labels is not None:
            labels = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels).long()
            if len(labels) != len(logits):
                raise MaskGITError(f"{len(logits)} images but {len(labels)} labels")
            yield "class_accuracy", float((logits.argmax(1) == labels).double().mean())


def evaluate_images(fake_images, labels, real_images, extractor: FeatureExtractor,
                    classifier: nn.Module | None = None, k: int = 3, kid_subsets: int = 100,
                    kid_subset_size: int = 1000, seed: int = 0, batch_size: int = BATCH_SIZE,
                    cache: str | Path | None = None) -> list[tuple[str, float]]:
    """All metrics of ``iter_metrics`` as a list of ``(name, value)`` pairs."""
    return list(iter_metrics(fake_images, labels, real_images, extractor, classifier, k=k, kid_subsets=kid_subsets,
                             kid_subset_size=kid_subset_size, seed=seed, batch_size=batch_size, cache=cache))
