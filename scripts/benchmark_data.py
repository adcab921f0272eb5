"""Benchmark of the data readers against the seed project's CSV parse; prints one JSON object.

    python scripts/benchmark_data.py [--quick] [--fer ../shared/data/fer2013]

Builds (once) a CSV in the Kaggle age/gender format from FER2013 faces in data/bench/ (23,705 rows,
~200 MB, like the real file), then times: the seed's pandas ``apply(split)`` parse, facegen's cold
parse with each engine, a cold read that also builds the cache, a cached load in a fresh process,
and the FER2013 folder read cold and cached. ``--quick`` uses 2,000 rows and the validation folder.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from facegen.data.csv_reader import numba_available, parse_faces_csv, read_age_gender_csv
from facegen.data.folder import read_image_folder

ROWS = 23_705
QUICK_ROWS = 2_000
DEFAULT_FER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fer2013"
BENCH_DIR = Path("data/bench")


def build_age_gender_csv(fer: Path, rows: int, out_dir: Path = BENCH_DIR) -> Path:
    """A CSV shaped like the Kaggle file (age,ethnicity,gender,img_name,pixels) from FER2013 faces.

    Reused when it already exists; labels are random but seeded, pixels are the real faces.
    """
    out = out_dir / f"age_gender_bench_{rows}.csv"
    if out.is_file():
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as cache:
        faces = read_image_folder(fer / "train", cache_dir=cache).images
    pixels = faces.reshape(len(faces), -1).numpy()
    rng = np.random.default_rng(0)
    idx = np.arange(rows) % len(pixels)
    ages, eth, gender = rng.integers(1, 117, rows), rng.integers(0, 5, rows), rng.integers(0, 2, rows)
    text = [str(v) for v in range(256)]  # a lookup table: ~3x faster than str() per pixel
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("age,ethnicity,gender,img_name,pixels\n")
        for r in range(rows):
            face = " ".join([text[v] for v in pixels[idx[r]].tolist()])
            fh.write(f"{ages[r]},{eth[r]},{gender[r]},{20170000000000000 + r}.jpg.chip.jpg,{face}\n")
    os.replace(tmp, out)
    return out


def _best(fn, repeat: int) -> tuple[float, list[float], float]:
    """Best wall time, all wall times, and the CPU time (all threads) of the best run.

    CPU time is reported too because on a shared machine wall time mostly measures the neighbours.
    """
    times, cpu = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    best = int(np.argmin(times))
    return times[best], [round(x, 4) for x in times], cpu[best]


def seed_parse(path: Path) -> pd.Series:
    """The seed project's parse: pandas read, then one Python split per row."""
    df = pd.read_csv(path)
    return df["pixels"].apply(lambda s: np.array(s.split(), dtype="float32"))


_FRESH = """
import json, sys, time
t0 = time.perf_counter()
from facegen.data import {fn}
t1 = time.perf_counter()
ds = {fn}(sys.argv[1], cache_dir=sys.argv[2])
t2 = time.perf_counter()
ds.images.sum()  # touch every byte of the memory-mapped images
t3 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "load_s": t2 - t1, "touch_s": t3 - t2, "n": len(ds)}}))
"""


def _fresh_process_load(fn: str, path: Path, cache_dir: str) -> dict:
    """Time a cached load in a new Python process (nothing warm but the OS file cache)."""
    res = subprocess.run([sys.executable, "-c", _FRESH.format(fn=fn), str(path), cache_dir],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def benchmark_data(quick: bool = False, fer: Path = DEFAULT_FER, repeat: int | None = None) -> dict:
    """Seconds and speed-ups of the CSV parse, the CSV cache and the folder reader."""
    repeat = repeat or (1 if quick else 3)
    rows = QUICK_ROWS if quick else ROWS
    path = build_age_gender_csv(fer, rows)
    # the machine may be shared: the load average says how much the timings can be trusted
    res: dict = {"rows": rows, "csv_mb": round(path.stat().st_size / 1e6, 1), "cpu_count": os.cpu_count(),
                 "numba": numba_available(), "load_avg_1m_at_start": round(os.getloadavg()[0], 2)}
    res["seed_parse_s"], res["seed_parse_runs"], res["seed_parse_cpu_s"] = _best(lambda: seed_parse(path), 1)
    df = pd.read_csv(path)
    res["seed_apply_split_only_s"], _, _ = _best(
        lambda: df["pixels"].apply(lambda s: np.array(s.split(), dtype="float32")), 1)
    del df
    engines = ["numpy"] + (["numba"] if res["numba"] else [])
    if res["numba"]:
        t = time.perf_counter()
        parse_faces_csv(path, engine="numba")  # first call: imports numba, loads or compiles the kernels
        res["numba_first_call_s"] = round(time.perf_counter() - t, 4)
    for engine in engines:
        res[f"parse_{engine}_s"], res[f"parse_{engine}_runs"], res[f"parse_{engine}_cpu_s"] = _best(
            lambda: parse_faces_csv(path, engine=engine), repeat)
        res[f"speedup_{engine}_vs_seed"] = round(res["seed_parse_s"] / res[f"parse_{engine}_s"], 2)
        res[f"cpu_ratio_{engine}_vs_seed"] = round(res["seed_parse_cpu_s"] / res[f"parse_{engine}_cpu_s"], 2)
    if res["numba"]:
        res["parse_numba_1thread_s"], _, res["parse_numba_1thread_cpu_s"] = _best(
            lambda: parse_faces_csv(path, engine="numba", threads=1), repeat)
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as cache:
        t = time.perf_counter()
        read_age_gender_csv(path, cache_dir=cache)
        res["csv_cold_read_with_cache_build_s"] = round(time.perf_counter() - t, 4)
        fresh = [_fresh_process_load("read_age_gender_csv", path, cache) for _ in range(repeat)]
        res["csv_cached_load_fresh_process_s"] = round(min(f["load_s"] for f in fresh), 4)
        res["csv_cached_load_runs"] = [round(f["load_s"], 4) for f in fresh]
        res["facegen_data_import_s"] = round(statistics.median(f["import_s"] for f in fresh), 3)
        res["speedup_cached_vs_seed"] = round(res["seed_parse_s"] / res["csv_cached_load_fresh_process_s"], 1)
    folder = fer / ("validation" if quick else "train")
    t = time.perf_counter()
    import torchvision.io  # noqa: F401 - the folder reader imports it on first decode; timed apart

    res["torchvision_import_s"] = round(time.perf_counter() - t, 3)
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as cache:
        t = time.perf_counter()
        n = len(read_image_folder(folder, cache_dir=cache))
        res["folder"] = str(folder)
        res["folder_images"] = n
        res["folder_cold_s"] = round(time.perf_counter() - t, 4)
        fresh = [_fresh_process_load("read_image_folder", folder, cache) for _ in range(repeat)]
        res["folder_cached_fresh_process_s"] = round(min(f["load_s"] for f in fresh), 4)
        res["speedup_folder_cached_vs_cold"] = round(res["folder_cold_s"] / res["folder_cached_fresh_process_s"], 1)
    res["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    for k, v in list(res.items()):
        if isinstance(v, float):
            res[k] = round(v, 4)
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 CSV rows and the validation folder")
    parser.add_argument("--fer", type=Path, default=DEFAULT_FER, help="the fer2013 folder (train/, validation/)")
    parser.add_argument("--repeat", type=int, default=None, help="runs per timing (the best is reported)")
    args = parser.parse_args()
    if not (args.fer / "train").is_dir():
        parser.error(f"--fer {args.fer}: no train/ folder there; give the fer2013 folder (train/, validation/)")
    print(json.dumps(benchmark_data(args.quick, args.fer, args.repeat), indent=2))


if __name__ == "__main__":
    main()
