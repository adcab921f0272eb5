"""Faces between two faces (dataset indices, image files or random z).

python -m facegen.interpolate checkpoint=PATH [key=value ...] (conf/interpolate.yaml) -- see docs/exploring.md
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from facegen.cli import run_or_explain


@hydra.main(version_base="1.3", config_path="../conf", config_name="interpolate")
def main(cfg: DictConfig) -> None:
    from facegen.explore import print_paths, run_interpolate

    print_paths(run_or_explain(run_interpolate, cfg))


if __name__ == "__main__":
    sys.exit(main())
