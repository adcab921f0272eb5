"""Draw a grid of synthetic faces for the README (docs/img/synthetic_faces.png) and print its path.

    python scripts/make_synthetic_grid.py [--n 64] [--size 48] [--seed 0] [--upscale 2] [--out PATH]

The grid is what `data=synthetic` trains on, so a reader sees the default data before training.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import save_image

from facegen.data.synthetic import draw_faces

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "img" / "synthetic_faces.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="faces in the grid")
    parser.add_argument("--size", type=int, default=48, help="image_size the faces are drawn at")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nrow", type=int, default=8, help="faces per grid row")
    parser.add_argument("--upscale", type=int, default=2, help="nearest-neighbour zoom, so pixels stay visible")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    images, _ = draw_faces(args.n, image_size=args.size, seed=args.seed)
    faces = images.float() / 255.0
    if args.upscale > 1:
        faces = F.interpolate(faces, scale_factor=args.upscale, mode="nearest")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_image(faces, args.out, nrow=args.nrow, padding=2 * args.upscale, pad_value=1.0)
    print(args.out)


if __name__ == "__main__":
    main()
