"""Face CSVs (the Kaggle age/gender/ethnicity file, fer2013.csv): a strict, fast parse, then a cache.

A row is label columns plus one ``pixels`` field of space-separated integers 0..255 (row-major
faces). The pixel text is parsed without a per-row Python loop: a numba kernel over the raw bytes
(one thread per core, each on a slice of whole lines; numba is a core dependency), or, where numba
cannot be imported or ``engine="numpy"`` asks for it, pandas' C reader plus numpy
(``np.fromstring``) on blocks of rows. Both detect any bad row cheaply; the message for the first
bad line then comes from a plain-Python check of that line, so both engines report the same file,
1-based line number and remedy.
"""
from __future__ import annotations

import csv
import difflib
import io
import logging
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from facegen.data.base import DataError, FaceDataModule, FaceDataset
from facegen.data.cache import cache_path, cached_dataset, content_hash_bytes, file_key

log = logging.getLogger(__name__)

PIXELS = "pixels"
#: The columns of the Kaggle file, in the order :func:`read_age_gender_csv` returns them (+ pixels).
AGE_GENDER_COLUMNS = ("age", "ethnicity", "gender", "img_name")
#: Label columns that must hold integers wherever they appear (Kaggle and fer2013.csv names).
INTEGER_COLUMNS = ("age", "ethnicity", "gender", "emotion")
#: Names a header is checked against for misspellings ("gendr" -> "gender").
KNOWN_COLUMNS = AGE_GENDER_COLUMNS + ("emotion", PIXELS)
DOWNLOAD_HINT = ("Download the Kaggle CSV (dataset \"nipunarora8/age-gender-and-ethnicity-face-data-csv\") "
                 "into data/age_gender.csv, or point data.path at your CSV; data=synthetic needs no download.")
#: What a CSV source says about a missing or empty file when its config gives no download_hint.
GENERIC_HINT = ("Point data.path at a CSV with a 'pixels' column (space-separated gray values, one face a "
                "row); data=synthetic needs no download.")
#: Bumped when what the parser produces changes, so caches written by an older parser are rebuilt.
PARSER_VERSION = 1

# Row status codes set by the numba kernel: 0 a good row, 1 a blank line, 2 a bad row.
_BLANK, _BAD = 1, 2


def numba_available() -> bool:
    """Whether the numba engine can be used (a core dependency, but an environment may lack it)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


# -- header -----------------------------------------------------------------------------------
def _fields(line: str) -> list[str]:
    """One CSV line's fields. The csv module refuses fields over 131,072 characters by default, and
    a 192x192 face's pixel text is longer: the limit is raised to the line's length when needed."""
    if len(line) >= csv.field_size_limit():
        csv.field_size_limit(len(line) + 1)
    return next(csv.reader([line]), [])


def _split_header(line: str) -> list[str]:
    return [name.strip() for name in _fields(line)]


def _check_header(name: str, columns: list[str], required: Sequence[str]) -> None:
    """Missing, misspelled or duplicate columns -> DataError naming the column and the closest name."""
    where = f"{name} line 1 (the header)"
    if PIXELS not in columns and any(len(c.split()) >= 16 and c.replace(" ", "").isdigit() for c in columns):
        raise DataError(f"{where} holds pixel values, not column names: the first line must name the "
                        f"columns, e.g. {','.join(AGE_GENDER_COLUMNS + (PIXELS,))}. Add that header line.")
    dup = sorted({c for c in columns if columns.count(c) > 1})
    if dup:
        raise DataError(f"{where}: column {dup[0]!r} appears twice; rename or remove one of them.")
    for want in dict.fromkeys((PIXELS, *required)):
        if want not in columns:
            lower = {c.lower(): c for c in columns}   # "PIXELS" is close to "pixels" too
            close = [lower[c] for c in difflib.get_close_matches(want, list(lower), n=1, cutoff=0.5)]
            hint = f" Did you mean {close[0]!r}? Rename it to {want!r}." if close else f" Add a {want!r} column."
            raise DataError(f"{where}: no column {want!r} (found: {', '.join(columns)}).{hint}")
    for col in columns:
        if col in KNOWN_COLUMNS:
            continue
        close = difflib.get_close_matches(col.lower(), KNOWN_COLUMNS, n=1, cutoff=0.8)
        if close and close[0] not in columns:
            known = close[0]
            raise DataError(f"{where}: column {col!r} looks like a misspelling of {known!r}; rename it "
                            f"to {known!r} (found: {', '.join(columns)}).")


# -- the plain-Python check of one line: the source of every row-level message ----------------------
_NON_SPACE = re.compile(rb"[^ \t\r\n]")  # finds content without copying 200 MB as bytes.strip() would
_INT_RE = re.compile(r"\s*[+-]?[0-9]+\s*")
_DIGITS_RE = re.compile(r"[0-9]+")


def _line_problem(line: str, columns: list[str], npix: int) -> str | None:
    """What is wrong with one data line (None if nothing): fields, pixels, integer labels."""
    try:
        fields = _fields(line)
    except csv.Error as e:
        return f"not a valid CSV line ({e})"
    if len(fields) != len(columns):
        return (f"expected {len(columns)} comma-separated fields ({','.join(columns)}), found {len(fields)}; "
                "each row needs one value per column, with the pixels as one field")
    pixels = fields[columns.index(PIXELS)].strip(" \t")
    tokens = re.split(r"[ \t]+", pixels) if pixels else []
    for k, tok in enumerate(tokens, 1):
        if not _DIGITS_RE.fullmatch(tok):
            return f"pixel {k} is {tok[:20]!r}, not a number; pixels must be integers 0..255 separated by spaces"
        if int(tok) > 255:
            return f"pixel {k} is {int(tok)}, outside 0..255"
    if len(tokens) != npix:
        side = math.isqrt(npix)
        return (f"expected {npix} pixels, found {len(tokens)}; each row must hold one {side}x{side} face "
                f"({npix} space-separated integers 0..255)")
    for col, value in zip(columns, fields):
        if col in INTEGER_COLUMNS and not _INT_RE.fullmatch(value):
            return f"{col} is {value[:20]!r}, not an integer"
    return None


def _is_blank(line: str) -> bool:
    return line.strip(" \t\r") == ""


def _raise_for_line(name: str, line_no: int, line: str, columns: list[str], npix: int, n_bad: int) -> None:
    problem = _line_problem(line, columns, npix) or "this row could not be parsed"
    more = f" ({n_bad} bad rows in all; this is the first)" if n_bad > 1 else ""
    raise DataError(f"{name} line {line_no}: {problem}.{more} Fix or delete that line.")


def _locate_first_error(name: str, raw: bytes, columns: list[str], npix: int, why: str = "") -> None:
    """The slow pass: check every data line in Python and raise for the first bad one."""
    for i, line_bytes in enumerate(raw.split(b"\n")[1:], start=2):
        try:
            line = line_bytes.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            raise DataError(f"{name} line {i}: not UTF-8 text (byte 0x{line_bytes[e.start]:02x} at column "
                            f"{e.start + 1}); save the file as UTF-8 CSV, or fix or delete that line.") from e
        if not _is_blank(line) and _line_problem(line, columns, npix) is not None:
            _raise_for_line(name, i, line, columns, npix, 1)
    raise DataError(f"{name}: the file could not be parsed{f' ({why})' if why else ''}, but no single line "
                    "was found at fault; save it as a UTF-8, comma-separated file with a 'pixels' column.")


def _read_labels(csv_bytes: bytes, columns: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """Every column with pandas' type inference, and a mask of rows whose integer label is not one.

    pandas infers int64 only when every value of a column is an integer, so the common case costs
    nothing; otherwise the offending columns are read again as text and checked strictly.
    """
    def read(**kw: Any) -> pd.DataFrame:
        return pd.read_csv(io.BytesIO(csv_bytes), header=0, names=columns, low_memory=False,
                           encoding="utf-8-sig", **kw)

    df = read(dtype={PIXELS: str})
    bad = np.zeros(len(df), dtype=bool)
    non_int = [c for c in INTEGER_COLUMNS if c in df.columns and df[c].dtype.kind not in "iu"]
    if non_int:
        text = read(dtype=str, keep_default_na=False, usecols=non_int)
        for col in non_int:
            bad |= ~text[col].str.fullmatch(_INT_RE.pattern).to_numpy(dtype=bool)
    return df, bad


# -- the numba engine --------------------------------------------------------------------------
def _count_lines_py(buf, lo, hi):  # pragma: no cover - compiled by numba
    n = 0
    for p in range(lo, hi):
        if buf[p] == 10:
            n += 1
    if hi > lo and buf[hi - 1] != 10:
        n += 1
    return n


def _parse_lines_py(buf, lo, hi, pix_col, ncols, out, status, line_lo, line_hi, pix_lo, pix_hi):  # pragma: no cover
    """Parse the lines of buf[lo:hi] into out[r] (r = line index in the slice); flag bad rows."""
    npix = out.shape[1]
    r = 0
    p = lo
    while p < hi:
        e = p
        while e < hi and buf[e] != 10:
            e += 1
        nxt = e + 1
        if e > p and buf[e - 1] == 13:
            e -= 1
        line_lo[r] = p
        line_hi[r] = e
        blank = True
        for q in range(p, e):
            c = buf[q]
            if c != 32 and c != 9 and c != 13:
                blank = False
                break
        if blank:
            status[r] = 1
            r += 1
            p = nxt
            continue
        bad = False
        field = 0
        q = p
        while True:
            quoted = q < e and buf[q] == 34
            if field == pix_col:
                if quoted:
                    q += 1
                pix_lo[r] = q
                n = 0
                v = -1
                while q < e:
                    c = buf[q]
                    if 48 <= c <= 57:
                        if v < 0:
                            v = c - 48
                        elif v < 1000:
                            v = v * 10 + (c - 48)
                    elif c == 32 or c == 9:
                        if v >= 0:
                            if v > 255 or n >= npix:
                                bad = True
                            else:
                                out[r, n] = v
                            n += 1
                            v = -1
                    elif (c == 44 and not quoted) or (c == 34 and quoted):
                        break
                    else:
                        bad = True
                        break
                    q += 1
                if v >= 0:
                    if v > 255 or n >= npix:
                        bad = True
                    else:
                        out[r, n] = v
                    n += 1
                pix_hi[r] = q
                if n != npix:
                    bad = True
                if quoted:
                    if q < e and buf[q] == 34:
                        q += 1
                    else:
                        bad = True
                while q < e and buf[q] != 44:
                    if buf[q] != 32 and buf[q] != 9:
                        bad = True
                    q += 1
            else:
                if quoted:
                    q += 1
                    while q < e:
                        if buf[q] == 34:
                            if q + 1 < e and buf[q + 1] == 34:
                                q += 2
                                continue
                            break
                        q += 1
                    if q >= e:
                        bad = True
                while q < e and buf[q] != 44:
                    q += 1
            if q < e:
                field += 1
                q += 1
            else:
                break
        if field + 1 != ncols:
            bad = True
        status[r] = 2 if bad else 0
        r += 1
        p = nxt
    return r


def _strip_pixels_py(buf, line_lo, line_hi, pix_lo, pix_hi, rows, dst):  # pragma: no cover
    """Copy the given lines without their pixel text (labels only, '\\n'-terminated) into dst."""
    k = 0
    for i in range(rows.shape[0]):
        r = rows[i]
        for q in range(line_lo[r], pix_lo[r]):
            dst[k] = buf[q]
            k += 1
        for q in range(pix_hi[r], line_hi[r]):
            dst[k] = buf[q]
            k += 1
        dst[k] = 10
        k += 1
    return k


@lru_cache(maxsize=1)
def _numba_kernels():
    """Compile the kernels on first use (cached on disk by numba), so importing stays cheap."""
    import numba

    jit = numba.njit(nogil=True, cache=True, boundscheck=False)
    return jit(_count_lines_py), jit(_parse_lines_py), jit(_strip_pixels_py)


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _split_points(raw: bytes, lo: int, parts: int) -> list[int]:
    """Cut raw[lo:] into about equal slices that each start at a line start."""
    n = len(raw)
    cuts = [lo]
    for k in range(1, parts):
        nl = raw.find(b"\n", max(lo + (n - lo) * k // parts, cuts[-1]))
        if 0 <= nl < n - 1:
            cuts.append(nl + 1)
    cuts.append(n)
    return sorted(set(cuts))


def _parse_numba(name: str, raw: bytes, body: int, columns: list[str], npix: int,
                 threads: int) -> tuple[np.ndarray, pd.DataFrame]:
    count_lines, parse_lines, strip_pixels = _numba_kernels()
    buf = np.frombuffer(raw, dtype=np.uint8)
    cuts = _split_points(raw, body, threads)
    slices = list(zip(cuts[:-1], cuts[1:]))
    with ThreadPoolExecutor(len(slices)) as pool:
        counts = list(pool.map(lambda s: count_lines(buf, s[0], s[1]), slices))
        total = sum(counts)
        out = np.empty((total, npix), dtype=np.uint8)
        status = np.empty(total, dtype=np.int8)
        line_lo, line_hi, pix_lo, pix_hi = (np.zeros(total, dtype=np.int64) for _ in range(4))
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(int)
        pix_col = columns.index(PIXELS)

        def run(k: int) -> int:
            a, b = offsets[k], offsets[k + 1]
            return parse_lines(buf, slices[k][0], slices[k][1], pix_col, len(columns), out[a:b], status[a:b],
                               line_lo[a:b], line_hi[a:b], pix_lo[a:b], pix_hi[a:b])

        done = list(pool.map(run, range(len(slices))))
    assert done == counts, (done, counts)
    rows = np.flatnonzero(status != _BLANK)
    line_no = rows + 2  # line 1 is the header
    if len(rows) == 0:
        raise DataError(f"{name} has a header but no data rows. Check that the download or export "
                        "finished (the Kaggle file has 23,705 rows).")
    bad = np.flatnonzero(status[rows] == _BAD)
    label_bytes = np.empty(int((line_hi - line_lo)[rows].sum()) + len(rows), dtype=np.uint8)
    k = strip_pixels(buf, line_lo, line_hi, pix_lo, pix_hi, rows, label_bytes)
    header = io.StringIO()
    csv.writer(header, lineterminator="\n").writerow(columns)
    try:
        labels, int_bad = _read_labels(header.getvalue().encode() + label_bytes[:k].tobytes(), columns)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        # Rows this broken are rare: let the slow pass find the first bad line in the whole file.
        _locate_first_error(name, raw, columns, npix, f"{type(e).__name__}: {e}")
    labels = labels.drop(columns=[PIXELS])
    int_bad = np.flatnonzero(int_bad)
    if len(bad) or len(int_bad):
        first = min(bad[:1].tolist() + int_bad[:1].tolist())
        r = rows[first]
        line = buf[line_lo[r]:line_hi[r]].tobytes().decode("utf-8", "replace")
        n_bad = len(np.union1d(bad, int_bad))
        _raise_for_line(name, int(line_no[first]), line, columns, npix, n_bad)
    images = out if len(rows) == total else out[rows]
    return images, labels


# -- the numpy/pandas engine ---------------------------------------------------------------------
_WS_RUN = re.compile(rb"[ \t]+")
_WS_AROUND_NEWLINE = re.compile(rb" ?\n ?")


def _pixels_numpy(texts: list[str], npix: int) -> np.ndarray | None:
    """Parse a block of pixel strings; None if any row is malformed (the caller then locates it).

    Checks before trusting np.fromstring (numpy's C number scanner, which would accept "+5" or
    "-3"): only digits and blanks, exactly npix-1 single-space separators per row, values <= 255.
    """
    blob = ("\n".join(texts) + "\n").encode("utf-8")
    if blob.translate(None, b"0123456789 \t\n"):
        return None  # a character that cannot be part of a pixel list
    if b"\t" in blob or b"  " in blob or b" \n" in blob or b"\n " in blob or blob.startswith(b" "):
        blob = _WS_AROUND_NEWLINE.sub(b"\n", _WS_RUN.sub(b" ", blob)).lstrip(b" ")
    rows = blob.split(b"\n")[:-1]
    if len(rows) != len(texts) or any(r.count(b" ") != npix - 1 or not r for r in rows):
        return None  # a row with another number of pixels (or none)
    values = np.fromstring(blob, dtype=np.int64, sep=" ")  # int64: larger numbers saturate, never wrap
    if len(values) != len(texts) * npix or values.max(initial=0) > 255:
        return None
    return values.astype(np.uint8).reshape(len(texts), npix)


def _parse_numpy(name: str, raw: bytes, columns: list[str], npix: int) -> tuple[np.ndarray, pd.DataFrame]:
    try:
        df, int_bad = _read_labels(raw, columns)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        _locate_first_error(name, raw, columns, npix, f"{type(e).__name__}: {e}")
    if len(df) == 0:
        raise DataError(f"{name} has a header but no data rows. Check that the download or export "
                        "finished (the Kaggle file has 23,705 rows).")
    pixels = df.pop(PIXELS)
    if pixels.isna().any() or int_bad.any():
        _locate_first_error(name, raw, columns, npix)
    texts = pixels.tolist()
    out = np.empty((len(texts), npix), dtype=np.uint8)
    block = 2048
    for i in range(0, len(texts), block):
        part = _pixels_numpy(texts[i:i + block], npix)
        if part is None:
            _locate_first_error(name, raw, columns, npix)
        out[i:i + block] = part
    return out, df


# -- the public readers ----------------------------------------------------------------------
def parse_faces_csv(path: str | os.PathLike, image_size: int | None = 48, engine: str = "auto",
                    threads: int | None = None, hint: str = DOWNLOAD_HINT) -> tuple[FaceDataset, dict[str, Any]]:
    """Parse a face CSV without the cache: (faces [N,1,S,S] uint8 + labels, meta for the cache).

    ``image_size=None`` takes the side from the first row (its pixel count must be a square).
    ``engine``: "numba", "numpy" or "auto" (numba when installed). ``hint``: where to get the
    file, said when it is missing or empty.
    """
    path = Path(path).expanduser()
    name = str(path)
    if engine not in ("auto", "numba", "numpy"):
        raise ValueError(f"engine must be 'auto', 'numba' or 'numpy', got {engine!r}")
    if engine == "auto":
        engine = "numba" if numba_available() else "numpy"
    if not path.is_file():
        raise DataError(f"{name}: file not found (looked for {path.resolve()}). {hint}")
    raw = path.read_bytes()
    for magic, what, do in ((b"PK\x03\x04", "a zip archive", "unzip it"), (b"\x1f\x8b", "gzip-compressed", "gunzip it")):
        if raw.startswith(magic):
            raise DataError(f"{name} is {what}, not a CSV: {do} and point data.path at the .csv inside.")
    body = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    if _NON_SPACE.search(raw, body) is None:
        raise DataError(f"{name} is empty ({len(raw)} bytes). Download it again. {hint}")
    if b"\r" in raw and b"\n" not in raw:
        raw = raw.replace(b"\r", b"\n")   # classic Mac line endings (CR alone): one line each, as before
    nl = raw.find(b"\n", body)
    header_end = len(raw) if nl < 0 else nl + 1
    try:
        header_text = raw[body:header_end].decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise DataError(f"{name} line 1 (the header) is not UTF-8 text ({e}); save the file as UTF-8 CSV.") from e
    if _is_blank(header_text) or header_text.lower().startswith("sep="):
        what = "is blank" if _is_blank(header_text) else f"is Excel's {header_text.strip()!r} line"
        raise DataError(f"{name} line 1 {what}: the first line must name the columns, e.g. "
                        f"{','.join(AGE_GENDER_COLUMNS + (PIXELS,))}. Delete that line.")
    columns = _split_header(header_text)
    _check_header(name, columns, ())
    if _NON_SPACE.search(raw, header_end) is None:
        raise DataError(f"{name} has a header but no data rows. Check that the download or export "
                        "finished (the Kaggle file has 23,705 rows).")
    if image_size is None:
        npix = _first_row_pixels(name, raw, header_end, columns)
    else:
        npix = int(image_size) ** 2
    side = math.isqrt(npix)
    with ThreadPoolExecutor(1) as pool:  # hash while parsing: hashlib releases the GIL
        content_hash = pool.submit(content_hash_bytes, raw)
        if engine == "numba":
            try:
                images, labels = _parse_numba(name, raw, header_end, columns, npix, threads or _cpu_count())
            except DataError:
                if b'"' not in raw:
                    raise
                # the kernel cuts lines at every newline, quoted or not; pandas reads a quoted newline
                # inside a field as CSV allows, so a quoted file gets the same verdict from both engines
                images, labels = _parse_numpy(name, raw, columns, npix)
        else:
            images, labels = _parse_numpy(name, raw, columns, npix)
    faces = torch.from_numpy(images).view(-1, 1, side, side)
    meta = {"content_hash": content_hash.result(), "columns": columns, "side": side}
    return FaceDataset(faces, labels.reset_index(drop=True), path.stem), meta


def _first_row_pixels(name: str, raw: bytes, start: int, columns: list[str]) -> int:
    """Pixel count of the first data row, which must be a square number (the face side squared)."""
    line_no = 2
    while start < len(raw):
        end = raw.find(b"\n", start)
        end = len(raw) if end < 0 else end
        line = raw[start:end].decode("utf-8", "replace").rstrip("\r")
        if not _is_blank(line):
            try:
                fields = _fields(line)
            except csv.Error:
                fields = []
            n = len(fields[columns.index(PIXELS)].split()) if len(fields) == len(columns) else 0
            if n == 0 or math.isqrt(n) ** 2 != n:
                raise DataError(f"{name} line {line_no}: {n} pixels is not a square face (48x48 = 2304); "
                                "fix that line or delete it.")
            return n
        start, line_no = end + 1, line_no + 1
    raise DataError(f"{name} has a header but no data rows.")


def read_faces_csv(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                   image_size: int | None = 48, required: Sequence[str] = (PIXELS,),
                   engine: str = "auto", hint: str = DOWNLOAD_HINT) -> FaceDataset:
    """Faces [N,1,S,S] uint8 and every non-pixel column as labels, via the disk cache.

    ``path`` and ``cache_dir`` (default ``data/cache``) are relative to the working directory.
    ``required`` lists columns that must be present; ``image_size=None`` infers the side; ``hint``
    says where to get a missing file.
    """
    path = Path(path).expanduser()
    name = str(path)
    if not path.is_file():
        raise DataError(f"{name}: file not found (looked for {path.resolve()}). {hint}")
    key = {"reader": "faces_csv", "parser": PARSER_VERSION, **file_key(path)}
    file = cache_path(cache_dir, "csv", path, key)
    dataset, meta = cached_dataset(file, key, lambda: parse_faces_csv(path, image_size, engine, hint=hint))
    if image_size is not None and meta["side"] != int(image_size):
        # The cache holds faces of another size: parse again, which reports the exact line.
        dataset, meta = parse_faces_csv(path, image_size, engine, hint=hint)
    _check_header(name, meta["columns"], required)
    dataset.name = path.stem
    return dataset


def read_age_gender_csv(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                        engine: str = "auto") -> FaceDataset:
    """The Kaggle age/gender/ethnicity CSV: 48x48 faces, labels age, ethnicity, gender, img_name."""
    ds = read_faces_csv(path, cache_dir, 48, required=AGE_GENDER_COLUMNS + (PIXELS,), engine=engine)
    ds.labels = ds.labels[list(AGE_GENDER_COLUMNS)]
    return ds


def to_size(images: torch.Tensor, image_size: int, channels: int) -> torch.Tensor:
    """Resize (antialiased) and repeat gray to 3 channels when the config asks for it."""
    if images.shape[-1] != image_size:
        from torchvision.transforms.v2 import functional as F

        images = F.resize(images, [image_size, image_size], antialias=True)
    if channels == 3 and images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    elif channels not in (1, 3) or images.shape[1] != channels:
        raise DataError(f"data.channels must be 1 or 3, got {channels}")
    return images


class CSVFaces(FaceDataModule):
    """Faces from a CSV with a ``pixels`` column (Kaggle age/gender file, fer2013.csv), cached."""

    def __init__(self, path: str, image_size: int = 48, channels: int = 1, batch_size: int = 64,
                 val_fraction: float = 0.05, limit: int | None = None, hflip: bool = False, seed: int = 0,
                 cache_dir: str | None = None, download_hint: str | None = None) -> None:
        super().__init__(image_size, channels, batch_size, val_fraction, limit, hflip, seed, cache_dir,
                         name=Path(path).stem)
        self.path = Path(path).expanduser()   # a quoted '~/faces.csv' reaches us unexpanded
        self.download_hint = download_hint or GENERIC_HINT

    def load(self) -> FaceDataset:
        ds = read_faces_csv(self.path, self.cache_dir, image_size=None, hint=self.download_hint)
        if set(AGE_GENDER_COLUMNS) <= set(ds.labels.columns):
            ds.labels = ds.labels[list(AGE_GENDER_COLUMNS) + [c for c in ds.labels.columns
                                                              if c not in AGE_GENDER_COLUMNS]]
        return FaceDataset(to_size(ds.images, self.image_size, self.channels), ds.labels, ds.name)
