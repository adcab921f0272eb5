"""Offline face-quality metrics: distribution distances in a face feature space, plus pixel statistics.

`compute_metrics` is the full report of `python -m facegen.evaluate`; `quick_metrics` is the cheap
subset (~500 images) the trainer can log while it runs. Every record carries `feature_net_hash`,
because FD/KID values are only comparable when computed with the same feature net.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn

from facegen.metrics.distances import (
    _as_float64,
    _chunk_rows,
    frechet_distance,
    frechet_distance_from_stats,
    gaussian_stats,
    kernel_distance,
    precision_recall_density_coverage,
)
from facegen.metrics.features import (
    FeatureNet,
    FeatureNetError,
    InceptionFeatures,
    as_float01,
    default_feature_net,
    extract_features,
    load_feature_net,
    save_feature_net,
    train_feature_net,
    weights_hash,
)
from facegen.metrics.image_stats import (
    eigenface_distance,
    eigenfaces,
    laplacian_variance,
    radial_log_spectrum,
    reconstruction_metrics,
    sharpness_ratio,
    spectral_distance,
    texture_outliers,
)


def _net_name(net: nn.Module) -> str:
    return str(getattr(net, "name", "features"))


def _net_hash(net: nn.Module) -> str:
    h = getattr(net, "hash", None)
    return str(h) if h is not None else weights_hash(net.state_dict())


def compute_metrics(fake01: torch.Tensor | np.ndarray, real01: torch.Tensor | np.ndarray, feature_net: nn.Module,
                    recon01: torch.Tensor | np.ndarray | None = None,
                    real_for_recon01: torch.Tensor | np.ndarray | None = None, kid_subsets: int = 100,
                    kid_subset_size: int = 1000, k: int = 5,
                    inception: InceptionFeatures | str | os.PathLike | None = None, batch_size: int = 256,
                    device: str | torch.device = "cpu", seed: int = 0,
                    real_cache: dict | None = None) -> dict[str, Any]:
    """All metrics of samples against real faces (and of reconstructions against their inputs).

    Keys: fd_<net>, kid_<net>, kid_<net>_std, precision, recall, density, coverage,
    fd_eigenfaces, sharpness_ratio, texture_outliers, spectral_distance, feature_net_hash, num_samples,
    num_real; the recon_* keys when `recon01` and `real_for_recon01` are given; fid_inception when
    `inception` (a module or a local InceptionV3 weights file) is given. Images are uint8 or float in [0, 1].
    ``real_cache``: a dict kept by the caller for one real set (the same ``real01`` every call): the
    real faces' features and eigenfaces are computed on the first call and reused by later ones
    (``facegen.evaluate ... baseline=`` measures two models against the same faces).
    """
    fake, real = as_float01(fake01), as_float01(real01)
    if (recon01 is None) != (real_for_recon01 is None):
        raise ValueError("give both recon01 and real_for_recon01 (the faces that were reconstructed), or neither")
    name = _net_name(feature_net)
    cache = real_cache if real_cache is not None else {}
    f_fake = extract_features(feature_net, fake, batch_size, device)
    net_hash = _net_hash(feature_net)
    net_key = ("features", net_hash)
    if net_key not in cache:
        cache[net_key] = extract_features(feature_net, real, batch_size, device)
    f_real = cache[net_key]
    if "eigenfaces" not in cache:
        cache["eigenfaces"] = eigenfaces(real)
    kid, kid_std = kernel_distance(f_real, f_fake, kid_subsets, kid_subset_size, seed=seed)
    out: dict[str, Any] = {
        f"fd_{name}": frechet_distance(f_real, f_fake),
        f"kid_{name}": kid,
        f"kid_{name}_std": kid_std,
        **precision_recall_density_coverage(f_real, f_fake, k),
        "fd_eigenfaces": eigenface_distance(fake, real, real_eigenfaces=cache["eigenfaces"]),
        "sharpness_ratio": sharpness_ratio(fake, real),
        "texture_outliers": texture_outliers(fake, real),
        "spectral_distance": spectral_distance(fake, real),
    }
    if recon01 is not None:
        out.update(reconstruction_metrics(real_for_recon01, recon01, feature_net, batch_size, device))
    if inception is not None:
        inc = inception if isinstance(inception, nn.Module) else InceptionFeatures(inception)
        out["fid_inception"] = frechet_distance(extract_features(inc, real, min(batch_size, 64), device),
                                                extract_features(inc, fake, min(batch_size, 64), device))
    out.update({"feature_net_hash": net_hash, "num_samples": int(fake.shape[0]),
                "num_real": int(real.shape[0])})
    return out


def quick_metrics(fake01: torch.Tensor | np.ndarray, real01: torch.Tensor | np.ndarray, feature_net: nn.Module,
                  max_samples: int = 500, kid_subsets: int = 10, k: int = 5, seed: int = 0,
                  batch_size: int = 256, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The cheap in-training subset: fd, kid, sharpness_ratio, precision, recall on <= max_samples each.

    Both sets are subsampled with a generator seeded by `seed`, so repeated calls on the same
    real set compare the samples of successive checkpoints against the same real faces.
    """
    g = torch.Generator().manual_seed(int(seed))
    fake, real = torch.as_tensor(fake01), torch.as_tensor(real01)
    if fake.shape[0] > max_samples:
        fake = fake[torch.randperm(fake.shape[0], generator=g)[:max_samples]]
    if real.shape[0] > max_samples:
        real = real[torch.randperm(real.shape[0], generator=g)[:max_samples]]
    fake, real = as_float01(fake), as_float01(real)
    name = _net_name(feature_net)
    f_fake = extract_features(feature_net, fake, batch_size, device)
    f_real = extract_features(feature_net, real, batch_size, device)
    prdc = precision_recall_density_coverage(f_real, f_fake, k)
    return {
        f"fd_{name}": frechet_distance(f_real, f_fake),
        f"kid_{name}": kernel_distance(f_real, f_fake, kid_subsets, max_samples, seed=seed)[0],
        "sharpness_ratio": sharpness_ratio(fake, real),
        "precision": prdc["precision"],
        "recall": prdc["recall"],
        "feature_net_hash": _net_hash(feature_net),
    }


def nearest_neighbours(query_feats: torch.Tensor | np.ndarray, reference_feats: torch.Tensor | np.ndarray,
                       k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances [Q, k] float64, indices [Q, k]) of each query's k nearest reference features, closest first.

    How a person checks that samples are new faces rather than copies of training faces: a copy has
    a training face at distance ~0 (float64, so round-off stays ~1e-7 of the feature norm). Chunked
    like the PRDC distances, so a 30k-face training set fits in memory.
    """
    query = _as_float64(query_feats, "nearest_neighbours query")
    ref = _as_float64(reference_feats, "nearest_neighbours reference")
    if not 1 <= int(k) <= ref.shape[0]:
        raise ValueError(f"nearest_neighbours: k={k} but {ref.shape[0]} reference features")
    dists, index = [], []
    step = _chunk_rows(ref.shape[0])
    for i in range(0, query.shape[0], step):
        d, j = torch.cdist(query[i:i + step], ref).topk(int(k), dim=1, largest=False, sorted=True)
        dists.append(d)
        index.append(j)
    if not dists:
        return torch.empty(0, int(k), dtype=torch.float64), torch.empty(0, int(k), dtype=torch.long)
    return torch.cat(dists), torch.cat(index)


__all__ = [
    "FeatureNet", "FeatureNetError", "InceptionFeatures", "as_float01", "compute_metrics", "default_feature_net",
    "eigenface_distance", "eigenfaces", "extract_features", "frechet_distance", "frechet_distance_from_stats", "gaussian_stats",
    "kernel_distance", "laplacian_variance", "load_feature_net", "nearest_neighbours",
    "precision_recall_density_coverage", "quick_metrics", "radial_log_spectrum", "reconstruction_metrics",
    "save_feature_net", "sharpness_ratio", "spectral_distance", "texture_outliers", "train_feature_net",
    "weights_hash",
]
