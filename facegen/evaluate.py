"""How good a trained model's faces are: distances to real faces in a face feature space, sharpness,
spectra and reconstructions of held-out faces, and a picture of each sample's nearest training faces.

python -m facegen.evaluate checkpoint=PATH [num_samples=5000] [real=val|train|path] [baseline=PATH]
(conf/evaluate.yaml) -- see docs/metrics.md
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from facegen.checkpoint import CheckpointError, read_checkpoint
from facegen.cli import run_or_explain
from facegen.data.base import DataError, FaceDataset
from facegen.explore import (
    Loaded,
    data_module,
    limit_faces,
    load,
    load_from_config,
    output_dir,
    print_paths,
    reconstruct,
    sample,
    save_grid,
    split_faces,
    with_standing_stats,
)
from facegen.metrics import (
    InceptionFeatures,
    as_float01,
    compute_metrics,
    default_feature_net,
    extract_features,
    nearest_neighbours,
)
from facegen.metrics.features import DEFAULT_MAX_IMAGES

REAL_SETS = ("val", "train", "path")
#: Which way each metric is better, for the printed table (keys without an entry have no direction).
BETTER = {"fd": "lower", "kid": "lower", "fid_inception": "lower", "precision": "higher", "recall": "higher",
          "density": "near 1", "coverage": "higher", "sharpness_ratio": "near 1", "texture_outliers": "lower",
          "spectral_distance": "lower",
          "recon_mse": "lower", "recon_psnr": "higher", "recon_ssim": "higher", "recon_feature_distance": "lower"}


@dataclass
class RealFaces:
    """The faces every evaluated model is measured against, chosen once so a baseline sees the same ones."""

    real: FaceDataset      # FD/KID/precision/recall/sharpness/spectra compare samples with these
    held_out: FaceDataset  # reconstructed (the validation split)
    train: FaceDataset     # searched for each sample's nearest faces (nearest.png)
    real_what: str         # e.g. "2000 of 3589 faces of the validation split (validation)"
    held_out_is_val: bool
    notes: list[str] = field(default_factory=list)   # printed under the "evaluating" line
    # the real faces' features and eigenfaces, computed for the first model and reused for a baseline
    stats_cache: dict = field(default_factory=dict)


def choose_real_faces(cfg: DictConfig, dm) -> RealFaces:
    """real=val|train|path, num_real and num_recon of the config, as seeded, stable subsets."""
    which = str(cfg.real)
    n = int(cfg.num_samples)
    if which == "val":
        if len(dm.val) == 0:
            raise DataError(f"real=val: {dm.name} has no validation split (data.val_fraction=0 and no "
                            "data.val_path); use real=train or real=path, or give the data a validation split")
        faces, what = dm.val, f"the validation split ({dm.val.name})"
    elif which == "train":
        faces, what = dm.train, f"the training split ({dm.train.name})"
    elif which == "path":
        if getattr(dm, "path", None) is None:
            raise DataError(f"real=path: the {dm.name} faces are not read from a data.path; "
                            "use real=val or real=train")
        # all of data.path: the training split alone when validation faces come from data.val_path
        faces = dm.train if getattr(dm, "val_path", None) is not None else split_faces(dm, "all")
        what = f"all of {dm.path}"
    else:
        raise DataError(f"real={which}: choose one of {', '.join(REAL_SETS)} (see docs/metrics.md)")
    num_real = n if cfg.get("num_real") is None else int(cfg.num_real)
    real = limit_faces(faces, num_real, int(cfg.seed))
    held_out_is_val = len(dm.val) > 0
    pool = dm.val if held_out_is_val else dm.train
    num_recon = n if cfg.get("num_recon") is None else int(cfg.num_recon)
    if num_recon < 1:
        raise DataError(f"num_recon={num_recon}: reconstruct at least one face")
    held_out = limit_faces(pool, num_recon, int(cfg.seed))
    k = int(cfg.k)
    for key, count in (("num_samples", n), (f"num_real ({what})", len(real))):
        if count <= k:
            raise DataError(f"{key}={count}: precision/recall with k={k} nearest neighbours need more than "
                            f"{k} faces on each side; ask for more (or lower k)")
    if len(dm.train) < k:
        raise DataError(f"{dm.name}: {len(dm.train)} training faces, fewer than k={k} for nearest.png")
    notes = []
    if cfg.get("num_real") is None and len(real) < n:
        notes.append(f"note: {len(real)} real faces ({what}) for {n} samples; precision, recall, density and "
                     f"coverage compare fairest with equal counts: num_samples={len(real)}")
    if which == "val":
        copies = faces_also_in(real, dm.train)
        if copies:
            notes.append(f"note: {copies} of the {len(real)} validation faces are also in the training split, byte "
                         "for byte (duplicates in the data itself); a model that memorizes its training faces is "
                         "rewarded on those")
    return RealFaces(real, held_out, dm.train, f"{len(real)} of {len(faces)} faces of {what}", held_out_is_val, notes)


def faces_also_in(faces: FaceDataset, others: FaceDataset) -> int:
    """How many of ``faces`` are byte-identical to one of ``others`` (exact duplicates across splits)."""
    import hashlib

    def digests(images: torch.Tensor) -> list[bytes]:
        flat = images.reshape(len(images), -1).contiguous().numpy()
        return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]

    known = set(digests(others.images))
    return sum(d in known for d in digests(faces.images))


def load_baseline(cfg: DictConfig, loaded: Loaded) -> Loaded | None:
    """baseline=PATH with its own model config (a raw seed state dict is recognized), checked to make
    faces of the model's size, since both are compared with the same real faces."""
    if cfg.get("baseline") in (None, ""):
        return None
    path = Path(str(cfg.baseline))
    other = with_standing_stats(cfg, load(path, str(cfg.device), None, read_checkpoint(path, "baseline")))
    a, b = loaded.model, other.model
    if (a.channels, a.image_size) != (b.channels, b.image_size):
        raise CheckpointError(f"baseline={path} makes {b.channels}x{b.image_size}x{b.image_size} faces but "
                              f"checkpoint={loaded.path} makes {a.channels}x{a.image_size}x{a.image_size}; "
                              "compare models of one image size and channel count")
    return other


def feature_net(cfg: DictConfig, dm, device: torch.device) -> torch.nn.Module:
    """metrics.feature_net as given, else the data's default net: the trainer's exact call, so both
    use (and cache) the same net and their numbers share one feature_net_hash."""
    path = OmegaConf.select(cfg, "metrics.feature_net", default=None)
    cache_dir = OmegaConf.select(cfg, "paths.cache_dir", default=None)
    if path in (None, ""):
        print(f"feature net: the default one for these faces, cached in {cache_dir} (the first use trains it on "
              f"up to {DEFAULT_MAX_IMAGES:,} of the {len(dm.train)} training faces: about a minute on a CPU)",
              flush=True)
    return default_feature_net(dm, cache_dir=cache_dir, path=path, device=device)


def evaluate_model(model, faces: RealFaces, net: torch.nn.Module, cfg: DictConfig, device: torch.device,
                   inception: torch.nn.Module | None = None) -> tuple[dict[str, Any], torch.Tensor]:
    """(metrics, samples [N, C, H, W] in [0, 1]) of one model: prior samples (seed=cfg.seed) and
    Dec(mu) reconstructions of the held-out faces, against the shared real faces."""
    bs = int(cfg.batch_size)
    fake, _ = sample(model, int(cfg.num_samples), float(cfg.temperature), int(cfg.seed), batch_size=bs)
    if not torch.isfinite(fake).all():
        raise CheckpointError("the model's samples contain NaN or inf: its weights are broken (a diverged "
                              "run?); evaluate an earlier checkpoint")
    original, recon = reconstruct(model, faces.held_out.images, bs)
    values = compute_metrics(fake, faces.real.images, net, recon01=recon, real_for_recon01=original,
                             kid_subsets=int(cfg.kid_subsets), kid_subset_size=int(cfg.kid_subset_size),
                             k=int(cfg.k), inception=inception, batch_size=bs, device=device, seed=int(cfg.seed),
                             real_cache=faces.stats_cache)
    return values, fake


def nearest_picture(fake: torch.Tensor, fake_feats: torch.Tensor, train: FaceDataset, train_feats: torch.Tensor,
                    rows: int, k: int, path: Path) -> Path:
    """nearest.png: one row per sample, the sample in the left column and its k nearest training faces
    (in feature space, closest first) to its right."""
    rows = min(int(rows), len(fake))
    _, index = nearest_neighbours(fake_feats[:rows], train_feats, k)
    neighbours = as_float01(train.images[index.reshape(-1)]).reshape(rows, k, *fake.shape[1:])
    return save_grid(torch.cat([fake[:rows, None], neighbours], dim=1), path)


def copy_check(fake_feats: torch.Tensor, held_feats: torch.Tensor, train_feats: torch.Tensor) -> str:
    """Median distance from a sample to its nearest training face, against the same for unseen real faces:
    a model that copies its data has samples much closer to training faces than new faces are."""
    d_fake = float(nearest_neighbours(fake_feats, train_feats, 1)[0].median())
    d_held = float(nearest_neighbours(held_feats, train_feats, 1)[0].median())
    ratio = d_fake / d_held if d_held > 0 else math.inf
    return (f"copy check: median feature distance to the nearest training face: samples {d_fake:.4g}, held-out "
            f"faces {d_held:.4g} (ratio {ratio:.2f}; well below 1 would mean the samples copy training faces)")


def _direction(key: str) -> str:
    if key in BETTER:
        return BETTER[key]
    prefix = key.split("_")[0]
    return BETTER.get(prefix, "") if not key.endswith("_std") else ""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(columns: dict[str, dict[str, Any]]) -> str:
    """The metrics as a text table: one row per key, one column per evaluated model."""
    keys = list(next(iter(columns.values())))
    width = max(len(k) for k in keys) + 2
    lines = [f"{'metric':<{width}}{'better':<9}" + "".join(f"{name:>14}" for name in columns)]
    for key in keys:
        lines.append(f"{key:<{width}}{_direction(key):<9}"
                     + "".join(f"{_cell(col.get(key, '-')):>14}" for col in columns.values()))
    return "\n".join(lines)


def write_json(values: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(values, indent=2) + "\n")
    return path


def run_evaluate(cfg: DictConfig) -> list[Path]:
    """metrics.json (+ metrics_baseline.json) and nearest.png for checkpoint= (and baseline=)."""
    t0 = time.perf_counter()
    if int(cfg.num_samples) < 1:
        raise DataError(f"num_samples={cfg.num_samples}: ask for at least one face")
    loaded = load_from_config(cfg)
    baseline = load_baseline(cfg, loaded)
    dm = data_module(cfg, loaded)
    faces = choose_real_faces(cfg, dm)
    net = feature_net(cfg, dm, loaded.device)
    weights = OmegaConf.select(cfg, "metrics.inception_weights", default=None)
    inception = None if weights in (None, "") else InceptionFeatures(str(weights))
    held = "held-out validation" if faces.held_out_is_val else "training (there is no validation split)"
    print(f"evaluating {loaded.path}: {cfg.num_samples} samples against {faces.real_what}; reconstructions of "
          f"{len(faces.held_out)} {held} faces; feature net {getattr(net, 'name', 'features')} "
          f"{getattr(net, 'hash', '')}", flush=True)
    for note in faces.notes:
        print(note, flush=True)

    out = output_dir(cfg)
    values, fake = evaluate_model(loaded.model, faces, net, cfg, loaded.device, inception)
    columns = {"model": values}
    paths = [write_json(columns["model"], out / "metrics.json")]
    if baseline is not None:
        columns["baseline"], _ = evaluate_model(baseline.model, faces, net, cfg, loaded.device, inception)
        paths.append(write_json(columns["baseline"], out / "metrics_baseline.json"))

    bs = int(cfg.batch_size)
    fake_feats = extract_features(net, fake, bs, loaded.device)
    train_feats = extract_features(net, faces.train.images, bs, loaded.device)
    paths.append(nearest_picture(fake, fake_feats, faces.train, train_feats, int(cfg.nearest_rows), int(cfg.k),
                                 out / "nearest.png"))
    print(format_table(columns))
    if baseline is not None:
        print(f"model: {loaded.path}\nbaseline: {baseline.path}")
    if faces.held_out_is_val:
        print(copy_check(fake_feats, extract_features(net, faces.held_out.images, bs, loaded.device), train_feats))
    print(f"evaluated in {time.perf_counter() - t0:.1f} s")
    return paths


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    print_paths(run_or_explain(run_evaluate, cfg))


if __name__ == "__main__":
    sys.exit(main())
