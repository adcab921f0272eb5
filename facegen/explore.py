"""Exploring a trained model: samples, interpolations, traversals, reconstructions, attribute vectors
and latents, as a small Python API that the entry points (facegen.sample, ...) use themselves.

Tensor functions take a model and tensors and return tensors (images float32 [0, 1] on the CPU,
latents float32 on the CPU); `run_<name>(cfg)` does one entry point's reading and writing and
returns the paths it wrote, always with the same file names inside `cfg.out`.
"""
from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from facegen.checkpoint import CheckpointError, is_seed_state_dict, model_from_checkpoint, read_checkpoint, \
    seed_model_config
from facegen.data.base import DataError, FaceDataset, stable_permutation
from facegen.data.synthetic import HAIR_STYLES
from facegen.losses import kl_per_dimension
from facegen.models.vaegan import VAEGAN, standing_statistics
from facegen.utils import resolve_device

#: Names of the codes of categorical label columns: UTKFace's ethnicity (the Kaggle CSV's name for
#: race) and the synthetic faces' hair style. Negative codes mean unknown.
VALUE_NAMES = {"ethnicity": {0: "white", 1: "black", 2: "asian", 3: "indian", 4: "other"},
               "hair_style": dict(enumerate(HAIR_STYLES))}
#: Age bands of the age_gender data: [low, high) in years.
AGE_BANDS = (("child", 0, 13), ("adult", 13, 60), ("senior", 60, math.inf))
#: Label columns that identify a file rather than describe a face.
NOT_ATTRIBUTES = {"path", "img_name", "label_idx", "index", "split"}
SPLITS = ("train", "val", "all")


# -- loading -----------------------------------------------------------------------------------------
def pick_device(device: str = "auto") -> torch.device:
    """auto|cpu|cuda[:N] -> a torch.device; cuda without a GPU is an error for people."""
    try:
        return resolve_device(str(device))
    except RuntimeError as e:  # no GPU, or a name torch does not know
        raise CheckpointError(f"device={device}: {e}") from e


@dataclass
class Loaded:
    """A model in eval mode and the checkpoint it came from (its config names the training data)."""

    model: VAEGAN
    checkpoint: Mapping[str, Any]
    path: Path
    device: torch.device

    @property
    def data_config(self) -> dict | None:
        """The resolved `data` config the model was trained with (None for a raw state dict)."""
        if is_seed_state_dict(self.checkpoint):
            return None
        return (self.checkpoint.get("config") or {}).get("data")


def _require(checkpoint: Any) -> Path:
    if checkpoint in (None, ""):
        raise CheckpointError("checkpoint= is required: give the trained model, e.g. checkpoint="
                              "outputs/<date>/<time>/checkpoints/last.pt (or the seed's VAE_epoch_100.pth)")
    return Path(str(checkpoint))


def load(checkpoint: str | os.PathLike | None, device: str = "auto", model_cfg: Any = None,
         obj: Mapping[str, Any] | None = None) -> Loaded:
    """Read a checkpoint (facegen's or the seed's raw state dict) and build its model in eval mode.

    The model comes from the checkpoint's own config; `model_cfg` overrides it (`obj`: already read).
    """
    path = _require(checkpoint)
    dev = pick_device(device)
    obj = read_checkpoint(path) if obj is None else obj
    model = model_from_checkpoint(obj, model_cfg, source=str(path))
    return Loaded(model.to(dev).eval(), obj, path, dev)


def explicit_model_config(cfg: DictConfig, checkpoint: Mapping[str, Any]) -> DictConfig | None:
    """The `model=...` the user chose (None when none). Its ${data.*} sizes resolve against the chosen
    data or, with no data chosen, against the sizes the checkpoint implies."""
    if cfg.get("model") is None:
        return None
    tree = OmegaConf.to_container(cfg, resolve=False)
    if tree.get("data") is None:
        sizes = seed_model_config(checkpoint)["encoder"] if is_seed_state_dict(checkpoint) else \
            (checkpoint.get("config") or {}).get("data") or {"channels": 1, "image_size": 48}
        tree["data"] = {"channels": sizes["channels"], "image_size": sizes["image_size"]}
    return OmegaConf.create(OmegaConf.to_container(OmegaConf.create(tree).model, resolve=True))


def load_from_config(cfg: DictConfig) -> Loaded:
    """`checkpoint=`, `device=`, an optional `model=` and `standing_stats=` of an entry point's config."""
    path = _require(cfg.get("checkpoint"))
    if int(cfg.get("batch_size", 1)) < 1:
        raise DataError(f"batch_size={cfg.batch_size}: faces per encoder/decoder call, at least 1")
    obj = read_checkpoint(path)
    return with_standing_stats(cfg, load(path, str(cfg.get("device", "auto")), explicit_model_config(cfg, obj), obj))


def with_standing_stats(cfg: DictConfig, loaded: Loaded) -> Loaded:
    """standing_stats=N (N > 0): the decoder's batch-norm statistics re-estimated on N batches of 64
    prior draws before use, as `trainer.standing_stats` does in training (for checkpoints trained
    without it); null/0 keeps the checkpoint's own."""
    batches = cfg.get("standing_stats")
    if batches is None or int(batches) == 0:
        return loaded
    if int(batches) < 0:
        raise DataError(f"standing_stats={batches}: give a number of batches (50 is plenty) or null")
    standing_statistics(loaded.model.decoder, loaded.model.latent_dim, int(batches), seed=int(cfg.get("seed", 0)))
    return loaded


def data_module(cfg: DictConfig, loaded: Loaded):
    """The faces of `data=...`, or of the checkpoint's own data config when none is chosen, read at
    the model's image size and channels (so any source fits the model)."""
    from hydra.utils import instantiate

    if cfg.get("data") is not None:
        data = OmegaConf.to_container(cfg.data, resolve=True)
        if loaded.data_config is not None:
            data = _with_training_split(data, dict(loaded.data_config))
    elif loaded.data_config is not None:
        data = dict(loaded.data_config)
    else:
        raise DataError(f"{loaded.path} is a raw state dict that names no training data: choose the faces "
                        "with data=..., e.g. data=synthetic, data=age_gender (data/age_gender.csv) or "
                        "data=fer2013 data.path=../shared/data/fer2013/train "
                        "data.val_path=../shared/data/fer2013/validation")
    data["image_size"] = loaded.model.image_size
    data["channels"] = loaded.model.channels
    cache_dir = OmegaConf.select(cfg, "paths.cache_dir", default=None)
    if cache_dir is not None and "cache_dir" in data:
        data["cache_dir"] = cache_dir
    return instantiate(OmegaConf.create(data)).setup()


#: The keys that decide which faces a source holds out (and, for synthetic faces, which faces it draws).
SPLIT_KEYS = ("seed", "val_fraction", "limit")


def _explicit_data_keys() -> set[str]:
    """The data.* keys given on this command line (none outside a Hydra app, e.g. under compose)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    task = HydraConfig.get().overrides.task
    return {o.split("=", 1)[0].lstrip("+~").removeprefix("data.") for o in task if o.lstrip("+~").startswith("data.")}


def _with_training_split(data: dict[str, Any], trained: dict[str, Any]) -> dict[str, Any]:
    """data=... naming the faces the checkpoint was trained on keeps the checkpoint's split (its data.seed,
    val_fraction, limit), so its held-out faces stay held out: this config's seed would otherwise draw
    another split, whose validation faces are mostly the model's training faces. Keys given on the
    command line win."""
    def where(d: dict[str, Any]) -> Any:
        path = d.get("path")
        return None if path in (None, "") else Path(str(path)).expanduser().resolve()

    if data.get("_target_") != trained.get("_target_") or where(data) != where(trained):
        return data
    explicit = _explicit_data_keys()
    taken = {k: trained[k] for k in SPLIT_KEYS if k in trained and k not in explicit and data.get(k) != trained[k]}
    if taken:
        print("data: the checkpoint's own split of these faces (" + ", ".join(f"data.{k}={v}" for k, v in taken.items())
              + "); give data.seed=... to choose another", flush=True)
    return {**data, **taken}


def split_faces(dm, split: str) -> FaceDataset:
    """split=train|val|all of a set-up data module; `all` is train then val, with a `split` column."""
    if split not in SPLITS:
        raise DataError(f"split={split}: choose one of {', '.join(SPLITS)}")
    if split == "train":
        return dm.train
    if split == "val":
        if len(dm.val) == 0:
            raise DataError(f"{dm.name}: the validation split is empty (data.val_fraction=0 and no "
                            "data.val_path); use split=train or give the data a validation split")
        return dm.val
    labels = pd.concat([dm.train.labels.assign(split="train"), dm.val.labels.assign(split="val")],
                       ignore_index=True)
    return FaceDataset(torch.cat([dm.train.images, dm.val.images]), labels, f"{dm.name}/all")


def limit_faces(faces: FaceDataset, max_images: int | None, seed: int) -> FaceDataset:
    """At most `max_images` faces: a seeded, stable subset (all of them when None)."""
    if max_images is None or int(max_images) >= len(faces):
        return faces
    return faces.subset(np.sort(stable_permutation(len(faces), seed)[: int(max_images)]))


def read_image_file(path: str | os.PathLike, channels: int, image_size: int) -> torch.Tensor:
    """One image file as uint8 [C, H, W] at the model's size: center-cropped square, resized."""
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2 import functional as F

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such image file (give an existing .png/.jpg, or a dataset index)")
    try:
        img = decode_image(str(path), mode=ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB)
    except (RuntimeError, ValueError) as e:
        raise DataError(f"{path}: cannot be decoded as an image ({str(e).splitlines()[0]})") from e
    side = min(img.shape[-2:])
    img = F.center_crop(img, [side, side])
    return F.resize(img, [image_size, image_size], antialias=True) if side != image_size else img


def read_latents(path: str | os.PathLike, latent_dim: int) -> torch.Tensor:
    """A latents .npy ([N, latent_dim] floats, as facegen.encode writes) as float32."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"latents={path}: no such file (make one with python -m facegen.encode)")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(f"latents={path}: not a readable .npy array ({e})") from e
    if not isinstance(arr, np.ndarray):   # an .npz (or .pt) archive: np.load gives an NpzFile
        raise DataError(f"latents={path}: an archive, not one .npy array; give the latents.npy that "
                        "python -m facegen.encode writes (or np.save one [N, latent_dim] array)")
    if arr.ndim != 2 or arr.shape[1] != latent_dim or arr.shape[0] == 0 or not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"latents={path}: expected a float array of shape [N, {latent_dim}] (the model's "
                        f"latent_dim), found {arr.dtype} {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise DataError(f"latents={path}: holds NaN or infinite values")
    return torch.from_numpy(arr.astype(np.float32))


# -- the model, batched ------------------------------------------------------------------------------
def _device(module: torch.nn.Module) -> torch.device:
    """Where a network's tensors live (parameters or, for a fixed linear map, buffers)."""
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    return torch.device("cpu") if tensor is None else tensor.device


@torch.no_grad()
def decode(model: VAEGAN, z: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Images in [0, 1] (float32, CPU) for latents of any leading shape [..., latent_dim]."""
    device = _device(model.decoder)
    flat = z.reshape(-1, z.shape[-1])
    out = [model.to_unit(model.decode(flat[i:i + batch_size].to(device))).cpu()
           for i in range(0, len(flat), batch_size)]
    images = torch.cat(out) if out else torch.empty(0, model.channels, model.image_size, model.image_size)
    return images.reshape(*z.shape[:-1], *images.shape[1:])


@torch.no_grad()
def encode(model: VAEGAN, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, logvar) float32 on the CPU for uint8 faces [N, C, H, W]."""
    device = _device(model.encoder)
    mus, logvars = [], []
    for i in range(0, len(images), batch_size):
        mu, logvar = model.encode(model.from_uint8(images[i:i + batch_size].to(device)))
        mus.append(mu.float().cpu())
        logvars.append(logvar.float().cpu())
    if not mus:
        raise DataError("no faces to encode (the chosen split or folder is empty)")
    return torch.cat(mus), torch.cat(logvars)


def prior(model: VAEGAN, n: int, temperature: float = 1.0, seed: int = 0) -> torch.Tensor:
    """n latents from N(0, temperature^2 I), drawn on the CPU so a seed gives the same z on any device."""
    return model.prior(n, "cpu", temperature, torch.Generator().manual_seed(int(seed)))


def sample(model: VAEGAN, n: int, temperature: float = 1.0, seed: int = 0,
           latents: torch.Tensor | None = None, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [N, C, H, W] in [0, 1], z [N, latent_dim]): decodings of `latents` or of prior draws."""
    z = prior(model, n, temperature, seed) if latents is None else latents.float()
    return decode(model, z, batch_size), z


# -- interpolation -------------------------------------------------------------------------------------
def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Straight lines: a [..., D], b [..., D], t [T] -> [..., T, D]."""
    t = t.to(a.dtype).reshape(-1, 1)
    return a.unsqueeze(-2) * (1 - t) + b.unsqueeze(-2) * t


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Great-circle interpolation of the directions with a linearly interpolated norm, so frames keep
    the typical norm of prior samples (lerp's midpoints are too short and decode to washed-out faces).

    a [..., D], b [..., D], t [T] -> [..., T, D]. Equal norms stay exactly that norm; a zero endpoint
    or (anti)parallel directions fall back to lerp of the directions.
    """
    t = t.to(a.dtype).reshape(-1, 1)
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    ua, ub = a / na.clamp_min(eps), b / nb.clamp_min(eps)
    omega = torch.acos((ua * ub).sum(-1, keepdim=True).clamp(-1.0, 1.0)).unsqueeze(-2)  # [..., 1, 1]
    so = torch.sin(omega)
    ok = so > 1e-6
    safe = torch.where(ok, so, torch.ones_like(so))
    wa = torch.where(ok, torch.sin((1 - t) * omega) / safe, 1 - t)
    wb = torch.where(ok, torch.sin(t * omega) / safe, t.expand_as(wa))
    direction = wa * ua.unsqueeze(-2) + wb * ub.unsqueeze(-2)
    flat = ~ok.expand_as(wa)  # lerp of directions shortens them: renormalize
    direction = torch.where(flat, direction / direction.norm(dim=-1, keepdim=True).clamp_min(eps), direction)
    norm = na.unsqueeze(-2) * (1 - t) + nb.unsqueeze(-2) * t
    out = direction * norm
    zero_end = ((na < eps) | (nb < eps)).unsqueeze(-2).expand_as(out)
    return torch.where(zero_end, lerp(a, b, t.reshape(-1)), out)


INTERPOLATIONS = {"slerp": slerp, "lerp": lerp}


def interpolate(model: VAEGAN, z_a: torch.Tensor, z_b: torch.Tensor, steps: int = 10, method: str = "slerp",
                batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(frames [K, steps, C, H, W] in [0, 1], z [K, steps, D]) from z_a [K, D] to z_b [K, D]."""
    if method not in INTERPOLATIONS:
        raise DataError(f"method={method}: choose slerp or lerp")
    if int(steps) < 2:
        raise DataError(f"steps={steps}: an interpolation needs at least 2 steps (its two ends)")
    z = INTERPOLATIONS[method](z_a.float(), z_b.float(), torch.linspace(0, 1, int(steps)))
    return decode(model, z, batch_size), z


# -- traversal -------------------------------------------------------------------------------------------
def dimension_usage(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean KL of each latent dimension over encoded faces: ~0 for a dimension the model ignores."""
    return kl_per_dimension(mu.double(), logvar.double()).float()


@dataclass
class Traversal:
    images: torch.Tensor  # [rows, steps, C, H, W] in [0, 1]
    z: torch.Tensor       # [rows, steps, D]: row r sweeps dimension dims[r], the rest is base_z
    dims: torch.Tensor    # [rows] the swept dimension of each row, most used first
    usage: torch.Tensor   # [D] mean KL per dimension
    low: torch.Tensor     # [D] start of each dimension's sweep
    high: torch.Tensor    # [D] end of each dimension's sweep


def sweep_range(mu: torch.Tensor, how: str = "data", k: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension sweep ends: min..max of the encoded mu (how=data, as the seed did) or
    mean +- k standard deviations of it (how=std)."""
    if how == "data":
        return mu.min(0).values, mu.max(0).values
    if how == "std":
        mean, std = mu.mean(0), mu.std(0, unbiased=False)
        return mean - float(k) * std, mean + float(k) * std
    raise DataError(f"range={how}: choose data (min..max of the encoded faces) or std (mean +- k std)")


def traverse(model: VAEGAN, mu: torch.Tensor, logvar: torch.Tensor, base_z: torch.Tensor | None = None,
             dims: int | None = None, steps: int = 10, how: str = "data", k: float = 3.0,
             batch_size: int = 256) -> Traversal:
    """One row per latent dimension, most used (mean KL, descending) first: that dimension swept over
    its range (from the encoded faces `mu`, `logvar`), every other one held at `base_z` (default 0)."""
    if int(steps) < 2:
        raise DataError(f"steps={steps}: a traversal needs at least 2 steps")
    usage = dimension_usage(mu, logvar)
    order = torch.argsort(usage, descending=True, stable=True)
    if dims is not None:
        if int(dims) < 1:
            raise DataError(f"dims={dims}: show at least one dimension (or dims=null for all)")
        order = order[: int(dims)]
    low, high = sweep_range(mu, how, k)
    base = torch.zeros(mu.shape[1]) if base_z is None else base_z.float().reshape(-1)
    t = torch.linspace(0, 1, int(steps))
    z = base.repeat(len(order), int(steps), 1)
    rows = torch.arange(len(order))
    z[rows, :, order] = low[order, None] + (high - low)[order, None] * t
    return Traversal(decode(model, z, batch_size), z, order, usage, low, high)


# -- reconstruction ---------------------------------------------------------------------------------------
@torch.no_grad()
def reconstruct(model: VAEGAN, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(faces, Dec(mu(faces))) for uint8 faces, both float32 [N, C, H, W] in [0, 1]."""
    mu, _ = encode(model, images, batch_size)
    real = model.to_unit(model.from_uint8(images)).cpu()
    return real, decode(model, mu, batch_size)


# -- attribute vectors --------------------------------------------------------------------------------------
def _binary(values: pd.Series) -> bool:
    v = values.dropna()
    return v.dtype == bool or (pd.api.types.is_numeric_dtype(v) and set(np.unique(v)) <= {0, 1})


def attribute_groups(labels: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (faces with it, faces without it) as boolean masks, from whatever labels a source has.

    age: bands child (<13) / adult / senior (>=60), each against the other two; gender: 1 against 0;
    ethnicity, hair_style: each named code against the rest; label (class folders) and text columns:
    each class against the rest; 0/1 columns: 1 against 0; other numbers: top third against bottom
    third (few integer values: each against the rest). Negative age/gender/ethnicity mean unknown.
    """
    groups: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def each_value(col: str, values: pd.Series, valid: np.ndarray, name) -> None:
        for v in sorted(values[valid].unique()):
            pos = valid & (values == v).to_numpy()
            groups[name(v)] = (pos, valid & ~pos)

    for col in labels.columns:
        if col in NOT_ATTRIBUTES:
            continue
        s = labels[col]
        numeric = pd.api.types.is_numeric_dtype(s) and s.dtype != bool
        if col == "age" and numeric:
            valid = (s >= 0).to_numpy()
            for name, lo, hi in AGE_BANDS:
                pos = valid & ((s >= lo) & (s < hi)).to_numpy()
                groups[name] = (pos, valid & ~pos)
        elif col == "gender" and numeric:
            groups["gender"] = ((s == 1).to_numpy(), (s == 0).to_numpy())
        elif col in VALUE_NAMES and numeric:
            each_value(col, s, (s >= 0).to_numpy(), lambda v, c=col: f"{c}_{VALUE_NAMES[c].get(int(v), int(v))}")
        elif not numeric and s.dtype != bool:
            valid = s.notna().to_numpy()
            each_value(col, s.astype(str).where(s.notna()), valid,
                       (lambda v: str(v)) if col == "label" else (lambda v, c=col: f"{c}_{v}"))
        elif _binary(s):
            b = s.astype(float).to_numpy()
            groups[col] = (b == 1, b == 0)
        elif pd.api.types.is_integer_dtype(s) and s.nunique() <= 12:
            each_value(col, s, np.ones(len(s), bool), lambda v, c=col: f"{c}_{v}")
        else:
            valid = s.notna().to_numpy()
            rank = s.rank(method="first").to_numpy()
            n = int(valid.sum())
            groups[col] = (valid & (rank > n - n // 3), valid & (rank <= n // 3))
    return {name: g for name, g in groups.items() if g[0].any() and g[1].any()}


def attribute_vectors(mu: torch.Tensor, labels: pd.DataFrame, attribute: str | None = None,
                      contrast: str | None = None, source: str = "the faces"
                      ) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, int]]]:
    """As in Larsen et al. 2015: mean mu of the faces with an attribute minus mean mu of those without.

    Returns ({name: float32 [D]}, {name: {"with": n, "without": n}}). With `contrast`, the extra
    vector "<attribute>_vs_<contrast>" is the mean of one group minus the mean of the other
    (e.g. happy_vs_neutral). Errors name the available attributes.
    """
    groups = checked_attribute_groups(labels, attribute, contrast, source)
    pairs = dict(groups)
    if contrast is not None:
        pairs[f"{attribute}_vs_{contrast}"] = (groups[str(attribute)][0], groups[str(contrast)][0])
    vectors, counts = {}, {}
    for name, (pos, neg) in pairs.items():
        pos_t, neg_t = torch.tensor(pos, dtype=torch.bool), torch.tensor(neg, dtype=torch.bool)
        vectors[name] = (mu[pos_t].double().mean(0) - mu[neg_t].double().mean(0)).float()
        counts[name] = {"with": int(pos.sum()), "without": int(neg.sum())}
    return vectors, counts


def checked_attribute_groups(labels: pd.DataFrame, attribute: str | None, contrast: str | None, source: str):
    """attribute_groups(labels), after checking that `attribute` and `contrast` name groups of it."""
    groups = attribute_groups(labels)
    if not groups:
        cols = ", ".join(map(str, labels.columns)) or "none"
        raise DataError(f"{source}: no labels to compute attribute vectors from (label columns: {cols}). "
                        "Use labelled faces: class subfolders (data=folder data.path=<dir>/<class>/*.jpg, "
                        "e.g. data=fer2013), the age_gender CSV (data=age_gender) or data=synthetic.")
    for key, name in (("attribute", attribute), ("contrast", contrast)):
        if name is not None and str(name) not in groups:
            raise DataError(f"{key}={name}: {source} has no such attribute; available: {', '.join(groups)}")
    if contrast is not None and attribute is None:
        raise DataError(f"contrast={contrast} needs attribute=...: the vector is attribute minus contrast")
    return groups


def apply_attribute(model: VAEGAN, z: torch.Tensor, vector: torch.Tensor,
                    strengths: Sequence[float] = (-2, -1, 0, 1, 2), batch_size: int = 256
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [F, S, C, H, W], z [F, S, D]): each face's z plus strength * vector, per strength."""
    s = torch.as_tensor([float(x) for x in strengths]).reshape(1, -1, 1)
    shifted = z.float().unsqueeze(1) + s * vector.float().reshape(1, 1, -1)
    return decode(model, shifted, batch_size), shifted


# -- writers ----------------------------------------------------------------------------------------------
def save_grid(images: torch.Tensor, path: Path, ncols: int | None = None) -> Path:
    """A PNG grid: rows x cols from [R, S, C, H, W], or square-ish from [N, C, H, W]."""
    from torchvision.utils import save_image

    if images.ndim == 5:
        ncols = images.shape[1]
        images = images.flatten(0, 1)
    ncols = ncols or max(1, math.ceil(math.sqrt(len(images))))
    save_image(images, path, nrow=ncols, padding=2, pad_value=1.0)
    return path


def save_npy(array: torch.Tensor, path: Path) -> Path:
    np.save(path, array.detach().cpu().float().numpy().astype(np.float32))
    return path


def save_gif(frames: torch.Tensor, path: Path, scale: int = 4, frame_ms: int = 100) -> Path:
    """An endless GIF of [K, S, C, H, W] frames going there and back, K faces side by side per frame,
    upscaled (nearest neighbour, so pixels stay honest) to be visible."""
    from PIL import Image
    from torchvision.utils import make_grid

    k, s = frames.shape[:2]
    order = list(range(s)) + list(range(s - 2, 0, -1))
    pictures = []
    for i in order:
        grid = make_grid(frames[:, i], nrow=max(1, math.ceil(math.sqrt(k))), padding=2, pad_value=1.0)
        arr = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        img = Image.fromarray(arr[..., 0] if frames.shape[2] == 1 else arr)
        pictures.append(img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST))
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=int(frame_ms), loop=0)
    return path


def output_dir(cfg: DictConfig) -> Path:
    out = Path(str(cfg.out))
    out.mkdir(parents=True, exist_ok=True)
    return out


def _as_list(value: Any) -> list | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple, ListConfig)):
        return list(value)
    return [value]


def choose(n: int, k: int, seed: int) -> list[int]:
    """k of range(n) (all when k >= n): a seeded, stable, sorted choice, so pictures show a spread of
    the data (class folders list their faces class by class) and the same faces every run."""
    return sorted(stable_permutation(n, seed)[:k].tolist()) if k < n else list(range(n))


def _short(index: Sequence[int], most: int = 12) -> str:
    return "[" + ",".join(map(str, index[:most])) + (",..." if len(index) > most else "") + "]"


def _check_index(index: int, faces: FaceDataset, key: str) -> int:
    if not 0 <= int(index) < len(faces):
        raise DataError(f"{key}={index}: {faces.name} has {len(faces)} faces (indices 0..{len(faces) - 1})")
    return int(index)


# -- entry points ----------------------------------------------------------------------------------------
def run_sample(cfg: DictConfig) -> list[Path]:
    """samples.png + samples.npy: decodings of prior draws or of `latents=FILE.npy`."""
    loaded = load_from_config(cfg)
    latents = None if cfg.get("latents") in (None, "") else read_latents(cfg.latents, loaded.model.latent_dim)
    if latents is None and int(cfg.num_samples) < 1:
        raise DataError(f"num_samples={cfg.num_samples}: ask for at least one face")
    images, _ = sample(loaded.model, int(cfg.num_samples), float(cfg.temperature), int(cfg.seed), latents,
                       int(cfg.batch_size))
    out = output_dir(cfg)
    return [save_grid(images, out / "samples.png"), save_npy(images, out / "samples.npy")]


def interpolation_ends(cfg: DictConfig, loaded: Loaded) -> tuple[torch.Tensor, torch.Tensor]:
    """z_a, z_b [K, D] for a/b given as dataset indices, image files, or unset (random prior z)."""
    model = loaded.model
    a, b = _as_list(cfg.get("a")), _as_list(cfg.get("b"))
    if a is None and b is None:
        k = int(cfg.pairs)
        if k < 1:
            raise DataError(f"pairs={k}: ask for at least one pair")
        z = prior(model, 2 * k, float(cfg.get("temperature", 1.0)), int(cfg.seed))
        return z[:k], z[k:]
    if a is None or b is None or len(a) != len(b):
        raise DataError(f"a={cfg.get('a')} b={cfg.get('b')}: give both ends (equally many), or neither for "
                        "random faces; each is a dataset index or an image file")
    faces = None
    images = []
    for key, items in (("a", a), ("b", b)):
        for item in items:
            if isinstance(item, int) or (isinstance(item, str) and item.isdigit() and not Path(item).exists()):
                if faces is None:
                    faces = split_faces(data_module(cfg, loaded), str(cfg.split))
                images.append(faces.images[_check_index(int(item), faces, key)])
            else:
                images.append(read_image_file(str(item), model.channels, model.image_size))
    mu, _ = encode(model, torch.stack(images), int(cfg.batch_size))
    return mu[: len(a)], mu[len(a):]


def run_interpolate(cfg: DictConfig) -> list[Path]:
    """interpolation.png (one row per pair), .gif (there and back) and .npy [pairs, steps, C, H, W]."""
    for key in ("gif_scale", "gif_frame_ms"):
        if int(cfg[key]) < 1:
            raise DataError(f"{key}={cfg[key]}: at least 1")
    loaded = load_from_config(cfg)
    z_a, z_b = interpolation_ends(cfg, loaded)
    frames, _ = interpolate(loaded.model, z_a, z_b, int(cfg.steps), str(cfg.method), int(cfg.batch_size))
    out = output_dir(cfg)
    return [save_grid(frames, out / "interpolation.png"),
            save_gif(frames, out / "interpolation.gif", int(cfg.gif_scale), int(cfg.gif_frame_ms)),
            save_npy(frames, out / "interpolation.npy")]


def run_traverse(cfg: DictConfig) -> list[Path]:
    """traversal.png: one row per latent dimension, the most used first."""
    loaded = load_from_config(cfg)
    split = split_faces(data_module(cfg, loaded), str(cfg.split))
    faces = limit_faces(split, cfg.get("max_images"), int(cfg.seed))
    mu, logvar = encode(loaded.model, faces.images, int(cfg.batch_size))
    base = cfg.get("base")
    if base in (None, "zero"):
        base_z = None
    elif isinstance(base, int) or (isinstance(base, str) and base.isdigit()):
        # an index into the whole split, as everywhere else, not into the max_images subset
        index = _check_index(int(base), split, "base")
        base_z = encode(loaded.model, split.images[index:index + 1], 1)[0][0]
    else:
        raise DataError(f"base={base}: give zero or an index into the {cfg.split} split")
    result = traverse(loaded.model, mu, logvar, base_z, cfg.get("dims"), int(cfg.steps), str(cfg.range),
                      float(cfg.k), int(cfg.batch_size))
    print(f"traversal of {len(faces)} encoded {faces.name} faces; rows, most used dimension first:")
    for row, d in enumerate(result.dims.tolist()):
        print(f"  row {row}: dim {d}  mean KL {result.usage[d]:.3f}  "
              f"sweep {result.low[d]:+.2f} .. {result.high[d]:+.2f}")
    return [save_grid(result.images, output_dir(cfg) / "traversal.png")]


def run_reconstruct(cfg: DictConfig) -> list[Path]:
    """reconstructions.png (face | reconstruction pairs, 8 pairs a row) and .npy [N, 2, C, H, W]."""
    loaded = load_from_config(cfg)
    faces = split_faces(data_module(cfg, loaded), str(cfg.split))
    if int(cfg.num_images) < 1:
        raise DataError(f"num_images={cfg.num_images}: ask for at least one face")
    index = choose(len(faces), int(cfg.num_images), int(cfg.seed))
    real, recon = reconstruct(loaded.model, faces.images[index], int(cfg.batch_size))
    pairs = torch.stack([real, recon], 1)
    mse = (real - recon).pow(2).mean().item()
    print(f"{len(index)} {faces.name} faces reconstructed (indices {_short(index)}); mean squared error "
          f"per pixel in [0, 1]: {mse:.5f}")
    out = output_dir(cfg)
    return [save_grid(pairs.flatten(0, 1), out / "reconstructions.png", ncols=16),
            save_npy(pairs, out / "reconstructions.npy")]


def run_attributes(cfg: DictConfig) -> list[Path]:
    """attribute_vectors.pt (all vectors and their counts) and attributes.png (faces + strength * vector)."""
    loaded = load_from_config(cfg)
    dm = data_module(cfg, loaded)
    faces = limit_faces(split_faces(dm, str(cfg.split)), cfg.get("max_images"), int(cfg.seed))
    attribute = None if cfg.get("attribute") is None else str(cfg.attribute)
    contrast = None if cfg.get("contrast") is None else str(cfg.contrast)
    checked_attribute_groups(faces.labels, attribute, contrast, faces.name)   # before minutes of encoding
    mu, _ = encode(loaded.model, faces.images, int(cfg.batch_size))
    vectors, counts = attribute_vectors(mu, faces.labels, attribute, contrast, faces.name)
    shown = [f"{attribute}_vs_{contrast}"] if contrast else [attribute] if attribute else list(vectors)

    targets = split_faces(dm, "val") if len(dm.val) else dm.train
    chosen = _as_list(cfg.get("faces"))
    if not chosen and int(cfg.num_faces) < 1:
        raise DataError(f"num_faces={cfg.num_faces}: ask for at least one face")
    index = [_check_index(i, targets, "faces") for i in chosen] if chosen else \
        choose(len(targets), int(cfg.num_faces), int(cfg.seed))
    z, _ = encode(loaded.model, targets.images[index], int(cfg.batch_size))
    strengths = [float(s) for s in _as_list(cfg.strength)]
    blocks = [apply_attribute(loaded.model, z, vectors[name], strengths, int(cfg.batch_size))[0] for name in shown]

    out = output_dir(cfg)
    payload = {"vectors": vectors, "counts": counts, "latent_dim": loaded.model.latent_dim,
               "faces": f"{faces.name} ({len(faces)} faces)", "checkpoint": str(loaded.path)}
    torch.save(payload, out / "attribute_vectors.pt")
    print(f"attribute vectors from {len(faces)} {faces.name} faces; attributes.png: {targets.name} faces "
          f"{_short(index)} (faces=...) per block, columns strength {strengths}:")
    for i, name in enumerate(shown):
        c = counts[name]
        print(f"  rows {i * len(index)}-{(i + 1) * len(index) - 1}: {name}  (with {c['with']}, without "
              f"{c['without']}, |vector| {vectors[name].norm():.3f})")
    return [out / "attribute_vectors.pt", save_grid(torch.cat(blocks), out / "attributes.png")]


def run_encode(cfg: DictConfig) -> list[Path]:
    """latents.npy (mu, float32 [N, latent_dim]) and labels.csv, one row per face in the same order."""
    from facegen.data.folder import read_image_folder

    loaded = load_from_config(cfg)
    if cfg.get("images") not in (None, ""):
        faces = read_image_folder(cfg.images, loaded.model.image_size, loaded.model.channels,
                                  OmegaConf.select(cfg, "paths.cache_dir", default=None),
                                  skip_bad=bool(cfg.get("skip_bad", False)), skip_key="skip_bad")
        split = "images"
    else:
        faces = split_faces(data_module(cfg, loaded), str(cfg.split))
        split = str(cfg.split)
    mu, _ = encode(loaded.model, faces.images, int(cfg.batch_size))
    labels = faces.labels.copy()
    column = labels.pop("split") if "split" in labels.columns else split   # split=all brings its own
    labels.insert(0, "split", column)
    out = output_dir(cfg)
    labels.to_csv(out / "labels.csv", index=False)
    print(f"{len(mu)} {faces.name} faces encoded to mu [{len(mu)}, {mu.shape[1]}]")
    return [save_npy(mu, out / "latents.npy"), out / "labels.csv"]


def print_paths(paths: Sequence[Path]) -> None:
    """What every entry point ends with: the files it wrote, one a line."""
    for p in paths:
        print(p)
