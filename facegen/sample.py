"""Faces from the prior, or decodings of given latents.

python -m facegen.sample checkpoint=PATH [key=value ...] (conf/sample.yaml) -- see docs/exploring.md
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from facegen.cli import run_or_explain


@hydra.main(version_base="1.3", config_path="../conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    from facegen.explore import print_paths, run_sample

    print_paths(run_or_explain(run_sample, cfg))


if __name__ == "__main__":
    sys.exit(main())
