"""Image folders (FER2013 class folders, UTKFace ``{age}_{gender}_{race}_*.jpg``, any photos), cached.

Files are listed recursively and sorted, decoded once with torchvision.io in a few threads
(JPEGs in batches, which is ~4x faster per image than one call each), center-cropped to a square,
resized with antialiasing and kept as one uint8 tensor; the disk cache makes later loads ~ms.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from facegen.data.base import DataError, FaceDataModule, FaceDataset
from facegen.data.cache import cache_path, cached_dataset, listing_digest

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
#: UTKFace file names: age_gender_race_date.jpg(.chip.jpg); race is called ethnicity in the Kaggle CSV.
UTKFACE_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)_")
#: Bumped when the decoding changes, so caches written by an older reader are rebuilt.
READER_VERSION = 2
_CHUNK = 256
#: JPEGs up to this size are decoded in one batched call (~4x faster per image than one by one).
_BATCH_DECODE_BYTES = 32 * 1024


class SkippedImagesWarning(UserWarning):
    """Some images could not be decoded and were left out (``data.skip_bad=true``)."""


def list_images(root: Path) -> list[tuple[str, int, int]]:
    """(path relative to root with '/', size, mtime_ns) of every image file under root, sorted.

    os.scandir and plain strings, not pathlib: for 28k files pathlib's parsing alone costs ~1 s.
    """
    found: list[tuple[str, int, int]] = []
    stack = [("", str(root))]
    seen: set[tuple[int, int]] = set()   # (device, inode) of every folder listed: a symlink loop ends here
    while stack:
        prefix, folder = stack.pop()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:
                log.warning("%s: already listed (a symbolic link back into the data folder); skipped", folder)
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)   # the same folder wins on every machine
        except OSError as e:
            raise DataError(f"{folder}: cannot list this folder ({e.strerror or e}); fix its permissions or "
                            "point data.path elsewhere.") from e
        for entry in entries:
            if entry.is_dir():
                stack.append((prefix + entry.name + "/", entry.path))
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file():
                st = entry.stat()
                found.append((prefix + entry.name, st.st_size, st.st_mtime_ns))
    found.sort()
    return found


def _decode_pil(data: torch.Tensor, channels: int) -> torch.Tensor:
    """BMP (and anything else torchvision.io cannot decode) through Pillow, torchvision's own dependency."""
    from PIL import Image

    with Image.open(io.BytesIO(data.numpy().tobytes())) as im:
        arr = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    return torch.from_numpy(arr.copy()).view(arr.shape[0], arr.shape[1], -1).permute(2, 0, 1).contiguous()


def _decode_one(data: torch.Tensor, mode: Any, channels: int) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image

    head = bytes(data[:12].tolist())
    if head[:2] == b"BM":
        return _decode_pil(data, channels)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        mode = ImageReadMode.RGB  # the WebP decoder has no gray mode: _fix_channels converts
    return decode_image(data, mode=mode, apply_exif_orientation=True)


def _fix_channels(img: torch.Tensor, channels: int) -> torch.Tensor:
    """What a decoder could not convert itself (WebP ignores GRAY mode, 16-bit PNGs stay 16-bit):
    8 bits per channel, drop alpha, gray <-> RGB."""
    if img.dtype != torch.uint8:
        from torchvision.transforms.v2 import functional as F

        img = F.to_dtype(img, torch.uint8, scale=True)
    if img.shape[0] == channels:
        return img
    if img.shape[0] in (2, 4):  # gray+alpha, RGBA
        img = img[:-1]
    if channels == 1 and img.shape[0] == 3:
        from torchvision.transforms.v2 import functional as F

        return F.rgb_to_grayscale(img)
    return img.expand(channels, -1, -1).contiguous() if img.shape[0] == 1 else img


def _to_square(img: torch.Tensor, image_size: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    if h != w:
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        img = img[..., top:top + s, left:left + s]
    if img.shape[-1] != image_size:
        from torchvision.transforms.v2 import functional as F

        img = F.resize(img, [image_size, image_size], antialias=True)
    return img


def _read_chunk(root: str, rels: list[str]) -> tuple[list[bytes], list[str | None]]:
    """The files' bytes (b"" and an error for unreadable ones).

    Plain open().read() in the calling thread: faster here than torchvision.io.read_file, and file
    reads do not speed up in threads, while decoding does; so one thread reads while others decode.
    """
    datas, errors = [], []
    for rel in rels:
        try:
            with open(os.path.join(root, rel), "rb") as fh:
                datas.append(fh.read())
            errors.append(None)
        except OSError as e:
            datas.append(b"")
            errors.append(f"cannot read it ({e.strerror or e})")
    return datas, errors


def _decode_chunk(datas: list[bytes], errors: list[str | None], image_size: int, channels: int
                  ) -> tuple[torch.Tensor, list[str | None], list[bytes]]:
    """Decode some files' bytes: (the good images stacked, error or None per file, sha256 per file)."""
    # torchvision is imported here, not at the top: importing it costs seconds (it loads its
    # models and ops), and a cached load, the common case, never decodes.
    from torchvision.io import ImageReadMode, decode_jpeg

    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    errors = list(errors)
    digests = [hashlib.sha256(d).digest() for d in datas]
    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) if d else torch.empty(0, dtype=torch.uint8)
               for d in datas]
    images: list[torch.Tensor | None] = [None] * len(datas)
    # Small JPEGs (face crops) are decoded as one batch; big photos one at a time and shrunk at
    # once, so a chunk never holds hundreds of full-size decoded photos.
    jpeg = [i for i, d in enumerate(datas)
            if errors[i] is None and d[:3] == b"\xff\xd8\xff" and len(d) <= _BATCH_DECODE_BYTES]
    try:
        batch = decode_jpeg([tensors[i] for i in jpeg], mode=mode, apply_exif_orientation=True) if jpeg else []
        for i, img in zip(jpeg, batch):
            images[i] = _to_square(_fix_channels(img, channels), image_size)
        done = set(jpeg)
    except RuntimeError:  # one bad JPEG fails the batch: decode them one by one to find it
        done = set()
    for i, data in enumerate(tensors):
        if i in done or errors[i] is not None:
            continue
        try:
            images[i] = _to_square(_fix_channels(_decode_one(data, mode, channels), channels), image_size)
        except Exception as e:  # noqa: BLE001 - whatever a decoder raises on a bad file, the file is named
            errors[i] = f"cannot decode it ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    good = [img for img in images if img is not None]
    stacked = torch.stack(good) if good else torch.empty((0, channels, image_size, image_size), dtype=torch.uint8)
    return stacked, errors, digests


def _printable(rel: str) -> str:
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def class_indices(labels: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """``labels`` with ``label_idx`` renumbered as positions in ``classes`` (sorted class names)."""
    labels = labels.copy()
    labels["label_idx"] = np.searchsorted(np.array(classes), labels["label"].to_numpy(dtype=str)).astype(np.int64)
    return labels


def _labels(rels: list[str], name: str) -> pd.DataFrame:
    """path always; label/label_idx from class subfolders; age/gender/ethnicity from UTKFace names."""
    # a file name that is not UTF-8 (kept as surrogate escapes to open the file) is shown as \\xNN
    labels = pd.DataFrame({"path": [_printable(r) for r in rels]})
    parts = [r.split("/") for r in rels]
    if rels and all(len(p) > 1 for p in parts):
        labels["label"] = [_printable(p[0]) for p in parts]
        labels = class_indices(labels, sorted(set(labels["label"])))
    matches = [UTKFACE_NAME.match(p[-1]) for p in parts]
    n_utk = sum(m is not None for m in matches)
    if n_utk:
        for k, col in enumerate(("age", "gender", "ethnicity"), start=1):
            labels[col] = np.array([int(m.group(k)) if m else -1 for m in matches], dtype=np.int64)
        if n_utk < len(rels):
            first = next(r for r, m in zip(rels, matches) if m is None)
            log.warning("%s: %d of %d file names are not {age}_{gender}_{race}_*.jpg (e.g. %s); "
                        "their age, gender and ethnicity are -1", name, len(rels) - n_utk, len(rels), first)
    return labels


def _bad_image_error(root: Path, rel: str, why: str, skip_key: str = "data.skip_bad") -> DataError:
    return DataError(f"{root / rel}: {why}. Delete or replace the file, or set {skip_key}=true "
                     "to leave unreadable images out.")


def _decode_folder(root: Path, entries: list[tuple[str, int, int]], image_size: int, channels: int,
                   skip_bad: bool, num_workers: int, skip_key: str = "data.skip_bad"
                   ) -> tuple[FaceDataset, dict[str, Any]]:
    rels = [e[0] for e in entries]
    out = torch.empty((len(rels), channels, image_size, image_size), dtype=torch.uint8)
    keep = np.ones(len(rels), dtype=bool)
    skipped: list[list[str]] = []
    content = hashlib.sha256()
    pending: deque = deque()
    workers = max(1, int(num_workers))
    pool = ThreadPoolExecutor(workers)

    def collect(base: int, future: Future) -> None:
        images, errors, digests = future.result()
        for i, (err, digest) in enumerate(zip(errors, digests)):
            content.update(rels[base + i].encode("utf-8", "surrogateescape") + b"\0" + digest)
            if err is None:
                continue
            if not skip_bad:
                raise _bad_image_error(root, rels[base + i], err, skip_key)
            keep[base + i] = False
            skipped.append([rels[base + i], err])
        idx = np.flatnonzero(keep[base:base + len(errors)]) + base
        out[torch.from_numpy(idx)] = images
        bar.update(len(errors))

    try:
        with tqdm(total=len(rels), desc=f"decoding {root.name}", unit="img", disable=None) as bar, \
                warnings.catch_warnings():
            # torchvision 0.29 deprecates its image codecs for TorchCodec (not a dependency here);
            # they still work, and one warning per image would drown everything else.
            warnings.filterwarnings("ignore", message=".*image decoding and encoding capabilities of TorchVision",
                                    category=DeprecationWarning)
            for base in range(0, len(rels), _CHUNK):
                datas, errors = _read_chunk(str(root), rels[base:base + _CHUNK])
                pending.append((base, pool.submit(_decode_chunk, datas, errors, image_size, channels)))
                while len(pending) > 2 * workers or (pending and pending[0][1].done()):
                    collect(*pending.popleft())
            while pending:
                collect(*pending.popleft())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if not keep.any():
        raise DataError(f"{root}: none of the {len(rels)} images could be decoded (first: {skipped[0][0]}: "
                        f"{skipped[0][1]}); check that the files are images.")
    labels = _labels(rels, str(root))
    if skipped:
        out, labels = out[torch.from_numpy(keep)], labels[keep].reset_index(drop=True)
    meta = {"content_hash": "sha256:" + content.hexdigest(), "skipped": skipped}
    return FaceDataset(out, labels, root.name), meta


def read_image_folder(path: str | os.PathLike, image_size: int = 48, channels: int = 1,
                      cache_dir: str | os.PathLike | None = None, skip_bad: bool = False,
                      num_workers: int = 2, skip_key: str = "data.skip_bad") -> FaceDataset:
    """All images under ``path`` as uint8 [N, channels, image_size, image_size] plus labels, cached.

    Unreadable files raise a DataError naming the file, or with ``skip_bad`` are left out with a
    SkippedImagesWarning giving their count (on every load, cached or not). ``skip_key``: the
    setting the error tells the user to set.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "not found"
        raise DataError(f"{root}: image folder {what} (looked for {root.resolve()}); set data.path to a "
                        "folder of face images (relative to the directory you run from).")
    if channels not in (1, 3):
        raise DataError(f"data.channels must be 1 or 3, got {channels}")
    entries = list_images(root)
    if not entries:
        raise DataError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder or its "
                        "subfolders; check data.path.")
    variant = {"image_size": int(image_size), "channels": int(channels)}
    key = {"reader": "folder", "version": READER_VERSION, "root": str(root.resolve()), "files": len(entries),
           "listing": listing_digest(entries), **variant}
    file = cache_path(cache_dir, "folder", root, key, variant)
    dataset, meta = cached_dataset(
        file, key, lambda: _decode_folder(root, entries, int(image_size), int(channels), skip_bad, num_workers,
                                          skip_key))
    skipped = meta["skipped"]
    if skipped:
        if not skip_bad:
            raise _bad_image_error(root, *skipped[0], skip_key)
        names = ", ".join(s[0] for s in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        warnings.warn(f"{root}: skipped {len(skipped)} unreadable image(s) of {len(entries)} "
                      f"({skip_key}=true): {names}", SkippedImagesWarning, stacklevel=2)
    dataset.name = root.name
    return dataset


class FolderFaces(FaceDataModule):
    """A folder of face images (``path``) and optionally a separate validation folder (``val_path``)."""

    def __init__(self, path: str, val_path: str | None = None, image_size: int = 48, channels: int = 1,
                 batch_size: int = 64, val_fraction: float = 0.05, limit: int | None = None,
                 hflip: bool = False, skip_bad: bool = False, num_workers: int = 2, seed: int = 0,
                 cache_dir: str | None = None) -> None:
        super().__init__(image_size, channels, batch_size, val_fraction, limit, hflip, seed, cache_dir,
                         name=Path(path).name)
        self.path = Path(path).expanduser()   # a quoted '~/faces' reaches us unexpanded
        self.val_path = None if val_path in (None, "") else Path(val_path).expanduser()
        self.skip_bad = bool(skip_bad)
        self.num_workers = int(num_workers)

    def _read(self, path: Path) -> FaceDataset:
        return read_image_folder(path, self.image_size, self.channels, self.cache_dir, self.skip_bad,
                                 self.num_workers)

    def load(self) -> FaceDataset:
        return self._read(self.path)

    def load_val(self) -> FaceDataset | None:
        return None if self.val_path is None else self._read(self.val_path)

    def align(self, train: FaceDataset, val: FaceDataset) -> tuple[FaceDataset, FaceDataset]:
        """Class folders numbered over both folders: a class missing from one keeps its index."""
        if "label" in train.labels.columns and "label" in val.labels.columns:
            classes = sorted(set(train.labels["label"]) | set(val.labels["label"]))
            train.labels = class_indices(train.labels, classes)
            val.labels = class_indices(val.labels, classes)
        return train, val
