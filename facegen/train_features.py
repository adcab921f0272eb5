"""Train the face feature net that the metrics measure in, and save it as a weights-only file.

python -m facegen.train_features data=... [steps=600] [batch_size=64] [max_images=20000] [seed=0]
(conf/train_features.yaml) -- see docs/metrics.md
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from facegen.cli import run_or_explain
from facegen.data.base import DataError
from facegen.explore import output_dir, pick_device, print_paths
from facegen.metrics import save_feature_net, train_feature_net
from facegen.metrics.features import FORMAT_VERSION, data_hash


def run_train_features(cfg: DictConfig) -> list[Path]:
    """facenet.pt in cfg.out, trained on the data's training split (labels where it has any)."""
    for key, least in (("steps", 1), ("batch_size", 2), ("max_images", 2)):
        if int(cfg[key]) < least:
            raise DataError(f"{key}={cfg[key]}: must be at least {least}")
    device = pick_device(str(cfg.device))
    dm = instantiate(cfg.data).setup()
    if len(dm.train) < 2:
        raise DataError(f"{dm.name}: {len(dm.train)} training faces; a feature net needs at least 2")
    images, labels = dm.train.images, dm.train.labels
    n, seed = len(images), int(cfg.seed)
    if n > int(cfg.max_images):
        # default_feature_net's choice of faces, so that with the default settings this file is the very
        # net evaluate and the trainer train and cache for these faces (tests/test_evaluate.py checks it)
        keep = np.sort(np.random.Generator(np.random.PCG64(seed)).permutation(n)[: int(cfg.max_images)])
        images = images[torch.from_numpy(keep)]
        labels = labels.iloc[keep].reset_index(drop=True)
    t0 = time.perf_counter()
    print(f"training the feature net on {len(images)} of the {n} training faces of {dm.name} "
          f"({cfg.steps} steps of {cfg.batch_size})", flush=True)
    net = train_feature_net(images, labels, steps=int(cfg.steps), batch_size=int(cfg.batch_size), seed=seed,
                            device=device, log_every=max(1, int(cfg.steps) // 10))
    net.training_info.update({"data_hash": data_hash(dm.train.images), "data_num_images": n})
    path = save_feature_net(net, output_dir(cfg) / "facenet.pt")
    info = net.training_info
    heads = ", ".join(f"{h['column']} ({h['kind']})" for h in info["heads"]) or "none (no usable labels)"
    print(f"feature net {net.name}: format {FORMAT_VERSION}, hash {net.hash}; label heads: {heads}; "
          f"final loss {info['final_loss']:.4f}; {time.perf_counter() - t0:.1f} s")
    print(f"use it with: python -m facegen.evaluate checkpoint=... metrics.feature_net={path}")
    return [path]


@hydra.main(version_base="1.3", config_path="../conf", config_name="train_features")
def main(cfg: DictConfig) -> None:
    print_paths(run_or_explain(run_train_features, cfg))


if __name__ == "__main__":
    sys.exit(main())
