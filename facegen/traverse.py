"""One row per latent dimension, swept while the others stay fixed.

python -m facegen.traverse checkpoint=PATH [key=value ...] (conf/traverse.yaml) -- see docs/exploring.md
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from facegen.cli import run_or_explain


@hydra.main(version_base="1.3", config_path="../conf", config_name="traverse")
def main(cfg: DictConfig) -> None:
    from facegen.explore import print_paths, run_traverse

    print_paths(run_or_explain(run_traverse, cfg))


if __name__ == "__main__":
    sys.exit(main())
