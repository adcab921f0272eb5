"""Attribute vectors (mean z with a label minus mean z without) and faces moved along them.

python -m facegen.attributes checkpoint=PATH [key=value ...] (conf/attributes.yaml) -- see docs/exploring.md
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from facegen.cli import run_or_explain


@hydra.main(version_base="1.3", config_path="../conf", config_name="attributes")
def main(cfg: DictConfig) -> None:
    from facegen.explore import print_paths, run_attributes

    print_paths(run_or_explain(run_attributes, cfg))


if __name__ == "__main__":
    sys.exit(main())
