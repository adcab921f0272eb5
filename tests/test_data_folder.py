"""The image-folder reader: FER2013 at full size, labels from folders and UTKFace names, bad files, cache."""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from facegen.data import DataError, FolderFaces, read_image_folder
from facegen.data.cache import CacheWarning
from facegen.data.folder import SkippedImagesWarning
from tests.conftest import compose_config

FER = Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013"
CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
needs_fer = pytest.mark.skipif(not (FER / "train").is_dir(), reason=f"{FER} is absent")


@pytest.fixture(scope="session")
def fer_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fer_cache")


@pytest.fixture(scope="session")
def fer_train(fer_cache):
    return read_image_folder(FER / "train", cache_dir=fer_cache)


@pytest.fixture
def subset(tmp_path) -> Path:
    """40 FER2013 faces per class copied to tmp_path/faces/<class>/ (280 files)."""
    if not (FER / "train").is_dir():
        pytest.skip(f"{FER} is absent")
    root = tmp_path / "faces"
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        for f in sorted((FER / "train" / cls).iterdir())[:40]:
            shutil.copy(f, root / cls / f.name)
    return root


# -- FER2013 at full size ----------------------------------------------------------------------
@needs_fer
def test_fer2013_train_counts_and_labels(fer_train):
    ds = fer_train
    assert ds.images.shape == (28_709, 1, 48, 48) and ds.images.dtype == torch.uint8
    counts = ds.labels["label"].value_counts()
    assert sorted(counts.index) == CLASSES
    assert counts["happy"] == 7_215 and counts["disgust"] == 436
    # label_idx as torchvision's ImageFolder numbers classes: sorted names
    pairs = ds.labels[["label", "label_idx"]].drop_duplicates().sort_values("label_idx")
    assert pairs["label"].tolist() == CLASSES and pairs["label_idx"].tolist() == list(range(7))
    assert ds.labels["label_idx"].dtype == np.int64
    # paths are relative and sorted; the pixels are the file's own
    assert ds.labels["path"].is_monotonic_increasing
    first = ds.labels["path"].iloc[0]
    assert first.startswith("angry/Training_")
    expected = np.asarray(Image.open(FER / "train" / first).convert("L"))
    assert np.array_equal(ds.images[0, 0].numpy(), expected)


@needs_fer
def test_fer2013_cached_read_equals_cold(fer_train, fer_cache, monkeypatch):
    import facegen.data.folder as folder

    monkeypatch.setattr(folder, "_decode_folder", lambda *a, **k: pytest.fail("decoded again"))
    cached = read_image_folder(FER / "train", cache_dir=fer_cache)
    assert torch.equal(cached.images, fer_train.images)
    pd.testing.assert_frame_equal(cached.labels, fer_train.labels)


@needs_fer
def test_fer2013_config_uses_the_validation_folder(fer_cache):
    cfg = compose_config("train", ["data=fer2013", f"data.path={FER / 'train'}",
                                   f"data.val_path={FER / 'validation'}", f"paths.cache_dir={fer_cache}",
                                   "data.limit=1000"])
    dm = instantiate(cfg.data)
    assert isinstance(dm, FolderFaces) and dm.hflip is True
    assert len(dm.train) == 1000 and len(dm.val) == 3_589
    assert dm.val.images.shape[1:] == (1, 48, 48)
    assert set(dm.val.labels["label"]) == set(CLASSES)


# -- bad files -------------------------------------------------------------------------------
def test_a_corrupt_image_is_named_or_skipped_and_counted(subset, tmp_path):
    bad = subset / "happy" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 3)
    with pytest.raises(DataError) as err:
        read_image_folder(subset, cache_dir=tmp_path / "c")
    assert str(bad) in str(err.value) and "data.skip_bad=true" in str(err.value)
    assert not list((tmp_path / "c").glob("*.pt")), "a failed read must not be cached"

    for attempt in ("cold", "cached"):
        with pytest.warns(SkippedImagesWarning, match=r"skipped 1 unreadable image\(s\) of 281 .*happy/broken\.jpg"):
            ds = read_image_folder(subset, cache_dir=tmp_path / "c", skip_bad=True)
        assert len(ds) == 280, attempt
        assert "happy/broken.jpg" not in set(ds.labels["path"])
        assert (ds.labels["label"].value_counts() == 40).all()
    # the cache holds the skip; a later read without skip_bad still refuses the bad file
    with pytest.raises(DataError, match="broken.jpg"):
        read_image_folder(subset, cache_dir=tmp_path / "c")


def test_an_empty_file_is_a_bad_image(subset, tmp_path):
    (subset / "fear" / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"fear/empty\.png: cannot decode it"):
        read_image_folder(subset, cache_dir=tmp_path / "c")


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: image folder not found"):
        read_image_folder(tmp_path / "nowhere", cache_dir=tmp_path / "c")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"empty: no images \(.jpg, .jpeg, .png, .bmp, .webp\)"):
        read_image_folder(tmp_path / "empty", cache_dir=tmp_path / "c")


# -- sizes, channels, formats, UTKFace names ------------------------------------------------------
def test_image_size_64_and_3_channels(subset, tmp_path):
    gray = read_image_folder(subset, cache_dir=tmp_path / "c")
    rgb = read_image_folder(subset, image_size=64, channels=3, cache_dir=tmp_path / "c")
    assert rgb.images.shape == (280, 3, 64, 64) and rgb.images.dtype == torch.uint8
    assert torch.equal(rgb.images[:, 0], rgb.images[:, 1])  # gray JPEGs: the 3 channels are equal
    # the same faces, center-cropped (no-op) and resized with antialiasing from 48 to 64
    from torchvision.transforms.v2 import functional as F

    up = F.resize(gray.images, [64, 64], antialias=True)
    assert (rgb.images[:, :1].int() - up.int()).abs().max() <= 1
    pd.testing.assert_frame_equal(rgb.labels, gray.labels)
    assert len(list((tmp_path / "c").glob("*.pt"))) == 2, "each size/channels variant keeps its cache"


def _save(path: Path, array: np.ndarray, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)


def test_utkface_names_formats_and_center_crop(tmp_path):
    root = tmp_path / "utk"
    wide = np.zeros((40, 60), dtype=np.uint8)
    wide[:, 10:50] = 200  # the centre square is uniform 200, the 10-pixel side strips are black
    _save(root / "25_1_3_20170116174525125.jpg.chip.png", wide)
    tall = np.full((30, 20), 90, dtype=np.uint8)
    _save(root / "3_0_0_20170110.bmp", tall)
    color = np.zeros((20, 20, 3), dtype=np.uint8)
    color[..., 0] = 255  # pure red
    _save(root / "70_0_2_x.webp", color)
    _save(root / "sub" / "61_1_4_y.jpg", np.full((24, 24), 128, dtype=np.uint8))
    _save(root / "odd_name.png", np.full((20, 20), 7, dtype=np.uint8))
    # a big noisy photo (> 32 KB, decoded on its own), 400x300: black 50-pixel side strips that
    # the center crop removes, then 150 columns of 50 and 150 of 200
    cols = np.arange(400)
    photo = np.where((cols < 50) | (cols >= 350), 0, np.where(cols < 200, 50, 200))[None, :].repeat(300, 0)
    photo = (photo + np.random.default_rng(0).normal(0, 8, photo.shape)).clip(0, 255).astype(np.uint8)
    _save(root / "zz_1_1_photo.jpeg", photo, quality=98)
    assert (root / "zz_1_1_photo.jpeg").stat().st_size > 32 * 1024
    ds = read_image_folder(root, image_size=20, cache_dir=tmp_path / "c")
    assert ds.labels["path"].tolist() == ["25_1_3_20170116174525125.jpg.chip.png", "3_0_0_20170110.bmp",
                                          "70_0_2_x.webp", "odd_name.png", "sub/61_1_4_y.jpg",
                                          "zz_1_1_photo.jpeg"]
    assert ds.labels["age"].tolist() == [25, 3, 70, -1, 61, -1]
    assert ds.labels["gender"].tolist() == [1, 0, 0, -1, 1, -1]
    assert ds.labels["ethnicity"].tolist() == [3, 0, 2, -1, 4, -1]
    big = ds.images[5, 0].float()
    assert abs(big[:, :9].mean() - 50) < 3 and abs(big[:, 11:].mean() - 200) < 3
    assert "label" not in ds.labels.columns  # some images are not in a class folder
    img = ds.images[:, 0].int()
    assert (img[0] == 200).all(), "center crop keeps the middle 40x40 of the 40x60 image"
    assert (img[1] == 90).all() and (img[3] == 7).all()
    assert abs(int(img[2].float().mean()) - 76) <= 3  # red in gray: 0.299 * 255
    assert (img[4] - 128).abs().max() <= 2


# -- the data module and the cache ----------------------------------------------------------------
def test_folderfaces_split_and_changed_files(subset, tmp_path):
    dm = FolderFaces(str(subset), val_fraction=0.1, cache_dir=str(tmp_path / "c"), seed=1)
    assert dm.load_val() is None
    assert len(dm.train) == 252 and len(dm.val) == 28
    # a file added or changed is seen: the listing's key changes and the folder is decoded again
    shutil.copy(next((subset / "sad").iterdir()), subset / "sad" / "copy.jpg")
    assert len(read_image_folder(subset, cache_dir=tmp_path / "c")) == 281
    assert len(list((tmp_path / "c").glob("*.pt"))) == 1, "the stale version is removed"


def test_a_truncated_folder_cache_is_rebuilt(subset, tmp_path):
    cold = read_image_folder(subset, cache_dir=tmp_path / "c")
    (file,) = (tmp_path / "c").glob("*.pt")
    file.write_bytes(file.read_bytes()[:1000])
    with pytest.warns(CacheWarning, match="rebuilding it"):
        again = read_image_folder(subset, cache_dir=tmp_path / "c")
    assert torch.equal(again.images, cold.images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_image_folder(subset, cache_dir=tmp_path / "c")


def test_a_folder_of_png_files_only(tmp_path):
    """No JPEG in a chunk must not reach decode_jpeg([]) (which raises on an empty list)."""
    import torch
    from torchvision.io import write_png

    from facegen.data.folder import read_image_folder

    for i in range(3):
        write_png((torch.arange(40 * 40, dtype=torch.int64).view(1, 40, 40) * (i + 1) % 256).to(torch.uint8),
                  str(tmp_path / f"face{i}.png"))
    ds = read_image_folder(tmp_path, image_size=48, channels=1, cache_dir=tmp_path / "cache")
    assert ds.images.shape == (3, 1, 48, 48) and ds.images.dtype == torch.uint8
    assert ds.images[0].float().std() > 0


# -- odd folders (found by an audit of user data, 2026-12-01) -------------------------------------
def test_a_16_bit_png_becomes_8_bit(tmp_path):
    """Pillow writes 16-bit grayscale PNGs (mode I;16); torchvision decodes them as uint16."""
    ramp = (np.arange(20 * 20, dtype=np.uint16).reshape(20, 20) * 160)       # 0 .. 63,840
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    _save(tmp_path / "plain.png", (ramp // 257).astype(np.uint8))
    ds = read_image_folder(tmp_path, image_size=20, cache_dir=tmp_path / "c")
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (2, 1, 20, 20)
    assert (ds.images[0].int() - ds.images[1].int()).abs().max() <= 1, "16 bits scaled to 8, not cut"


def test_a_symlink_loop_is_listed_once(tmp_path):
    root = tmp_path / "faces"
    _save(root / "real" / "a.png", np.full((8, 8), 9, dtype=np.uint8))
    (root / "real" / "loop").symlink_to(root, target_is_directory=True)
    ds = read_image_folder(root, image_size=8, cache_dir=tmp_path / "c")
    assert ds.labels["path"].tolist() == ["real/a.png"]


def test_file_names_that_are_not_utf8_are_printable_labels(tmp_path):
    import os

    folder = os.fsencode(tmp_path / "faces")
    os.makedirs(folder)
    Image.fromarray(np.full((8, 8), 5, dtype=np.uint8)).save(os.fsdecode(folder + b"/caf\xe9.png"))
    ds = read_image_folder(tmp_path / "faces", image_size=8, cache_dir=tmp_path / "c")
    assert ds.labels["path"].tolist() == ["caf\\xe9.png"]
    ds.labels.to_csv(tmp_path / "labels.csv")   # what facegen.encode writes: no UnicodeEncodeError


def test_class_indices_agree_between_training_and_validation_folders(tmp_path):
    for split, classes in (("train", ["angry", "disgust", "fear"]), ("val", ["angry", "fear"])):
        for cls in classes:
            _save(tmp_path / split / cls / "x.png", np.full((8, 8), 1, dtype=np.uint8))
    dm = FolderFaces(str(tmp_path / "train"), val_path=str(tmp_path / "val"), image_size=8,
                     cache_dir=str(tmp_path / "c"))
    pairs = lambda ds: dict(zip(ds.labels["label"], ds.labels["label_idx"]))  # noqa: E731
    assert pairs(dm.train) == {"angry": 0, "disgust": 1, "fear": 2}
    assert pairs(dm.val) == {"angry": 0, "fear": 2}


@pytest.mark.parametrize("setting, says", [
    ({"val_fraction": 1.0}, "data.val_fraction=1.0"), ({"val_fraction": -0.1}, "data.val_fraction=-0.1"),
    ({"limit": -5}, "data.limit=-5"), ({"limit": 0}, "data.limit=0"), ({"image_size": 0}, "data.image_size=0"),
    ({"batch_size": 0}, "data.batch_size=0"),
])
def test_out_of_range_settings_are_refused_before_reading(setting, says, tmp_path):
    with pytest.raises(DataError, match=says.replace(".", r"\.")):
        FolderFaces(str(tmp_path / "nowhere"), **setting)


# -- what the cache key must notice, skipped files, names and orientation (mutation audit, tests-data) ---
def test_an_image_replaced_in_place_is_decoded_again(tmp_path):
    """Same name, new pixels (an edited or re-exported photo): the listing's sizes and mtimes change the key."""
    _save(tmp_path / "faces" / "a.png", np.full((8, 8), 10, dtype=np.uint8))
    _save(tmp_path / "faces" / "b.png", np.full((8, 8), 20, dtype=np.uint8))
    assert int(read_image_folder(tmp_path / "faces", image_size=8, cache_dir=tmp_path / "c").images[0].max()) == 10
    st = (tmp_path / "faces" / "a.png").stat()
    _save(tmp_path / "faces" / "a.png", np.full((8, 8), 200, dtype=np.uint8))
    os.utime(tmp_path / "faces" / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    assert int(read_image_folder(tmp_path / "faces", image_size=8, cache_dir=tmp_path / "c").images[0].max()) == 200


def test_a_new_reader_version_decodes_again(tmp_path, monkeypatch):
    """READER_VERSION is bumped when decoding changes: an old reader's cache must not be served."""
    import facegen.data.folder as folder

    _save(tmp_path / "faces" / "a.png", np.full((8, 8), 10, dtype=np.uint8))
    read_image_folder(tmp_path / "faces", image_size=8, cache_dir=tmp_path / "c")
    decodes = []
    real_decode = folder._decode_folder
    monkeypatch.setattr(folder, "_decode_folder", lambda *a, **k: decodes.append(1) or real_decode(*a, **k))
    monkeypatch.setattr(folder, "READER_VERSION", folder.READER_VERSION + 1)
    read_image_folder(tmp_path / "faces", image_size=8, cache_dir=tmp_path / "c")
    assert decodes == [1]


def test_skipped_images_leave_every_other_face_with_its_own_labels(tmp_path):
    """A bad file mid-folder (skip_bad=true) must not shift the faces after it onto their neighbours' labels."""
    for i in range(12):
        _save(tmp_path / "faces" / f"{i:02d}.png", np.full((8, 8), 10 * i + 5, dtype=np.uint8))
    (tmp_path / "faces" / "04b.png").write_bytes(b"not a png")
    with pytest.warns(SkippedImagesWarning, match=r"skipped 1 .*04b\.png"):
        ds = read_image_folder(tmp_path / "faces", image_size=8, cache_dir=tmp_path / "c", skip_bad=True)
    assert ds.labels["path"].tolist() == [f"{i:02d}.png" for i in range(12)]
    assert ds.images[:, 0, 0, 0].tolist() == [10 * i + 5 for i in range(12)]
    assert (ds.images == ds.images[:, :, :1, :1]).all()


def test_upper_case_extensions_are_images(tmp_path):
    """Cameras and Windows tools write .JPG and .PNG."""
    _save(tmp_path / "faces" / "a.JPG", np.full((8, 8), 50, dtype=np.uint8), quality=95)
    _save(tmp_path / "faces" / "b.PNG", np.full((8, 8), 90, dtype=np.uint8))
    _save(tmp_path / "faces" / "c.Jpeg", np.full((8, 8), 130, dtype=np.uint8), format="JPEG", quality=95)
    ds = read_image_folder(tmp_path / "faces", image_size=8, cache_dir=tmp_path / "c")
    assert ds.labels["path"].tolist() == ["a.JPG", "b.PNG", "c.Jpeg"]
    assert [round(v) for v in ds.images.float().mean(dim=(1, 2, 3)).tolist()] == [50, 90, 130]


@pytest.mark.parametrize("size", ["small", "large"])   # batch-decoded (<= 32 KB) and one-by-one JPEGs
def test_jpeg_exif_orientation_is_applied(size, tmp_path):
    """A phone photo stored sideways with EXIF orientation 6 is a face upright, as every viewer shows it."""
    from PIL import ImageOps

    upright_side = np.zeros((32, 32), dtype=np.uint8)
    upright_side[:, 16:] = 220                     # as stored: bright right half, a mid-gray top band
    upright_side[:8] = 120
    if size == "large":
        upright_side = np.kron(upright_side, np.ones((8, 8), dtype=np.uint8)).astype(float)
        upright_side = (upright_side + np.random.default_rng(0).normal(0, 20, upright_side.shape)).clip(0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6                               # rotate 90 degrees clockwise to display
    path = tmp_path / "faces" / "phone.jpg"
    _save(path, upright_side.astype(np.uint8), exif=exif, quality=98)
    assert (path.stat().st_size > 32 * 1024) == (size == "large")
    got = read_image_folder(tmp_path / "faces", image_size=32, cache_dir=tmp_path / "c").images[0, 0].float()
    with Image.open(path) as im:
        shown = ImageOps.exif_transpose(im).convert("L").resize((32, 32), Image.BILINEAR)
    assert (got - torch.from_numpy(np.array(shown)).float()).abs().mean() < 4
    assert got[:, -8:].mean() < 140 < got[-8:, :16].mean()   # the top band is now on the right
