"""Train a VAE-GAN: python -m facegen.train [group=option ...] [key=value ...]"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from facegen.cli import run_or_explain


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from facegen.trainer import train

    return run_or_explain(train, cfg)


if __name__ == "__main__":
    sys.exit(main())
