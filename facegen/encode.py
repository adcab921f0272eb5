"""Faces to latents (mu), the counterpart of facegen.sample latents=.

python -m facegen.encode checkpoint=PATH [key=value ...] (conf/encode.yaml) -- see docs/exploring.md
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from facegen.cli import run_or_explain


@hydra.main(version_base="1.3", config_path="../conf", config_name="encode")
def main(cfg: DictConfig) -> None:
    from facegen.explore import print_paths, run_encode

    print_paths(run_or_explain(run_encode, cfg))


if __name__ == "__main__":
    sys.exit(main())
