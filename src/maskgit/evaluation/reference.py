"""Evaluate uint8 samples against a reference: real images, or an ADM reference batch's ``mu`` / ``sigma``.

The samples and the reference are what ``maskgit.storage.samples`` reads (ADM ``.npz`` or PNG folders), so the
metrics of a file equal those of the same uint8 samples held in memory."""

from __future__ import annotations

import numpy as np
import torch

from maskgit.errors import MaskGITError
from maskgit.evaluation.metrics import (
    ProjectFeatures,
    classifier_logits,
    extract_features,
    inception_score,
    iter_metrics,
    reference_stats,
)
from maskgit.storage.samples import to_channels


def frechet_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), with the square root's trace from the eigenvalues of
    S1 S2 (real, >= 0 for covariances; tiny negative or imaginary parts from rounding are dropped)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise MaskGITError(f"feature statistics differ in size: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs "
                           f"{s2.shape}")
    eig = np.linalg.eigvals(s1 @ s2)
    tr_sqrt = float(np.sqrt(np.clip(eig.real, 0, None)).sum())
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # uint8 (N,C,H,W)


def evaluate_samples(net, images: np.ndarray, labels: np.ndarray | None, reference: dict) -> dict:
    """Metrics of uint8 samples (N,H,W,3|1) with ``labels`` (None or -1 = unlabelled) against ``reference``
    (``images`` uint8 and/or ``mu``/``sigma``, as ``read_samples`` returns). FD uses the reference's ``mu``/``sigma``
    when they are in the feature network's space; KID and precision/recall need reference images."""
    extractor = ProjectFeatures(net.eval())
    fake = _nchw(to_channels(images, extractor.channels))
    lab = None if labels is None or (np.asarray(labels) < 0).any() else torch.as_tensor(np.asarray(labels))
    stats = "mu" in reference and len(reference["mu"]) == extractor.dim
    if "mu" in reference and not stats and reference.get("images") is None:
        raise MaskGITError(f"the reference's mu/sigma have {len(reference['mu'])} features but the feature network "
                           f"gives {extractor.dim} (they come from another network): use a reference with arr_0 "
                           f"images")
    if reference.get("images") is not None:
        real = reference_stats(extractor, _nchw(to_channels(reference["images"], extractor.channels)))
        out = dict(iter_metrics(fake, lab, real, extractor, net))
        feats = None
    else:
        feats = extract_features(extractor, fake).double().numpy()
        logits = classifier_logits(net, fake)
        out = {f"fd_{extractor.name}": 0.0,
               "inception_score": inception_score(logits, splits=min(10, len(logits)), from_logits=True)[0]}
        if lab is not None:
            out["class_accuracy"] = float((logits.argmax(1) == lab.long()).double().mean())
    if stats:
        if feats is None:
            feats = extract_features(extractor, fake).double().numpy()
        out[f"fd_{extractor.name}"] = frechet_from_stats(reference["mu"], reference["sigma"], feats.mean(0),
                                                         np.cov(feats, rowvar=False))
    return out
