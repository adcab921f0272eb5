"""The in-memory face dataset and the data module every source builds on.

Faces stay uint8 until a batch is on the training device; datasets that fit in memory are indexed
as whole tensors (no per-item ``Dataset.__getitem__``), which is what makes the fast path fast.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pandas as pd
import torch


class DataError(Exception):
    """Bad input data: the message names the file, row or key and says what to do."""


@dataclass
class FaceDataset:
    """Faces as one uint8 tensor [N, C, H, W] plus one label row per face (may have no columns)."""

    images: torch.Tensor
    labels: pd.DataFrame = field(default_factory=pd.DataFrame)
    name: str = "faces"

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"{self.name}: images must be uint8 [N, C, H, W], got "
                             f"{self.images.dtype} {tuple(self.images.shape)}")
        if len(self.labels) == 0 and len(self.labels.columns) == 0:
            self.labels = pd.DataFrame(index=pd.RangeIndex(len(self.images)))
        if len(self.labels) != len(self.images):
            raise ValueError(f"{self.name}: {len(self.images)} images but {len(self.labels)} label rows")
        self.labels = self.labels.reset_index(drop=True)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: np.ndarray | torch.Tensor | list[int], name: str | None = None) -> "FaceDataset":
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        return FaceDataset(self.images[idx], self.labels.iloc[idx.numpy()].reset_index(drop=True),
                           name or self.name)


def stable_permutation(n: int, seed: int) -> np.ndarray:
    """A permutation of range(n) that depends only on (n, seed): the same on every machine and run."""
    return np.random.Generator(np.random.PCG64(seed)).permutation(n)


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, rank: int = 0,
                  world_size: int = 1) -> list[torch.Tensor]:
    """Index batches of one epoch: a shuffle fixed by (seed, epoch), split across ranks.

    Deterministic, so a resumed run skips the batches it already did and sees the same rest.
    The last, smaller batch is kept, so an epoch always has at least one step.
    """
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    perm = torch.randperm(n, generator=g)
    if world_size > 1:
        per_rank = n // world_size if n >= world_size else 1
        perm = perm[: per_rank * world_size] if n >= world_size else perm.repeat(world_size)[:world_size]
        perm = perm[rank::world_size]
    return list(torch.split(perm, max(1, int(batch_size))))


class FaceDataModule:
    """Loads all faces of a source once, then serves a seeded, stable train/validation split.

    Subclasses implement :meth:`load` (the whole source as a :class:`FaceDataset`) and may
    override :meth:`load_val` when the source has its own validation set.
    """

    def __init__(self, image_size: int = 48, channels: int = 1, batch_size: int = 64,
                 val_fraction: float = 0.05, limit: int | None = None, hflip: bool = False,
                 seed: int = 0, cache_dir: str | None = None, name: str = "faces") -> None:
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.batch_size = int(batch_size)
        self.val_fraction = float(val_fraction)
        self.limit = None if limit is None else int(limit)
        self.hflip = bool(hflip)
        self.seed = int(seed)
        self.cache_dir = cache_dir
        self.name = name
        self._check_settings()
        self._train: FaceDataset | None = None
        self._val: FaceDataset | None = None

    def _check_settings(self) -> None:
        """Out-of-range settings are refused here, before any file is read, naming the key."""
        problems = []
        if self.image_size < 1:
            problems.append(f"data.image_size={self.image_size}: the side of the faces in pixels, at least 1")
        if self.batch_size < 1:
            problems.append(f"data.batch_size={self.batch_size}: faces per step, at least 1")
        if not 0.0 <= self.val_fraction < 1.0:
            problems.append(f"data.val_fraction={self.val_fraction}: the share of faces held out, in [0, 1) "
                            "(0 holds none out)")
        if self.limit is not None and self.limit < 1:
            problems.append(f"data.limit={self.limit}: how many faces to use, at least 1 (null uses all)")
        if problems:
            raise DataError(f"{self.name}: " + "; ".join(problems))

    # -- what a source implements -------------------------------------------------------------
    def load(self) -> FaceDataset:
        raise NotImplementedError

    def load_val(self) -> FaceDataset | None:
        """A separate validation set, when the source has one (None: split off val_fraction)."""
        return None

    # -- the split ---------------------------------------------------------------------------
    def setup(self) -> "FaceDataModule":
        if self._train is not None:
            return self
        full = self.load()
        self._check_shape(full)
        val = self.load_val()
        if self.limit is not None and self.limit < len(full):
            full = full.subset(np.sort(stable_permutation(len(full), self.seed)[: self.limit]))
        if val is not None:
            self._check_shape(val)
            self._train, self._val = self.align(full, val)
        else:
            n_val = int(round(len(full) * self.val_fraction))
            if self.val_fraction > 0 and len(full) > 1:
                n_val = min(max(n_val, 1), len(full) - 1)
            perm = stable_permutation(len(full), self.seed + 1)
            self._val = full.subset(np.sort(perm[:n_val]), f"{full.name}/val")
            self._train = full.subset(np.sort(perm[n_val:]), f"{full.name}/train")
        if len(self._train) == 0:
            raise DataError(f"{self.name}: no training images (limit={self.limit}, "
                            f"val_fraction={self.val_fraction}); raise data.limit or lower data.val_fraction")
        return self

    def align(self, train: FaceDataset, val: FaceDataset) -> tuple[FaceDataset, FaceDataset]:
        """Make a separate validation set's labels agree with the training set's (sources override)."""
        return train, val

    def _check_shape(self, ds: FaceDataset) -> None:
        _, c, h, w = ds.images.shape
        if (c, h, w) != (self.channels, self.image_size, self.image_size):
            raise DataError(f"{ds.name}: images are {c}x{h}x{w} but the config asks for "
                            f"{self.channels}x{self.image_size}x{self.image_size} "
                            "(data.channels, data.image_size)")

    @property
    def train(self) -> FaceDataset:
        return self.setup()._train  # type: ignore[return-value]

    @property
    def val(self) -> FaceDataset:
        return self.setup()._val  # type: ignore[return-value]

    def train_batches(self, epoch: int, rank: int = 0, world_size: int = 1) -> list[torch.Tensor]:
        return epoch_batches(len(self.train), self.batch_size, epoch, self.seed, rank, world_size)

    def iter_val(self, batch_size: int | None = None) -> Iterator[torch.Tensor]:
        bs = batch_size or self.batch_size
        for i in range(0, len(self.val), bs):
            yield self.val.images[i:i + bs]
