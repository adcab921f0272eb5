"""The data module every source builds on (facegen/data/base.py): a split that follows data.seed and keeps
each label with its face, a seeded limit, the epoch batches and the validation pass.

The faces here are numbered (every pixel of face i is i), so where a face went can be read off it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from facegen.data.base import FaceDataModule, FaceDataset, epoch_batches


class Numbered(FaceDataModule):
    """n <= 256 tiny faces; face i has every pixel i and the label index=i."""

    def __init__(self, n: int, **settings) -> None:
        super().__init__(image_size=4, name="numbered", **settings)
        self.n = n

    def load(self) -> FaceDataset:
        index = torch.arange(self.n)
        images = index.to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
        return FaceDataset(images, pd.DataFrame({"index": index.numpy()}), "numbered")


def ids(ds: FaceDataset) -> np.ndarray:
    return ds.labels["index"].to_numpy()


def test_split_and_limit_keep_each_label_with_its_face():
    """Attribute vectors and encode's labels.csv pair a face with its row: the split must move both."""
    dm = Numbered(200, val_fraction=0.2, limit=150, seed=3)
    assert len(dm.train) == 120 and len(dm.val) == 30
    for ds in (dm.train, dm.val):
        assert np.array_equal(ds.images[:, 0, 0, 0].numpy(), ids(ds)), ds.name
        assert (ds.images == ds.images[:, :, :1, :1]).all()
    assert not set(ids(dm.train)) & set(ids(dm.val))


def test_the_split_follows_data_seed():
    """The same faces (a CSV, a folder) with another data.seed are split another way; the same seed, the same way."""
    val = {seed: ids(Numbered(100, val_fraction=0.2, seed=seed).val) for seed in (0, 1)}
    assert np.array_equal(val[0], ids(Numbered(100, val_fraction=0.2, seed=0).val))
    assert not np.array_equal(val[0], val[1])


def test_limit_is_a_seeded_sample_of_all_faces_not_the_first_ones():
    """A class folder lists one class after another: data.limit=N taking the first N would train on one class."""
    chosen = ids(Numbered(200, val_fraction=0.0, limit=20, seed=0).train)
    assert len(chosen) == 20
    assert (chosen < 100).any() and (chosen >= 100).any()
    assert np.array_equal(chosen, ids(Numbered(200, val_fraction=0.0, limit=20, seed=0).train))
    assert not np.array_equal(chosen, ids(Numbered(200, val_fraction=0.0, limit=20, seed=1).train))


def test_a_small_val_fraction_still_holds_out_one_face():
    """val_fraction > 0 always leaves validation faces (val/loss and best.pt need them); 0 leaves none."""
    dm = Numbered(10, val_fraction=0.01)
    assert len(dm.val) == 1 and len(dm.train) == 9
    assert len(Numbered(10, val_fraction=0.0).val) == 0


def test_epoch_batches_cover_every_face_once_in_a_new_order_each_epoch():
    n, bs = 103, 16
    epoch0 = epoch_batches(n, bs, epoch=0, seed=5)
    assert [len(b) for b in epoch0] == [16] * 6 + [7]          # the last, smaller batch is kept
    assert sorted(torch.cat(epoch0).tolist()) == list(range(n))
    assert torch.equal(torch.cat(epoch0), torch.cat(epoch_batches(n, bs, 0, 5)))   # a resume sees the same
    assert not torch.equal(torch.cat(epoch0), torch.cat(epoch_batches(n, bs, 1, 5)))  # reshuffled per epoch
    assert not torch.equal(torch.cat(epoch0), torch.cat(epoch_batches(n, bs, 0, 6)))  # and per seed
    ranks = [torch.cat(epoch_batches(n, bs, 2, 5, rank=r, world_size=4)) for r in range(4)]
    assert [len(r) for r in ranks] == [n // 4] * 4                # equal steps on every rank
    assert len(set(torch.cat(ranks).tolist())) == 4 * (n // 4)    # no face on two ranks


def test_iter_val_yields_every_validation_face_once_in_order():
    """validate() averages over iter_val: a dropped last, smaller batch would skew val/loss."""
    dm = Numbered(250, val_fraction=0.3, batch_size=16)
    assert len(dm.val) == 75
    assert torch.equal(torch.cat(list(dm.iter_val(32))), dm.val.images)
    assert torch.equal(torch.cat(list(dm.iter_val())), dm.val.images)
