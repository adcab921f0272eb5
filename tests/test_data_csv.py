"""The face CSV reader: the real sample, format variants, every malformed input, both engines, the cache."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from facegen.data import CSVFaces, DataError, read_age_gender_csv, read_faces_csv
from facegen.data.cache import CacheWarning
from facegen.data.csv_reader import numba_available, parse_faces_csv
from tests.conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "age_gender_sample.csv"

needs_sample = pytest.mark.skipif(not SAMPLE.is_file(), reason=f"{SAMPLE} is absent")
ENGINES = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(not numba_available(),
                                                                  reason="numba is not installed"))]
pytestmark = needs_sample


def sample_lines() -> tuple[str, list[str]]:
    """The sample's header and data lines, without BOM and line ends."""
    text = SAMPLE.read_bytes().decode("utf-8-sig")
    lines = text.split("\r\n")
    assert lines[-1] == ""
    return lines[0], lines[1:-1]


def write_csv(path: Path, header: str, rows: list[str], bom: bool = False, eol: str = "\n") -> Path:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + (eol.join([header, *rows]) + eol).encode())
    return path


def fields(row: str) -> list[str]:
    return row.split(",")


@pytest.fixture(scope="module")
def reference() -> tuple[torch.Tensor, pd.DataFrame]:
    ds, _ = parse_faces_csv(SAMPLE, engine="numpy")
    return ds.images, ds.labels


# -- the real sample ---------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ENGINES)
def test_sample_parses_to_149_faces_with_labels(engine, tmp_path):
    ds = read_age_gender_csv(SAMPLE, cache_dir=tmp_path, engine=engine)
    assert ds.images.shape == (149, 1, 48, 48) and ds.images.dtype == torch.uint8
    assert int(ds.images[0, 0, 0, 0]) == 129
    assert list(ds.labels.columns) == ["age", "ethnicity", "gender", "img_name"]
    assert ds.labels["age"].dtype == np.int64 and ds.labels["gender"].dtype == np.int64
    assert (ds.labels["age"] == 1).all() and (ds.labels["gender"] == 0).all()
    assert ds.labels["ethnicity"].iloc[0] == 2
    assert ds.labels["img_name"].iloc[0] == "20161219203650636.jpg.chip.jpg"
    # the first row's pixels, checked against the text itself
    first = sample_lines()[1][0]
    expected = np.array(first.split(",")[4].split(), dtype=np.uint8)
    assert np.array_equal(ds.images[0].flatten().numpy(), expected)


@pytest.mark.skipif(not numba_available(), reason="numba is not installed")
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_numba_and_numpy_engines_agree(reference, threads):
    ds, _ = parse_faces_csv(SAMPLE, engine="numba", threads=threads)
    assert torch.equal(ds.images, reference[0])
    pd.testing.assert_frame_equal(ds.labels, reference[1])


@pytest.mark.parametrize("engine", ENGINES)
def test_format_variants_give_identical_tensors(engine, reference, tmp_path):
    header, rows = sample_lines()
    cols = fields(header)
    variants = {
        "lf_no_bom": write_csv(tmp_path / "lf.csv", header, rows),
        "crlf_bom": write_csv(tmp_path / "crlf.csv", header, rows, bom=True, eol="\r\n"),
        "no_final_newline": tmp_path / "nofinal.csv",
        "blank_lines": write_csv(tmp_path / "blank.csv", header, rows[:70] + ["", "  "] + rows[70:] + [""]),
        "quoted": write_csv(tmp_path / "quoted.csv", header,
                            [",".join(f[:3] + [f'"{f[3]}"', f'"{f[4]}"']) for f in map(fields, rows)]),
        "double_spaces": write_csv(tmp_path / "spaces.csv", header,
                                   [",".join(f[:4] + [" " + f[4].replace(" ", "  \t") + " "])
                                    for f in map(fields, rows)]),
    }
    variants["no_final_newline"].write_bytes(("\n".join([header, *rows])).encode())
    for name, path in variants.items():
        ds, _ = parse_faces_csv(path, engine=engine)
        assert torch.equal(ds.images, reference[0]), name
        pd.testing.assert_frame_equal(ds.labels, reference[1], obj=name)
    # any column order: same faces, and read_age_gender_csv puts the labels in the usual order
    order = [4, 2, 0, 3, 1]
    shuffled = write_csv(tmp_path / "reordered.csv", ",".join(cols[i] for i in order),
                         [",".join(fields(r)[i] for i in order) for r in rows])
    ds = read_age_gender_csv(shuffled, cache_dir=tmp_path / "cache", engine=engine)
    assert torch.equal(ds.images, reference[0])
    pd.testing.assert_frame_equal(ds.labels, reference[1])


def test_other_csvs_keep_every_non_pixel_column(tmp_path):
    """fer2013.csv layout: emotion (int), pixels, Usage (text); labels keep the file's column order."""
    _, rows = sample_lines()
    px = [fields(r)[4] for r in rows[:6]]
    path = write_csv(tmp_path / "fer2013.csv", "emotion,pixels,Usage",
                     [f"{i % 7},{p},{'Training' if i < 4 else 'PublicTest'}" for i, p in enumerate(px)])
    ds = read_faces_csv(path, cache_dir=tmp_path / "cache")
    assert ds.images.shape == (6, 1, 48, 48)
    assert list(ds.labels.columns) == ["emotion", "Usage"]
    assert ds.labels["emotion"].dtype == np.int64 and ds.labels["emotion"].tolist() == [0, 1, 2, 3, 4, 5]
    assert ds.labels["Usage"].tolist() == ["Training"] * 4 + ["PublicTest"] * 2


# -- malformed input: the message names the file, the 1-based line and what to do ------------------
def _bad_row(kind: str, row: str) -> str:
    f = fields(row)
    px = f[4].split()
    if kind == "too_few":
        f[4] = " ".join(px[:2291])
    elif kind == "too_many":
        f[4] = " ".join(px + ["7", "8"])
    elif kind == "non_numeric":
        px[99] = "12a"
        f[4] = " ".join(px)
    elif kind == "negative":
        px[0] = "-3"
        f[4] = " ".join(px)
    elif kind == "out_of_range":
        px[2303] = "256"
        f[4] = " ".join(px)
    elif kind == "empty_pixels":
        f[4] = ""
    elif kind == "age_not_int":
        f[0] = "1.5"
    elif kind == "gender_text":
        f[2] = "female"
    elif kind == "extra_field":
        f.insert(4, "oops")
    elif kind == "missing_field":
        del f[3]
    return ",".join(f)


BAD_ROWS = {
    "too_few": "expected 2304 pixels, found 2291",
    "too_many": "expected 2304 pixels, found 2306",
    "non_numeric": "pixel 100 is '12a', not a number",
    "negative": "pixel 1 is '-3', not a number",
    "out_of_range": "pixel 2304 is 256, outside 0..255",
    "empty_pixels": "expected 2304 pixels, found 0",
    "age_not_int": "age is '1.5', not an integer",
    "gender_text": "gender is 'female', not an integer",
    "extra_field": "expected 5 comma-separated fields (age,ethnicity,gender,img_name,pixels), found 6",
    "missing_field": "expected 5 comma-separated fields (age,ethnicity,gender,img_name,pixels), found 4",
}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_a_bad_row_names_file_and_line(kind, engine, tmp_path):
    header, rows = sample_lines()
    rows = rows[:40]
    rows[20] = _bad_row(kind, rows[20])  # data row 21 -> line 22 (a blank line below shifts it to 23)
    rows.insert(3, "")
    path = write_csv(tmp_path / "age_gender.csv", header, rows, bom=True, eol="\r\n")
    with pytest.raises(DataError) as err:
        read_age_gender_csv(path, cache_dir=tmp_path / "cache", engine=engine)
    msg = str(err.value)
    assert msg.startswith(f"{path} line 23: {BAD_ROWS[kind]}"), msg
    assert "Fix or delete that line" in msg
    assert not list((tmp_path / "cache").glob("*.pt")), "a bad file must not be cached"


@pytest.mark.parametrize("engine", ENGINES)
def test_the_first_of_several_bad_rows_is_reported(engine, tmp_path):
    header, rows = sample_lines()
    rows = rows[:30]
    rows[25] = _bad_row("too_few", rows[25])
    rows[9] = _bad_row("age_not_int", rows[9])
    rows[4] = _bad_row("out_of_range", rows[4])
    path = write_csv(tmp_path / "x.csv", header, rows)
    with pytest.raises(DataError, match=r"x\.csv line 6: pixel 2304 is 256"):
        parse_faces_csv(path, engine=engine)


def _file_errors(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    header, rows = sample_lines()
    cols = fields(header)
    renamed = lambda old, new: ",".join(new if c == old else c for c in cols)  # noqa: E731
    return {
        "empty": (tmp_path / "empty.csv", r"empty\.csv is empty \(0 bytes\)"),
        "bom_only": (tmp_path / "bom.csv", r"bom\.csv is empty"),
        "header_only": (write_csv(tmp_path / "header.csv", header, [], eol="\r\n"),
                        r"header\.csv has a header but no data rows"),
        "misspelled": (write_csv(tmp_path / "gendr.csv", renamed("gender", "gendr"), rows[:3]),
                       r"gendr\.csv line 1 \(the header\): column 'gendr' looks like a misspelling of 'gender'"),
        "pixel": (write_csv(tmp_path / "pixel.csv", renamed("pixels", "pixel"), rows[:3]),
                  r"pixel\.csv line 1 \(the header\): no column 'pixels' .* Did you mean 'pixel'\?"),
        "no_header": (write_csv(tmp_path / "nohead.csv", rows[0], rows[1:3]),
                      r"nohead\.csv line 1 \(the header\) holds pixel values, not column names"),
        "duplicate": (write_csv(tmp_path / "dup.csv", renamed("img_name", "age"), rows[:3]),
                      r"dup\.csv line 1 \(the header\): column 'age' appears twice"),
    }


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", ["empty", "bom_only", "header_only", "misspelled", "pixel", "no_header",
                                  "duplicate"])
def test_file_level_errors(kind, engine, tmp_path):
    cases = _file_errors(tmp_path)
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf\r\n")
    path, pattern = cases[kind]
    with pytest.raises(DataError, match=pattern):
        read_age_gender_csv(path, cache_dir=tmp_path / "cache", engine=engine)


def test_missing_column_is_named_for_the_kaggle_reader(tmp_path):
    header, rows = sample_lines()
    keep = [0, 1, 3, 4]  # no gender
    path = write_csv(tmp_path / "nogender.csv", ",".join(fields(header)[i] for i in keep),
                     [",".join(fields(r)[i] for i in keep) for r in rows[:3]])
    with pytest.raises(DataError, match=r"nogender\.csv line 1 \(the header\): no column 'gender'"):
        read_age_gender_csv(path, cache_dir=tmp_path)
    assert len(read_faces_csv(path, cache_dir=tmp_path)) == 3  # a generic CSV needs only pixels


def test_missing_file_says_where_to_download(tmp_path):
    with pytest.raises(DataError) as err:
        read_age_gender_csv(tmp_path / "data" / "age_gender.csv", cache_dir=tmp_path)
    msg = str(err.value)
    assert "file not found" in msg and "age_gender.csv" in msg
    assert "nipunarora8/age-gender-and-ethnicity-face-data-csv" in msg and "data=synthetic" in msg


@pytest.mark.parametrize("source, says, not_says", [
    ("age_gender", "nipunarora8/age-gender-and-ethnicity-face-data-csv", "fer2013"),
    ("fer2013_csv", "facial-expression-recognition-challenge", "nipunarora8"),
])
def test_each_csv_source_says_where_its_own_file_comes_from(source, says, not_says, tmp_path):
    cfg = compose_config("train", [f"data={source}", f"data.path={tmp_path / 'missing.csv'}",
                                   f"paths.cache_dir={tmp_path}"])
    with pytest.raises(DataError) as err:
        instantiate(cfg.data).setup()
    assert "missing.csv: file not found" in str(err.value) and says in str(err.value)
    assert not_says not in str(err.value)
    with pytest.raises(DataError, match="a 'pixels' column"):   # a CSVFaces of no named source
        CSVFaces(str(tmp_path / "missing.csv"), cache_dir=str(tmp_path)).setup()


def test_a_path_under_home_is_expanded(tmp_path, monkeypatch):
    """data.path='~/faces.csv' (quoted, so Hydra passes it on) is the file in the user's home."""
    (tmp_path / "faces.csv").write_bytes(SAMPLE.read_bytes())
    monkeypatch.setenv("HOME", str(tmp_path))
    dm = CSVFaces("~/faces.csv", cache_dir=str(tmp_path / "cache")).setup()
    assert len(dm.train) + len(dm.val) == len(read_faces_csv(SAMPLE, cache_dir=tmp_path / "cache"))


def test_faces_of_another_size_are_refused_with_the_line(tmp_path):
    with pytest.raises(DataError, match=r"line 2: expected 4096 pixels, found 2304"):
        read_faces_csv(SAMPLE, cache_dir=tmp_path, image_size=64)
    read_faces_csv(SAMPLE, cache_dir=tmp_path)  # now cached at 48: asking for 64 must still fail
    with pytest.raises(DataError, match=r"line 2: expected 4096 pixels, found 2304"):
        read_faces_csv(SAMPLE, cache_dir=tmp_path, image_size=64)


# -- the cache -------------------------------------------------------------------------------
def test_cached_load_equals_cold_and_skips_the_parse(tmp_path, monkeypatch):
    cold = read_age_gender_csv(SAMPLE, cache_dir=tmp_path)
    files = list(tmp_path.glob("csv-age_gender_sample.csv-*.pt"))
    assert len(files) == 1
    import facegen.data.csv_reader as reader

    def no_parse(*a, **k):
        raise AssertionError("the cached load parsed the CSV again")

    monkeypatch.setattr(reader, "parse_faces_csv", no_parse)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cached = read_age_gender_csv(SAMPLE, cache_dir=tmp_path)
    assert torch.equal(cached.images, cold.images)
    pd.testing.assert_frame_equal(cached.labels, cold.labels)


def test_default_cache_dir_is_data_cache_under_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    header, rows = sample_lines()
    write_csv(tmp_path / "in.csv", header, rows[:5])
    ds = read_age_gender_csv("in.csv")  # relative to the working directory
    assert len(ds) == 5
    assert len(list((tmp_path / "data" / "cache").glob("csv-in.csv-*.pt"))) == 1


def test_a_changed_file_is_parsed_again(tmp_path):
    header, rows = sample_lines()
    path = write_csv(tmp_path / "a.csv", header, rows[:5])
    assert len(read_age_gender_csv(path, cache_dir=tmp_path / "c")) == 5
    write_csv(path, header, rows[:7])
    assert len(read_age_gender_csv(path, cache_dir=tmp_path / "c")) == 7
    assert len(list((tmp_path / "c").glob("*.pt"))) == 1, "the stale version is removed"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "zeroed_page", "meta"])
def test_a_corrupt_cache_is_rebuilt_with_a_warning(damage, tmp_path):
    cold = read_age_gender_csv(SAMPLE, cache_dir=tmp_path)
    (file,) = tmp_path.glob("*.pt")
    data = bytearray(file.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = bytearray(b"not a cache" * 10)
    elif damage == "zeroed_page":  # mid-file is image data, which torch does not CRC-check when mmapped
        mid = len(data) // 2
        data[mid:mid + 4096] = bytes(4096)
    else:
        at = data.index(b'"nbytes": ') + len(b'"nbytes": ')  # the meta JSON, inside the pickle
        data[at] = ord("9") if data[at] != ord("9") else ord("8")
    file.write_bytes(bytes(data))
    with pytest.warns(CacheWarning, match="corrupt or stale data cache"):
        again = read_age_gender_csv(SAMPLE, cache_dir=tmp_path)
    assert torch.equal(again.images, cold.images)
    pd.testing.assert_frame_equal(again.labels, cold.labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_age_gender_csv(SAMPLE, cache_dir=tmp_path)  # rebuilt: clean again


def test_an_unwritable_cache_dir_only_warns(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(CacheWarning, match="could not write the data cache"):
        ds = read_age_gender_csv(SAMPLE, cache_dir=blocker / "cache")
    assert len(ds) == 149


# -- the data module, from the real configs ----------------------------------------------------
def _instantiate(yaml: str, tmp_path: Path, **overrides):
    cfg = OmegaConf.create({"seed": 3, "paths": {"cache_dir": str(tmp_path / "cache")},
                            "data": OmegaConf.load(ROOT / "conf" / "data" / yaml)})
    for key, value in overrides.items():
        OmegaConf.update(cfg, f"data.{key}", value)
    return instantiate(cfg.data)


def test_csvfaces_from_the_age_gender_config(tmp_path):
    dm = _instantiate("age_gender.yaml", tmp_path, path=str(SAMPLE), val_fraction=0.1)
    assert isinstance(dm, CSVFaces)
    assert len(dm.train) + len(dm.val) == 149 and len(dm.val) == 15
    assert dm.train.images.shape[1:] == (1, 48, 48)
    assert dm.train.labels.columns.tolist()[:4] == ["age", "ethnicity", "gender", "img_name"]
    rgb = _instantiate("age_gender.yaml", tmp_path, path=str(SAMPLE), channels=3, image_size=64)
    x = rgb.train.images
    assert x.shape[1:] == (3, 64, 64) and x.dtype == torch.uint8
    assert torch.equal(x[:, 0], x[:, 2])


def test_fer2013_csv_config(tmp_path):
    _, rows = sample_lines()
    path = write_csv(tmp_path / "fer2013.csv", "emotion,pixels,Usage",
                     [f"{i % 7},{fields(r)[4]},Training" for i, r in enumerate(rows[:20])])
    dm = _instantiate("fer2013_csv.yaml", tmp_path, path=str(path))
    assert isinstance(dm, CSVFaces)
    assert len(dm.train) + len(dm.val) == 20
    assert "emotion" in dm.train.labels.columns


# -- through the real command line ---------------------------------------------------------------
needs_train = pytest.mark.skipif(not (ROOT / "facegen" / "train.py").is_file(),
                                 reason="facegen/train.py does not exist yet")


@needs_train
@pytest.mark.parametrize("kind", ["too_few", "missing"])
def test_cli_reports_bad_data_without_a_traceback(kind, tmp_path):
    header, rows = sample_lines()
    if kind == "missing":
        path, expected = tmp_path / "age_gender.csv", "data=synthetic needs no download"
    else:
        rows = rows[:20]
        rows[11] = _bad_row("too_few", rows[11])
        path = write_csv(tmp_path / "age_gender.csv", header, rows, bom=True, eol="\r\n")
        expected = f"{path} line 13: expected 2304 pixels, found 2291"
    cmd = [sys.executable, "-m", "facegen.train", "data=age_gender", f"data.path={path}", "trainer.epochs=1",
           "trainer.device=cpu", "logger=none", f"paths.cache_dir={tmp_path / 'cache'}",
           f"hydra.run.dir={tmp_path / 'run'}"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert expected in res.stderr, res.stderr
    assert "Traceback" not in res.stderr + res.stdout


# -- odd files (found by an audit of user data, 2026-12-01) -------------------------------------
@pytest.mark.parametrize("engine", ENGINES)
def test_classic_mac_line_endings_are_read(engine, reference, tmp_path):
    header, rows = sample_lines()
    ds, _ = parse_faces_csv(write_csv(tmp_path / "cr.csv", header, rows, eol="\r"), engine=engine)
    assert torch.equal(ds.images, reference[0])


@pytest.mark.parametrize("engine", ENGINES)
def test_faces_larger_than_the_csv_modules_field_limit(engine, tmp_path):
    """A 192x192 face's pixel text (~140k characters) is over the csv module's default limit."""
    faces = np.random.default_rng(0).integers(0, 256, (3, 192 * 192))
    rows = [f"{i},x{i}.jpg,{' '.join(map(str, f))}" for i, f in enumerate(faces)]
    assert len(rows[0]) > 131072
    ds, _ = parse_faces_csv(write_csv(tmp_path / "big.csv", "age,img_name,pixels", rows), image_size=None,
                            engine=engine)
    assert ds.images.shape == (3, 1, 192, 192)
    assert torch.equal(ds.images.view(3, -1).long(), torch.from_numpy(faces))


@pytest.mark.parametrize("engine", ENGINES)
def test_a_row_that_is_not_utf8_is_named(engine, tmp_path):
    header, rows = sample_lines()
    path = write_csv(tmp_path / "latin.csv", header, rows[:12])
    path.write_bytes(path.read_bytes().replace(rows[9].split(",")[3].encode(), b"caf\xe9.jpg"))
    with pytest.raises(DataError, match=r"latin\.csv line 11: not UTF-8 text \(byte 0xe9"):
        parse_faces_csv(path, engine=engine)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_quoted_newline_in_a_label_is_valid_csv_for_both_engines(engine, reference, tmp_path):
    header, rows = sample_lines()
    rows = list(rows)
    f = fields(rows[9])
    rows[9] = ",".join(f[:3] + [f'"two\nlines.jpg"'] + f[4:])
    ds, _ = parse_faces_csv(write_csv(tmp_path / "q.csv", header, rows), engine=engine)
    assert torch.equal(ds.images, reference[0])
    assert ds.labels["img_name"][9] == "two\nlines.jpg"


@pytest.mark.parametrize("content, says", [
    (b"PK\x03\x04rest", r"z\.csv is a zip archive, not a CSV: unzip it"),
    (b"\x1f\x8b\x08rest", r"z\.csv is gzip-compressed, not a CSV: gunzip it"),
    (b"\nage,pixels\n1,2 3\n", r"z\.csv line 1 is blank: the first line must name the columns"),
    (b"sep=,\nage,pixels\n1,2 3\n", r"z\.csv line 1 is Excel's 'sep=,' line"),
    (b"AGE,PIXELS\n1,2 3 4 5\n", r"no column 'pixels' .* Did you mean 'PIXELS'\?"),
])
def test_files_that_are_not_plain_csvs_get_the_right_advice(content, says, tmp_path):
    (tmp_path / "z.csv").write_bytes(content)
    with pytest.raises(DataError, match=says):
        parse_faces_csv(tmp_path / "z.csv", image_size=None)


# -- the cache: what its key must notice, and how it is written (mutation audit, tests-data) ------------
def test_an_edit_that_keeps_the_size_is_parsed_again(tmp_path):
    """One pixel fixed in place (129 -> 130): same size, newer mtime; the cache must not serve the old face."""
    header, rows = sample_lines()
    path = write_csv(tmp_path / "a.csv", header, rows[:5])
    assert int(read_age_gender_csv(path, cache_dir=tmp_path / "c").images[0, 0, 0, 0]) == 129
    size, st = path.stat().st_size, path.stat()
    f = fields(rows[0])
    assert f[4].startswith("129 ")
    write_csv(path, header, [",".join(f[:4] + ["130" + f[4][3:]])] + rows[1:5])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    assert path.stat().st_size == size
    assert int(read_age_gender_csv(path, cache_dir=tmp_path / "c").images[0, 0, 0, 0]) == 130


def test_a_new_parser_version_rebuilds_the_cache(tmp_path, monkeypatch):
    """PARSER_VERSION is bumped when the parser's output changes: caches of the old parser must be parsed again."""
    import facegen.data.csv_reader as reader

    header, rows = sample_lines()
    path = write_csv(tmp_path / "a.csv", header, rows[:3])
    read_age_gender_csv(path, cache_dir=tmp_path / "c")
    parses = []
    real_parse = reader.parse_faces_csv
    monkeypatch.setattr(reader, "parse_faces_csv", lambda *a, **k: parses.append(1) or real_parse(*a, **k))
    read_age_gender_csv(path, cache_dir=tmp_path / "c")
    assert parses == []
    monkeypatch.setattr(reader, "PARSER_VERSION", reader.PARSER_VERSION + 1)
    read_age_gender_csv(path, cache_dir=tmp_path / "c")
    assert parses == [1]
    assert len(list((tmp_path / "c").glob("*.pt"))) == 1, "the old parser's cache is removed"


def test_the_cache_file_is_never_visible_half_written(tmp_path, monkeypatch):
    """Another run reading the cache while this one writes it must find no file, not half of one."""
    import facegen.data.cache as cache

    cache_dir = tmp_path / "c"
    seen = []
    real_save = torch.save

    def save_and_look(obj, fh):
        real_save(obj, fh)
        fh.flush()
        seen.append(sorted(p.name for p in cache_dir.glob("*.pt")))   # what a reader would open now

    monkeypatch.setattr(cache.torch, "save", save_and_look)
    read_age_gender_csv(SAMPLE, cache_dir=cache_dir)
    assert seen == [[]], "the cache was written in place, under its final name"
    assert [p.suffix for p in cache_dir.iterdir()] == [".pt"]


def test_a_full_disk_while_caching_leaves_no_file_behind(tmp_path, monkeypatch):
    """ENOSPC mid-write: a warning, the data, and neither a half cache file nor a temp file left over."""
    import errno

    import facegen.data.cache as cache

    def half_then_full(obj, fh):
        fh.write(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(cache.torch, "save", half_then_full)
        with pytest.warns(CacheWarning, match="could not write the data cache"):
            ds = read_age_gender_csv(SAMPLE, cache_dir=tmp_path / "c")
    assert len(ds) == 149
    assert list((tmp_path / "c").iterdir()) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no "corrupt cache" warning on the next run
        assert len(read_age_gender_csv(SAMPLE, cache_dir=tmp_path / "c")) == 149


def test_the_cache_file_is_as_readable_as_any_new_file(tmp_path):
    """mkstemp creates 0600 files; a cache shared by a team (data.cache_dir on a shared disk) must not be."""
    old = os.umask(0o022)
    try:
        read_age_gender_csv(SAMPLE, cache_dir=tmp_path / "c")
    finally:
        os.umask(old)
    (file,) = (tmp_path / "c").glob("*.pt")
    assert file.stat().st_mode & 0o777 == 0o644


def test_a_smaller_image_size_is_antialiased(tmp_path):
    """Faces of 1-pixel stripes shrunk from 48 to 16 must average to gray, not alias into a moire pattern."""
    stripes = np.tile([0, 255], 24 * 48)
    path = write_csv(tmp_path / "stripes.csv", "age,pixels", [f"{i},{' '.join(map(str, stripes))}" for i in range(4)])
    dm = CSVFaces(str(path), image_size=16, val_fraction=0.0, cache_dir=str(tmp_path / "c"))
    x = dm.train.images.float()
    assert x.shape == (4, 1, 16, 16)
    assert abs(x.mean().item() - 127.5) < 2 and x.std().item() < 20
