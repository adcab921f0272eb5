"""Pixel-level statistics: blur (Laplacian variance), frequency content (radial spectra), reconstructions.

These need no feature net (except `recon_feature_distance`) and catch what a VAE-GAN typically
gets wrong: VAE blur shows in the Laplacian and in the high-frequency end of the spectrum,
transposed-conv checkerboards as spectral peaks (Durall et al. 2020).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from facegen.metrics.features import as_float01, extract_features

_CHUNK = 1024
# the 4-neighbour Laplacian; a grouped conv2d does a whole batch in one call, where
# scipy.ndimage.laplace would need a loop over images and channels
_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)


def laplacian_variance(images01: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Per-image variance of the Laplacian (inner pixels, averaged over channels): low = blurry."""
    x = as_float01(images01)
    out = []
    for i in range(0, x.shape[0], _CHUNK):
        b = x[i:i + _CHUNK].double()
        c = b.shape[1]
        lap = F.conv2d(b, _LAPLACIAN.expand(c, 1, 3, 3), groups=c)
        out.append(lap.flatten(2).var(dim=2).mean(dim=1))
    return torch.cat(out)


def sharpness_ratio(fake01: torch.Tensor | np.ndarray, real01: torch.Tensor | np.ndarray) -> float:
    """Mean Laplacian variance of samples over that of real faces: < 1 blurrier, > 1 noisier than real."""
    real = float(laplacian_variance(real01).mean())
    if real <= 0:
        raise ValueError("sharpness_ratio: the real images have no edges at all (constant images?)")
    return float(laplacian_variance(fake01).mean()) / real


def texture_outliers(fake01: torch.Tensor | np.ndarray, real01: torch.Tensor | np.ndarray,
                     quantile: float = 0.99) -> float:
    """Share of samples with more edge energy than `quantile` of the real faces (Laplacian variance).

    A GAN that collapses part of its prior onto a texture (stripes, a lattice) makes a few samples far
    sharper than any face; the sharpness ratio averages them with the rest, this counts them. Real
    faces against other real faces score about 1 - quantile (0.01); blur scores 0.
    """
    real = laplacian_variance(real01)
    threshold = torch.quantile(real, quantile)
    return float((laplacian_variance(fake01) > threshold).double().mean())


def radial_log_spectrum(images01: torch.Tensor | np.ndarray, eps: float = 1e-10) -> torch.Tensor:
    """Mean over images of the azimuthally averaged log power spectrum; one value per integer radius.

    Channels are averaged to gray first. Radius 0 is the DC term; the last radius is the corner
    frequency, so the profile has round(sqrt(2) * S / 2) + 1 entries for S x S images (even S).
    """
    x = as_float01(images01)
    h, w = x.shape[-2:]
    fy = torch.fft.fftfreq(h, d=1.0 / h)
    fx = torch.fft.fftfreq(w, d=1.0 / w)
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2).round().long().reshape(-1)
    n_bins = int(radius.max()) + 1
    counts = torch.bincount(radius, minlength=n_bins).double()
    total = torch.zeros(n_bins, dtype=torch.float64)
    for i in range(0, x.shape[0], _CHUNK):
        gray = x[i:i + _CHUNK].double().mean(dim=1)
        log_power = torch.log(torch.fft.fft2(gray).abs().square() + eps).reshape(gray.shape[0], -1)
        total += torch.zeros(n_bins, dtype=torch.float64).index_add_(0, radius, log_power.sum(dim=0))
    return total / (counts * x.shape[0])


def spectral_distance(fake01: torch.Tensor | np.ndarray, real01: torch.Tensor | np.ndarray) -> float:
    """Mean |difference| of the radial log power spectra of samples and real faces (after Durall 2020)."""
    fake, real = as_float01(fake01), as_float01(real01)
    if fake.shape[-2:] != real.shape[-2:]:
        raise ValueError(f"spectral_distance: samples are {tuple(fake.shape[-2:])} but real faces "
                         f"{tuple(real.shape[-2:])}; compare images of one size")
    return float((radial_log_spectrum(fake) - radial_log_spectrum(real)).abs().mean())


def reconstruction_metrics(real01: torch.Tensor | np.ndarray, recon01: torch.Tensor | np.ndarray,
                           feature_net: nn.Module | None = None, batch_size: int = 256,
                           device: str | torch.device = "cpu") -> dict[str, float]:
    """How close reconstructions are to their inputs: MSE, mean per-image PSNR and SSIM, feature distance.

    PSNR is averaged per image (inf when an image is reproduced exactly); SSIM is torchmetrics'
    11x11 Gaussian-window SSIM; recon_feature_distance is the mean L2 distance between the feature
    net embeddings of each face and its reconstruction (only when a feature net is given).
    """
    real, recon = as_float01(real01), as_float01(recon01)
    if real.shape != recon.shape:
        raise ValueError(f"reconstruction_metrics: {tuple(real.shape)} inputs but {tuple(recon.shape)} "
                         "reconstructions; pass them in the same order and shape")
    if not torch.isfinite(recon).all():
        raise ValueError("reconstruction_metrics: reconstructions contain NaN or inf")
    mse, psnr, ssim = [], [], []
    for i in range(0, real.shape[0], _CHUNK):
        a, b = recon[i:i + _CHUNK].double(), real[i:i + _CHUNK].double()
        mse.append((a - b).square().flatten(1).mean(dim=1))
        psnr.append(peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3)))
        # SSIM in float32: torch's float64 CPU conv unfolds each 11x11 window (im2col, ~11 MB per 48 px
        # face: 11 GB for a chunk of 1,024 and 6x slower); float32 convs do not, and agree within 1e-5
        ssim.append(structural_similarity_index_measure(a.float(), b.float(), data_range=1.0,
                                                        reduction="none").double())
    out = {
        "recon_mse": float(torch.cat(mse).mean()),
        "recon_psnr": float(torch.cat(psnr).mean()),
        "recon_ssim": float(torch.cat(ssim).mean()),
    }
    if feature_net is not None:
        fr = extract_features(feature_net, real, batch_size, device).double()
        fx = extract_features(feature_net, recon, batch_size, device).double()
        out["recon_feature_distance"] = float((fr - fx).norm(dim=1).mean())
    return out


def eigenfaces(real01: torch.Tensor | np.ndarray, components: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean [1, D], basis [D, q], the real faces' own coordinates [N, q]) of the real faces' top q
    pixel principal components: what :func:`eigenface_distance` needs from the real side, computed
    once per real set (``compute_metrics(real_cache=...)`` keeps it for a second model)."""
    real = as_float01(real01).flatten(1).double()
    q = min(int(components), real.shape[0] - 1, real.shape[1])
    mean = real.mean(0, keepdim=True)
    # the top-q eigenvectors of the real faces' D x D covariance (D = 2304 at 48 px): one float32 eigh,
    # a few times faster than an SVD of the N x D matrix; the projections are float64
    centred = real - mean
    cov = (centred.T.float() @ centred.float()) / max(1, real.shape[0] - 1)
    _, vecs = torch.linalg.eigh(cov)
    basis = vecs[:, -q:].double()
    return mean, basis, centred @ basis


def eigenface_distance(fake01: torch.Tensor | np.ndarray, real01: torch.Tensor | np.ndarray,
                       components: int = 64,
                       real_eigenfaces: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> float:
    """Fréchet distance in the space of the real faces' top principal components ("eigenfaces").

    No learned network: the real faces' own pixel PCA. It measures face *structure* at the scales
    that carry most of the variance (head shape, hair, eyes, mouth): blurry faces keep it and stay
    close; structureless blobs or noise do not. A counterweight to the learned feature net, which
    weighs blur heavily (docs/metrics.md). Compare only at the same number of real faces.
    ``real_eigenfaces``: :func:`eigenfaces` of these real faces, when already computed.
    """
    from facegen.metrics.distances import frechet_distance

    fake = as_float01(fake01).flatten(1).double()
    mean, basis, real_coords = real_eigenfaces or eigenfaces(real01, components)
    if fake.shape[1] != mean.shape[1]:
        raise ValueError(f"eigenface distance needs samples and real faces of one size, got "
                         f"{fake.shape[1]} and {mean.shape[1]} values per image")
    return frechet_distance(real_coords, (fake - mean) @ basis)
