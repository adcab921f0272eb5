"""Feature extractors for the distribution metrics: a small face CNN facegen trains itself, or InceptionV3.

ImageNet Inception features cannot be downloaded here and describe 48 px grayscale faces poorly, so
the default feature space is `FeatureNet`, trained on the face data (a supervised head per label
column plus a SimCLR contrastive objective, so unlabeled folders work too) and cached per dataset.
A feature net file is ``torch.save`` of plain data (loads with ``weights_only=True``); its ``hash``
(sha256 of the weights) goes into every metrics record, so numbers from different nets never mix.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from facegen.checkpoint import atomic_save

log = logging.getLogger(__name__)

#: Bump when the file layout or the architecture changes: old files are refused with a clear message.
FORMAT_VERSION = 1
#: Cached default nets live in ``<cache_dir>/facenet-<data hash>-<settings hash>.pt``.
DEFAULT_CACHE_DIR = "data/cache/features"


class FeatureNetError(Exception):
    """A feature net file that cannot be used: the message names the file and says what to do."""


# -- image input ------------------------------------------------------------------------------
def as_float01(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Images as float32 in [0, 1]: uint8 is divided by 255, floats are taken as already in [0, 1]."""
    x = torch.as_tensor(images)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W] (or [N, H, W]), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    if not torch.is_floating_point(x):
        raise ValueError(f"images must be uint8 (0-255) or float in [0, 1], got {x.dtype}")
    return x.float()


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Gray -> RGB by repetition, RGB -> gray by the channel mean, so any net reads any face set."""
    c = x.shape[1]
    if c == channels:
        return x
    if c == 1:
        return x.expand(-1, channels, -1, -1)
    if channels == 1:
        return x.mean(dim=1, keepdim=True)
    raise ValueError(f"cannot turn {c}-channel images into {channels} channels")


# -- the face feature net ---------------------------------------------------------------------
class FeatureNet(nn.Module):
    """4 conv blocks -> average pool to a spatial x spatial grid -> linear embedding.

    The grid keeps where things are: with a global average (spatial=1, the first nets' layout)
    features are a bag of local textures, and a generator's structureless blobs with face-like
    local statistics landed among real faces (precision 0.92 for noise blobs). spatial=3 (the
    default) sees a face's layout: eyes above nose above mouth.

    Input: float images in [0, 1], any channel count and size (adapted to the training ones, so
    features of 64 px samples are comparable with those of the 64 px faces the net was trained on).
    """

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = (16, 32, 64, 128),
                 embed_dim: int = 128, image_size: int = 48, name: str = "facenet",
                 groups: int = 8, convs_per_block: int = 1, spatial: int = 3) -> None:
        super().__init__()
        self.spatial = int(spatial)
        self.in_channels = int(in_channels)
        self.widths = [int(w) for w in widths]
        self.embed_dim = int(embed_dim)
        self.image_size = int(image_size)
        self.name = str(name)
        self.groups = int(groups)
        self.convs_per_block = int(convs_per_block)
        self.training_info: dict[str, Any] = {}
        layers: list[nn.Module] = []
        c_in = self.in_channels
        for w in self.widths:
            g = math.gcd(self.groups, w)
            # a stride-2 conv halves the resolution; optional stride-1 convs refine at the new one
            layers += [nn.Conv2d(c_in, w, 3, stride=2, padding=1), nn.GroupNorm(g, w), nn.SiLU()]
            for _ in range(self.convs_per_block - 1):
                layers += [nn.Conv2d(w, w, 3, padding=1), nn.GroupNorm(g, w), nn.SiLU()]
            c_in = w
        self.blocks = nn.Sequential(*layers)
        self.embed = nn.Linear(c_in * self.spatial ** 2, self.embed_dim)

    def config(self) -> dict[str, Any]:
        """The constructor arguments, stored in the file so it can be rebuilt without code."""
        return {"in_channels": self.in_channels, "widths": list(self.widths), "embed_dim": self.embed_dim,
                "image_size": self.image_size, "name": self.name, "groups": self.groups,
                "convs_per_block": self.convs_per_block, "spatial": self.spatial}

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        x = match_channels(x01, self.in_channels)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        h = self.blocks(x * 2.0 - 1.0)
        return self.embed(F.adaptive_avg_pool2d(h, self.spatial).flatten(1))

    @property
    def hash(self) -> str:
        return weights_hash(self.state_dict())


def weights_hash(state_dict: dict[str, torch.Tensor]) -> str:
    """First 12 hex digits of sha256 over (name, dtype, shape, bytes) of each tensor, in key order."""
    h = hashlib.sha256()
    for key, t in state_dict.items():
        t = t.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:12]


def save_feature_net(net: FeatureNet, path: str | os.PathLike) -> Path:
    """Write the net as plain data (state dict, arch config, format version, training info), atomically."""
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    payload = {
        "format_version": FORMAT_VERSION,
        "kind": "facegen.metrics.FeatureNet",
        "arch": net.config(),
        "state_dict": state,
        "hash": weights_hash(state),
        # JSON round trip: only plain types reach the file, whatever training_info held
        "training": json.loads(json.dumps(net.training_info, default=str)),
    }
    return atomic_save(payload, path)


def load_feature_net(path: str | os.PathLike, device: str | torch.device = "cpu") -> FeatureNet:
    """A saved FeatureNet in eval mode; refuses files of another format or whose weights do not hash right."""
    path = Path(path)
    if not path.is_file():
        raise FeatureNetError(f"{path}: no such feature net file (train one with "
                              "`python -m facegen.train_features` or leave the path empty to use the default)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise FeatureNetError(f"{path}: not a readable weights-only feature net file ({e}); "
                              "delete it and train a new one") from e
    if not isinstance(payload, dict) or payload.get("kind") != "facegen.metrics.FeatureNet":
        raise FeatureNetError(f"{path}: not a facegen feature net file (no kind 'facegen.metrics.FeatureNet')")
    if payload.get("format_version") != FORMAT_VERSION:
        raise FeatureNetError(f"{path}: feature net format {payload.get('format_version')}, this facegen "
                              f"reads format {FORMAT_VERSION}; train a new one")
    net = FeatureNet(**{"spatial": 1, **payload["arch"]})  # files without "spatial" pooled globally
    net.load_state_dict(payload["state_dict"])
    if net.hash != payload.get("hash"):
        raise FeatureNetError(f"{path}: weights hash {net.hash} does not match the stored "
                              f"{payload.get('hash')}; the file is damaged, delete it and train a new one")
    net.training_info = dict(payload.get("training", {}))
    return net.to(device).eval()


# -- Inception (real FID), only from a local weights file -------------------------------------
class InceptionFeatures(nn.Module):
    """torchvision InceptionV3 pool3 (2048-d) features from a local state dict; never downloads.

    Note: torchvision's ImageNet weights differ from the TF weights of the original FID code, so
    `fid_inception` is comparable between facegen runs, not with numbers in papers.
    """

    name = "inception"

    def __init__(self, weights_path: str | os.PathLike) -> None:
        super().__init__()
        from torchvision.models import inception_v3

        path = Path(weights_path)
        if not path.is_file():
            raise FeatureNetError(f"{path}: no such InceptionV3 weights file (a torchvision "
                                  "inception_v3 state dict saved with torch.save)")
        self.net = inception_v3(weights=None, aux_logits=True, init_weights=False)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        try:
            self.net.load_state_dict(state)
        except RuntimeError as e:
            raise FeatureNetError(f"{path}: not a torchvision inception_v3 state dict ({e})") from e
        self.net.fc = nn.Identity()
        self.hash = weights_hash(self.net.state_dict())
        self.eval()

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        x = match_channels(x01, 3)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        # [-1, 1] without transform_input is the same input the ImageNet weights see with
        # transform_input=True after ImageNet mean/std normalisation
        out = self.net(x * 2.0 - 1.0)
        return out.logits if hasattr(out, "logits") else out


@torch.no_grad()
def extract_features(net: nn.Module, images: torch.Tensor | np.ndarray, batch_size: int = 256,
                     device: str | torch.device = "cpu") -> torch.Tensor:
    """Features [N, D] (float32, on the CPU) of uint8 or [0, 1] float images, batch by batch."""
    x = torch.as_tensor(images)
    was_training = net.training
    net.eval()
    dev = torch.device(device)
    net.to(dev)
    out = []
    try:
        for i in range(0, x.shape[0], max(1, int(batch_size))):
            batch = as_float01(x[i:i + batch_size]).to(dev)
            out.append(net(batch).float().cpu())
    finally:
        net.train(was_training)
    if not out:
        raise ValueError("extract_features: no images given")
    return torch.cat(out)


# -- training ---------------------------------------------------------------------------------
@dataclass
class LabelTarget:
    """One supervised head: which column, classification or regression, and the per-image targets."""

    name: str
    kind: str  # "class" or "regress"
    num_classes: int
    values: torch.Tensor  # long class index or float32 standardised value
    mask: torch.Tensor  # bool, False where the label is missing


def label_targets(labels: pd.DataFrame | None, max_classes: int = 32) -> list[LabelTarget]:
    """A head per usable label column: integer/categorical -> classes, float -> regression.

    Skipped: constant columns, identifiers (non-float columns whose values are all different, or
    text with more than `max_classes` values, e.g. file paths) and exact re-codings of an earlier
    column (fer2013's `label_idx` repeats `label`). Integer columns with more than `max_classes`
    values (e.g. age) are regressed, being ordinal.
    """
    if labels is None or len(labels.columns) == 0:
        return []
    targets: list[LabelTarget] = []
    seen_codings: list[np.ndarray] = []
    for col in labels.columns:
        s = labels[col]
        mask = s.notna().to_numpy()
        if mask.sum() < 2 or s[mask].nunique() < 2:
            continue
        kind_char = s.dtype.kind
        nunique = int(s[mask].nunique())
        if kind_char != "f" and nunique == int(mask.sum()):
            continue
        if kind_char == "f" or (kind_char in "iu" and nunique > max_classes):
            v = s.to_numpy(dtype=np.float64, na_value=np.nan)
            mu, sd = float(np.nanmean(v)), float(np.nanstd(v))
            if not sd > 0:
                continue
            values = torch.from_numpy(np.nan_to_num((v - mu) / sd)).float()
            targets.append(LabelTarget(str(col), "regress", 0, values, torch.tensor(mask)))
            continue
        if nunique > max_classes:
            continue
        codes, _ = pd.factorize(s, sort=True)
        if any(np.array_equal(codes, c) for c in seen_codings):
            continue
        seen_codings.append(codes)
        values = torch.from_numpy(np.where(codes < 0, 0, codes)).long()
        targets.append(LabelTarget(str(col), "class", nunique, values, torch.tensor(codes >= 0)))
    return targets


def augment(x01: torch.Tensor, generator: torch.Generator, max_shift: float = 0.1) -> torch.Tensor:
    """One SimCLR view: random shift (crop of a padded copy), horizontal flip, brightness/contrast, noise.

    Shifts are whole pixels and there is no zoom: resampling would blur, and a net taught to ignore
    blur could not measure it.
    """
    n, _, h, w = x01.shape

    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, 1, 1, 1, generator=generator) * (hi - lo) + lo

    pad = max(1, round(max_shift * max(h, w)))
    padded = F.pad(x01, (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    cols = dx[:, None] + torch.arange(w)[None, :]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    rows = dy[:, None] + torch.arange(h)[None, :]
    x = padded[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * u(0.7, 1.3) + mean + u(-0.15, 0.15)
    x = x + torch.randn(x.shape, generator=generator) * u(0.0, 0.04)
    return x.clamp_(0.0, 1.0)


#: What the degradation head tells apart, for the failures a face-quality metric exists to catch:
#: (kind, amount). Blur: shrunk by the factor and scaled back (a VAE's failure). Noise: Gaussian of
#: that standard deviation (a GAN's grain). Shuffle: the face cut into tiles of that fraction of
#: its size, put back in random order (texture right, face structure gone: a collapsed or early
#: GAN's blobs). Contrastive views alone would make the net invariant to all three.
DEGRADATIONS = (("clean", 0.0), ("blur", 1.5), ("blur", 2.0), ("blur", 3.0), ("noise", 0.08), ("noise", 0.2),
                ("shuffle", 1 / 6), ("shuffle", 1 / 3))


def _shuffle_tiles(x: torch.Tensor, tile: int, generator: torch.Generator) -> torch.Tensor:
    """Each image cut into tile x tile squares (the size rounded down to a multiple), shuffled per image."""
    n, c, h, w = x.shape
    th, tw = h // tile, w // tile
    out = x.clone()
    core = x[:, :, : th * tile, : tw * tile]
    tiles = core.reshape(n, c, th, tile, tw, tile).permute(0, 2, 4, 1, 3, 5).reshape(n, th * tw, c, tile, tile)
    order = torch.argsort(torch.rand(n, th * tw, generator=generator), dim=1)
    tiles = tiles[torch.arange(n)[:, None], order]
    out[:, :, : th * tile, : tw * tile] = tiles.reshape(n, th, tw, c, tile, tile).permute(0, 3, 1, 4, 2, 5) \
        .reshape(n, c, th * tile, tw * tile)
    return out


def degrade(x01: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each face degraded by a random entry of DEGRADATIONS (index 0: untouched), and that index."""
    n, _, h, w = x01.shape
    level = torch.randint(0, len(DEGRADATIONS), (n,), generator=generator)
    out = x01.clone()
    noise = torch.randn(x01.shape, generator=generator)
    for i, (kind, amount) in enumerate(DEGRADATIONS):
        m = level == i
        if kind == "clean" or not bool(m.any()):
            continue
        if kind == "blur":
            small = F.interpolate(x01[m], size=(max(2, round(h / amount)), max(2, round(w / amount))),
                                  mode="bilinear", align_corners=False, antialias=True)
            out[m] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
        elif kind == "noise":
            out[m] = (x01[m] + amount * noise[m]).clamp(0.0, 1.0)
        else:
            out[m] = _shuffle_tiles(x01[m], max(2, round(amount * min(h, w))), generator)
    return out, level


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's NT-Xent: each view must pick its partner out of the other 2N-2 images of the batch."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, partner)


class _TrainingHeads(nn.Module):
    """What training needs on top of the embedding: the SimCLR projection and one head per label."""

    def __init__(self, embed_dim: int, targets: list[LabelTarget], proj_dim: int = 64) -> None:
        super().__init__()
        self.projection = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, proj_dim))
        self.degradation = nn.Linear(embed_dim, len(DEGRADATIONS))
        self.heads = nn.ModuleDict({f"h{i}": nn.Linear(embed_dim, t.num_classes if t.kind == "class" else 1)
                                    for i, t in enumerate(targets)})


def train_feature_net(images_uint8: torch.Tensor, labels_df: pd.DataFrame | None = None, steps: int = 600,
                      batch_size: int = 64, seed: int = 0, lr: float = 2e-3,
                      widths: Sequence[int] = (16, 32, 64, 128), embed_dim: int = 128,
                      temperature: float = 0.2, label_weight: float = 1.0, degradation_weight: float = 1.0,
                      max_classes: int = 32, name: str = "facenet", device: str | torch.device = "cpu",
                      log_every: int = 0, spatial: int = 3) -> FeatureNet:
    """Train a FeatureNet on faces; the same seed gives the same weights on the CPU.

    The loss is NT-Xent between two augmented views, plus per label column cross-entropy or MSE
    on both views, plus a degradation head that names the resolution loss of half a batch of
    shrunk-and-rescaled faces: contrastive views teach invariances, and a quality metric must not
    become invariant to blur, the VAE failure it exists to measure. All randomness comes from a
    generator seeded with `seed` (the global RNG is untouched).
    """
    images = torch.as_tensor(images_uint8)
    if images.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    if n < 2:
        raise ValueError(f"need at least 2 images to train a feature net, got {n}")
    if h != w:
        raise ValueError(f"faces must be square, got {h}x{w}")
    if labels_df is not None and len(labels_df) != n:
        raise ValueError(f"{n} images but {len(labels_df)} label rows")
    targets = label_targets(labels_df, max_classes)
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FeatureNet(c, widths, embed_dim, h, name, spatial=spatial)
        extra = _TrainingHeads(embed_dim, targets)
    net.to(dev).train()
    extra.to(dev).train()
    params = list(net.parameters()) + list(extra.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    warmup = max(1, int(steps) // 20)
    # linear warm-up then cosine decay to zero; LambdaLR because OneCycleLR fails for very few steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1.0 + math.cos(math.pi * s / max(1, steps))))
    g = torch.Generator().manual_seed(int(seed))
    bs = min(int(batch_size), n)
    perm, pos = torch.randperm(n, generator=g), 0
    t0 = time.perf_counter()
    history: list[float] = []
    for step in range(int(steps)):
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos:pos + bs]
        pos += bs
        x = as_float01(images[idx])
        views = [augment(x, g), augment(x, g)]
        if degradation_weight > 0:
            degraded, level = degrade(x[: max(1, bs // 2)], g)
            views.append(augment(degraded, g))
        emb_all = net(torch.cat(views).to(dev))
        emb = emb_all[: 2 * bs]
        z = extra.projection(emb)
        loss = nt_xent(z[:bs], z[bs:], temperature)
        contrastive = float(loss.detach())
        if degradation_weight > 0:
            loss = loss + degradation_weight * F.cross_entropy(extra.degradation(emb_all[2 * bs:]), level.to(dev))
        for i, t in enumerate(targets):
            m = t.mask[idx].repeat(2).to(dev)
            if not m.any():
                continue
            out = extra.heads[f"h{i}"](emb[m])
            y = t.values[idx].repeat(2).to(dev)[m]
            term = F.cross_entropy(out, y) if t.kind == "class" else F.mse_loss(out.squeeze(1), y)
            loss = loss + label_weight * term / max(1, len(targets))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            log.info("feature net step %d/%d: loss %.4f (contrastive %.4f)", step + 1, steps, history[-1],
                     contrastive)
    net.eval()
    tail = history[-max(1, len(history) // 10):] if history else [float("nan")]
    net.training_info = {
        "steps": int(steps), "batch_size": bs, "seed": int(seed), "lr": float(lr),
        "temperature": float(temperature), "label_weight": float(label_weight),
        "degradation_weight": float(degradation_weight), "num_images": int(n), "image_shape": [int(c), int(h), int(w)],
        "heads": [{"column": t.name, "kind": t.kind, "num_classes": t.num_classes} for t in targets],
        "final_loss": float(np.mean(tail)), "seconds": round(time.perf_counter() - t0, 2),
        "torch_version": str(torch.__version__),
    }
    return net.cpu()


# -- the cached default net ---------------------------------------------------------------------
def data_hash(images: torch.Tensor) -> str:
    """sha256 of the images' shape, dtype and bytes: the cache key of a default feature net."""
    x = torch.as_tensor(images).contiguous()
    h = hashlib.sha256(f"{tuple(x.shape)}|{x.dtype}|".encode())
    h.update(x.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def _training_split(data: Any) -> tuple[torch.Tensor, pd.DataFrame | None]:
    """(images, labels) of a FaceDataModule's train split, a FaceDataset, or a bare uint8 tensor."""
    if hasattr(data, "train") and hasattr(getattr(data, "train"), "images"):
        data = data.train
    if hasattr(data, "images"):
        return data.images, getattr(data, "labels", None)
    if isinstance(data, (torch.Tensor, np.ndarray)):
        return torch.as_tensor(data), None
    raise TypeError(f"expected a FaceDataModule, FaceDataset or uint8 image tensor, got {type(data).__name__}")


#: How many training faces the default feature net trains on at most (a seeded, stable choice).
DEFAULT_MAX_IMAGES = 20000


def default_feature_net(data: Any = None, cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR,
                        path: str | os.PathLike | None = None, steps: int = 600, batch_size: int = 64,
                        max_images: int = DEFAULT_MAX_IMAGES, seed: int = 0, device: str | torch.device = "cpu",
                        **train_kwargs: Any) -> FeatureNet:
    """The feature net for a dataset: `path` as given, else the cached one, else trained and cached.

    The defaults (<= 20k images, 600 steps of 64) train fer2013's 28,709 faces in ~2.5 minutes on
    one busy CPU core; the cache key covers the training images and every setting, so a change retrains.
    """
    if path not in (None, ""):
        return load_feature_net(path, device)
    if data is None:
        raise ValueError("default_feature_net needs the data to train on, or path= to a saved feature net")
    images, labels = _training_split(data)
    if images.dtype != torch.uint8:
        raise ValueError(f"training faces must be uint8, got {images.dtype}")
    settings = {"steps": steps, "batch_size": batch_size, "max_images": max_images, "seed": seed,
                "format": FORMAT_VERSION, "degradations": DEGRADATIONS, "spatial": train_kwargs.pop("spatial", 3),
                **{k: train_kwargs[k] for k in sorted(train_kwargs)}}
    dhash = data_hash(images)
    shash = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
    file = Path(cache_dir or DEFAULT_CACHE_DIR) / f"facenet-{dhash[:16]}-{shash[:8]}.pt"
    if file.is_file():
        try:
            return load_feature_net(file, device)
        except FeatureNetError as e:
            warnings.warn(f"{e}; retraining it", stacklevel=2)
    n = images.shape[0]
    if n > max_images:
        keep = np.sort(np.random.Generator(np.random.PCG64(seed)).permutation(n)[:max_images])
        images = images[torch.from_numpy(keep)]
        labels = None if labels is None else labels.iloc[keep].reset_index(drop=True)
    log.info("training the default feature net on %d faces (%d steps); cached at %s", len(images), steps, file)
    net = train_feature_net(images, labels, steps=steps, batch_size=batch_size, seed=seed, device=device,
                            spatial=settings["spatial"], **train_kwargs)
    net.training_info.update({"data_hash": dhash, "data_num_images": int(n)})
    save_feature_net(net, file)
    return net.to(device).eval()
