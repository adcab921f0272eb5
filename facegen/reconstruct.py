"""Held-out faces next to their reconstructions.

python -m facegen.reconstruct checkpoint=PATH [key=value ...] (conf/reconstruct.yaml) -- see docs/exploring.md
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from facegen.cli import run_or_explain


@hydra.main(version_base="1.3", config_path="../conf", config_name="reconstruct")
def main(cfg: DictConfig) -> None:
    from facegen.explore import print_paths, run_reconstruct

    print_paths(run_or_explain(run_reconstruct, cfg))


if __name__ == "__main__":
    sys.exit(main())
