"""The synthetic faces: deterministic, balanced, shaped as configured, and labelled with what was drawn."""
from __future__ import annotations

import functools
import time
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import facegen.data.synthetic as synthetic
from facegen.data.base import DataError
from facegen.data.synthetic import (SyntheticFaces, draw_faces, eyes_region, hair_region, mouth_region,
                                    mouth_statistic)

CONF = Path(__file__).resolve().parents[1] / "conf" / "data" / "synthetic.yaml"


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a random positive scores above a random negative), from ranks (ties are negligible here)."""
    ranks = np.concatenate([positive, negative]).argsort().argsort() + 1
    return float((ranks[:len(positive)].sum() - len(positive) * (len(positive) + 1) / 2)
                 / (len(positive) * len(negative)))


def region_mean(images: torch.Tensor, region: tuple[slice, slice]) -> np.ndarray:
    rows, cols = region
    return images[:, 0, rows, cols].float().mean(dim=(1, 2)).numpy()


@pytest.fixture(scope="module")
def faces() -> tuple[torch.Tensor, pd.DataFrame]:
    return draw_faces(3000, seed=11)


# -- determinism --------------------------------------------------------------------------------
def test_same_seed_gives_identical_faces_and_labels_whatever_the_global_rng():
    torch.manual_seed(0)
    np.random.seed(0)
    a, labels_a = draw_faces(300, seed=3)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    torch.manual_seed(123)
    np.random.seed(123)
    b, labels_b = draw_faces(300, seed=3)
    assert torch.equal(a, b)
    pd.testing.assert_frame_equal(labels_a, labels_b)
    torch.manual_seed(0)
    np.random.seed(0)
    draw_faces(10, seed=3)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])


def test_different_seeds_give_different_faces():
    a, labels_a = draw_faces(200, seed=0)
    b, labels_b = draw_faces(200, seed=1)
    differs = (a != b).flatten(1).any(dim=1)
    assert differs.float().mean() > 0.99
    assert not np.allclose(labels_a["hair_darkness"], labels_b["hair_darkness"])


def test_fewer_faces_are_a_prefix_and_drawing_faces_in_other_groups_changes_no_pixel(monkeypatch):
    n = synthetic.BLOCK + 37                          # crosses a block
    more, labels_more = draw_faces(n + 300, seed=5)
    fewer, labels_fewer = draw_faces(n, seed=5)
    assert torch.equal(fewer, more[:n])
    pd.testing.assert_frame_equal(labels_fewer, labels_more.iloc[:n])
    render = synthetic._render

    def in_pieces_backwards(p, noise, out, banded=True):   # 97 faces per kernel call, last ones first
        for start in reversed(range(0, len(out), 97)):
            part = slice(start, start + 97)
            render({key: val[part] for key, val in p.items()}, noise[part], out[part], banded)

    monkeypatch.setattr(synthetic, "_render", in_pieces_backwards)
    regrouped, _ = draw_faces(n, seed=5)
    assert torch.equal(regrouped, fewer)


@pytest.mark.parametrize("fixed", [None, {"roll": 1.0, "pose": -1.0, "scale": 1.0, "shift_y": 0.05, "glasses": 1,
                                          "smiling": 1, "mouth_open": 1},
                                   {"roll": -1.0, "pose": 1.0, "shift_x": 0.06, "shift_y": -0.05, "hair_style": 1}])
def test_drawing_in_row_bands_equals_drawing_whole_images(monkeypatch, fixed):
    banded, _ = draw_faces(300, seed=8, fixed=fixed)
    monkeypatch.setattr(synthetic, "_render", functools.partial(synthetic._render, banded=False))
    whole, _ = draw_faces(300, seed=8, fixed=fixed)
    assert torch.equal(banded, whole)


# -- shape, range, balance ----------------------------------------------------------------------------
@pytest.mark.parametrize("size", [48, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_dtype_and_channels(size, channels):
    images, labels = draw_faces(40, image_size=size, seed=2, channels=channels)
    assert images.shape == (40, channels, size, size) and images.dtype == torch.uint8
    assert len(labels) == 40
    assert images.float().std() > 25                     # real contrast, not a flat or noisy field
    if channels == 3:
        assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
        assert torch.equal(images[:, :1], draw_faces(40, image_size=size, seed=2)[0])


def test_bad_arguments_say_what_to_do():
    with pytest.raises(DataError, match="channels"):
        draw_faces(4, channels=2)
    with pytest.raises(DataError, match="image_size"):
        draw_faces(4, image_size=8)
    with pytest.raises(ValueError, match="cannot hold 'beard'"):
        draw_faces(4, fixed={"beard": 1})
    with pytest.raises(ValueError, match="outside"):
        draw_faces(4, fixed={"pose": 2.0})
    images, labels = draw_faces(0)
    assert images.shape == (0, 1, 48, 48) and len(labels) == 0


def test_labels_are_balanced_and_in_range(faces):
    _, labels = faces
    assert 0.46 < labels["smiling"].mean() < 0.54
    assert 0.26 < labels["glasses"].mean() < 0.34
    assert labels["mouth_open"].le(labels["smiling"]).all()          # only smiles are open
    assert 0.3 < labels.loc[labels["smiling"] == 1, "mouth_open"].mean() < 0.6
    for column in ("hair_darkness", "skin_tone"):
        assert labels[column].between(0, 1).all() and 0.45 < labels[column].mean() < 0.55
    for column in ("pose", "roll"):
        assert labels[column].between(-1, 1).all() and abs(labels[column].mean()) < 0.05
    assert set(labels["hair_style"]) == set(range(len(synthetic.HAIR_STYLES)))


# -- labels match what was drawn ------------------------------------------------------------------
@pytest.mark.parametrize("size", [48, 64])
def test_mouth_statistic_separates_smiling_from_not(size):
    images, labels = draw_faces(2000, image_size=size, seed=21)
    stat = mouth_statistic(images).numpy()
    smiling = labels["smiling"].to_numpy() == 1
    pos, neg = stat[smiling], stat[~smiling]
    assert auroc(pos, neg) > 0.93
    standard_error = np.sqrt(pos.var() / len(pos) + neg.var() / len(neg))
    assert pos.mean() - neg.mean() > 20 * standard_error
    assert pos.mean() > 0 > neg.mean()                   # corners up for smiles, flat or down otherwise


def test_mouth_statistic_holds_up_on_blurry_float_images(faces):
    images, labels = faces
    blurred = F.avg_pool2d(images.float() / 127.5 - 1.0, 3, stride=1, padding=1, count_include_pad=False)
    stat = mouth_statistic(blurred.expand(-1, 3, -1, -1)).numpy()   # [-1, 1], 3 channels, like a decoder
    smiling = labels["smiling"].to_numpy() == 1
    assert auroc(stat[smiling], stat[~smiling]) > 0.9


def test_adding_a_smile_changes_only_the_mouth_and_raises_the_statistic():
    plain, labels_plain = draw_faces(600, seed=4, fixed={"smiling": 0})
    smiling, labels_smiling = draw_faces(600, seed=4, fixed={"smiling": 1})
    assert labels_plain["smiling"].eq(0).all() and labels_smiling["smiling"].eq(1).all()
    rows, cols = mouth_region(48)
    outside = (plain != smiling)
    outside[:, :, rows, cols] = False
    assert not outside.any()                             # mouth_region holds every mouth
    raised = mouth_statistic(smiling) - mouth_statistic(plain)
    assert (raised > 0).float().mean() > 0.95


def test_glasses_darken_the_eyes(faces):
    bare, _ = draw_faces(500, seed=6, fixed={"glasses": 0})
    wearing, _ = draw_faces(500, seed=6, fixed={"glasses": 1})
    darker = region_mean(bare, eyes_region(48)) - region_mean(wearing, eyes_region(48))
    assert (darker > 0).all() and darker.mean() > 15     # gray levels, same faces
    images, labels = faces
    eyes = region_mean(images, eyes_region(48))
    glasses = labels["glasses"].to_numpy() == 1
    assert auroc(-eyes[glasses], -eyes[~glasses]) > 0.8  # across different faces too


def test_hair_darkness_is_the_hair_intensity(faces):
    images, labels = faces
    hair = region_mean(images, hair_region(48))
    assert np.corrcoef(hair, labels["hair_darkness"])[0, 1] < -0.9


def test_pose_turns_the_eyes_sideways():
    def eye_column(pose: float) -> np.ndarray:
        images, _ = draw_faces(300, seed=7, fixed={"pose": pose, "roll": 0.0, "shift_x": 0.0})
        rows, cols = eyes_region(48)
        dark = (255.0 - images[:, 0, rows, cols].float()).clamp(min=0) ** 4
        where = torch.arange(cols.stop - cols.start, dtype=torch.float32)
        return ((dark.sum(dim=1) * where).sum(dim=1) / dark.sum(dim=(1, 2))).numpy()
    shift = eye_column(1.0) - eye_column(-1.0)
    assert (shift > 0).mean() > 0.9 and shift.mean() > 1.5       # pixels to the right


# -- the data module, as Hydra builds it -----------------------------------------------------------
def module_kwargs(tmp_path: Path, **overrides) -> dict:
    """conf/data/synthetic.yaml with the interpolated keys filled in, as the full config tree would."""
    cfg = OmegaConf.load(CONF)
    cfg.seed, cfg.cache_dir = 0, str(tmp_path / "cache")
    cfg.num_images = 400
    for key, value in overrides.items():
        cfg[key] = value
    return OmegaConf.to_container(cfg)


def test_hydra_builds_the_module_with_a_stable_split(tmp_path):
    first = hydra.utils.instantiate(module_kwargs(tmp_path, val_fraction=0.1))
    assert isinstance(first, SyntheticFaces)
    assert len(first.train) == 360 and len(first.val) == 40
    assert first.train.images.shape[1:] == (1, 48, 48)
    assert set(first.train.labels.columns) >= {"smiling", "glasses", "hair_darkness", "pose"}
    second = hydra.utils.instantiate(module_kwargs(tmp_path, val_fraction=0.1))
    assert torch.equal(first.val.images, second.val.images)
    pd.testing.assert_frame_equal(first.val.labels, second.val.labels)
    train_rows = {bytes(face.numpy()) for face in first.train.images}
    assert not any(bytes(face.numpy()) in train_rows for face in first.val.images)
    other_seed = hydra.utils.instantiate({**module_kwargs(tmp_path, val_fraction=0.1), "seed": 1})
    assert not torch.equal(first.val.images, other_seed.val.images)


def test_limit_and_size_options_are_respected(tmp_path):
    module = hydra.utils.instantiate(module_kwargs(tmp_path, limit=100, val_fraction=0.2,
                                                   image_size=64, channels=3))
    assert len(module.train) == 80 and len(module.val) == 20
    assert module.val.images.shape[1:] == (3, 64, 64)
    assert module.train_batches(epoch=0)[0].numel() == 64     # the configured batch size
    with pytest.raises(DataError, match="num_images"):
        SyntheticFaces(**{k: v for k, v in module_kwargs(tmp_path, num_images=0).items() if k != "_target_"})


def test_drawing_is_fast_enough():
    draw_faces(64)                                    # warm up: compiles the kernel, or loads it from numba's cache
    start = time.perf_counter()
    draw_faces(20000, seed=1)                         # one thread: the kernel is serial, numpy's work is too
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, f"20,000 faces took {elapsed:.2f} s ({20000 / elapsed:,.0f} faces/s) on one thread"
