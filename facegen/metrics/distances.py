"""Distances between two sets of features: Fréchet, kernel (KID), precision/recall/density/coverage.

All take features [N, D] (torch or numpy, any float dtype) and compute in float64: FD subtracts
traces of similar magnitude and loses digits in float32.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import torch
from torchmetrics.image.kid import poly_mmd


def _as_float64(feats: torch.Tensor | np.ndarray, what: str) -> torch.Tensor:
    x = torch.as_tensor(feats).detach().cpu().to(torch.float64)
    if x.ndim != 2:
        raise ValueError(f"{what}: features must be [N, D], got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what}: features contain NaN or inf (did the model produce NaN images?)")
    return x


def gaussian_stats(feats: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] (unbiased, N-1) of features, in float64."""
    x = _as_float64(feats, "gaussian_stats").numpy()
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {x.shape[0]}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                                eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)): the Fréchet (W2) distance of two Gaussians.

    The square root is scipy.linalg.sqrtm; when S1 S2 is singular enough for it to fail, both
    covariances get eps on the diagonal first (as pytorch-fid does).
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"Fréchet distance: shapes do not match (mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {s1.shape} vs {s2.shape})")
    with warnings.catch_warnings():
        # singular S1 S2 (fewer samples than dimensions) is expected; the finiteness check handles it
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = np.real(covmean)  # imaginary parts are round-off of a matrix with real square root
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)  # a distance; a tiny negative is round-off of two equal sets


def frechet_distance(feats_a: torch.Tensor | np.ndarray, feats_b: torch.Tensor | np.ndarray) -> float:
    """FD (FID when the features are Inception's) between two feature sets, via their Gaussian fits."""
    return frechet_distance_from_stats(*gaussian_stats(feats_a), *gaussian_stats(feats_b))


def kernel_distance(feats_a: torch.Tensor | np.ndarray, feats_b: torch.Tensor | np.ndarray, subsets: int = 100,
                    subset_size: int = 1000, degree: int = 3, seed: int = 0) -> tuple[float, float]:
    """KID: unbiased MMD^2 with the cubic polynomial kernel, mean and std over random subsets.

    torchmetrics' KernelInceptionDistance module draws subsets from the global RNG and refuses a
    subset larger than the data; here the subsets come from a seeded generator and their size is
    capped to half the smaller set (at least 2), so that subsets differ and the std measures how much
    the estimate moves (subsets of a whole set are the same set reordered: a std of 0), while the
    kernel and MMD are torchmetrics' own `poly_mmd`.
    """
    a, b = _as_float64(feats_a, "kernel_distance a"), _as_float64(feats_b, "kernel_distance b")
    smaller = min(a.shape[0], b.shape[0])
    if smaller < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {a.shape[0]} and {b.shape[0]}")
    m = min(int(subset_size), max(2, smaller // 2))
    g = torch.Generator().manual_seed(int(seed))
    scores = []
    for _ in range(max(1, int(subsets))):
        ia = torch.randperm(a.shape[0], generator=g)[:m]
        ib = torch.randperm(b.shape[0], generator=g)[:m]
        scores.append(poly_mmd(a[ia], b[ib], degree=degree))
    s = torch.stack(scores)
    return float(s.mean()), float(s.std(unbiased=False))


def _chunk_rows(n_cols: int) -> int:
    """Rows per chunk of a distance matrix so that one chunk stays near 64 MB of float64."""
    return max(1, (1 << 23) // max(1, n_cols))


def _kth_neighbour_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each point to its k-th nearest other point (the (k+1)-th, counting itself)."""
    radii = []
    step = _chunk_rows(x.shape[0])
    for i in range(0, x.shape[0], step):
        d = torch.cdist(x[i:i + step], x)
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def precision_recall_density_coverage(real_feats: torch.Tensor | np.ndarray, fake_feats: torch.Tensor | np.ndarray,
                                      k: int = 5) -> dict[str, float]:
    """Fidelity and diversity from k-NN balls (Kynkäänniemi et al. 2019; Naeem et al. 2020).

    precision: share of fakes inside some real k-NN ball; recall: share of reals inside some fake
    ball; density: mean number of real balls holding a fake, / k; coverage: share of real balls
    holding a fake. Balls are closed (distance <= radius), as in Kynkäänniemi's definition.
    Not in torchmetrics; written with chunked torch.cdist so 30k x 30k sets fit in memory.
    """
    real = _as_float64(real_feats, "precision/recall real")
    fake = _as_float64(fake_feats, "precision/recall fake")
    if min(real.shape[0], fake.shape[0]) <= k:
        raise ValueError(f"k={k} nearest neighbours need more than k images per set, got "
                         f"{real.shape[0]} real and {fake.shape[0]} fake")
    r_real = _kth_neighbour_radii(real, k)
    r_fake = _kth_neighbour_radii(fake, k)
    in_real_balls = torch.zeros(fake.shape[0], dtype=torch.float64)  # per fake: how many real balls
    real_covered = torch.zeros(real.shape[0], dtype=torch.bool)
    real_recalled = torch.zeros(real.shape[0], dtype=torch.bool)
    step = _chunk_rows(real.shape[0])
    for j in range(0, fake.shape[0], step):
        d = torch.cdist(fake[j:j + step], real)  # [fakes, reals]
        inside = d <= r_real[None, :]
        in_real_balls[j:j + step] = inside.sum(dim=1, dtype=torch.float64)
        real_covered |= inside.any(dim=0)
        real_recalled |= (d <= r_fake[j:j + step, None]).any(dim=0)
    return {
        "precision": float((in_real_balls > 0).double().mean()),
        "recall": float(real_recalled.double().mean()),
        "density": float(in_real_balls.sum() / (k * fake.shape[0])),
        "coverage": float(real_covered.double().mean()),
    }
