"""facegen.evaluate and facegen.train_features on a tiny trained checkpoint and on the seed's
VAE_epoch_100.pth: the numbers in metrics.json recomputed by hand, nearest.png, baseline=, errors."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

import facegen.explore as ex
from facegen.checkpoint import CheckpointError
from facegen.cli import run_or_explain
from facegen.data import draw_faces
from facegen.data.base import DataError, FaceDataset
from facegen.evaluate import nearest_picture, run_evaluate
from facegen.metrics import (
    default_feature_net,
    extract_features,
    frechet_distance,
    load_feature_net,
    nearest_neighbours,
    save_feature_net,
    train_feature_net,
)
from facegen.train_features import run_train_features
from tests.conftest import ROOT, SEED_CKPT, compose_config, tiny_overrides

needs_seed = pytest.mark.skipif(not SEED_CKPT.is_file(), reason=f"{SEED_CKPT} is absent")
KEYS = ["fd_facenet", "kid_facenet", "kid_facenet_std", "precision", "recall", "density", "coverage",
        "fd_eigenfaces", "sharpness_ratio", "texture_outliers", "spectral_distance", "recon_mse", "recon_psnr", "recon_ssim", "recon_feature_distance",
        "feature_net_hash", "num_samples", "num_real"]
TINY_VAL = 24  # the tiny run's 96 faces with val_fraction 0.25
# The seed names no data: a few synthetic faces for it (30 of them held out).
SEED_DATA = ["data=synthetic", "data.num_images=120", "data.val_fraction=0.25"]


@pytest.fixture(scope="session")
def tiny_ema_ckpt(tmp_path_factory) -> Path:
    """A tiny dcgan VAE-GAN, 2 epochs on 96 synthetic faces, with a decoder EMA far from its raw decoder."""
    from facegen.trainer import train

    run = tmp_path_factory.mktemp("tiny_eval") / "run"
    before = torch.get_num_threads()
    train(compose_config("train", tiny_overrides("trainer.epochs=2", "trainer.checkpoint_every=1000",
                                                 "trainer.num_threads=1", "trainer.ema_decay=0.5"), output_dir=run))
    torch.set_num_threads(before)
    return run / "checkpoints" / "last.pt"


@pytest.fixture(scope="session")
def tiny_net(tmp_path_factory) -> Path:
    """A small feature net (40 steps on other synthetic faces), so no test trains the 3-minute default."""
    images, labels = draw_faces(160, 48, seed=5, channels=1)
    net = train_feature_net(images, labels, steps=40, batch_size=32, seed=0, widths=(8, 16, 32, 32), embed_dim=32)
    return save_feature_net(net, tmp_path_factory.mktemp("facenet") / "facenet.pt")


def eval_cfg(checkpoint: Path, out: Path, net: Path, *overrides: str):
    """conf/evaluate.yaml as `python -m facegen.evaluate checkpoint=... out=...` would see it."""
    return compose_config("evaluate", [f"checkpoint={checkpoint}", f"out={out}", "device=cpu",
                                       f"metrics.feature_net={net}", "kid_subsets=20", *overrides],
                          output_dir=out / "hydra")


def grid_size(rows: int, cols: int, side: int = 48, pad: int = 2) -> tuple[int, int]:
    return cols * (side + pad) + pad, rows * (side + pad) + pad


def check_ranges(m: dict) -> None:
    assert list(m) == KEYS
    for key in ("precision", "recall", "coverage"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["density"] >= 0 and m["fd_facenet"] >= 0 and m["kid_facenet_std"] >= 0 and m["fd_eigenfaces"] > 0
    assert 0 < m["sharpness_ratio"] < 10 and m["spectral_distance"] > 0
    assert 0 < m["recon_mse"] < 1 and m["recon_psnr"] > 0 and -1 <= m["recon_ssim"] <= 1
    assert m["recon_feature_distance"] > 0


# -- the tiny checkpoint -------------------------------------------------------------------------------
def test_evaluate_tiny_checkpoint_matches_a_computation_by_hand(tiny_ema_ckpt, tiny_net, tmp_path, capsys):
    out = tmp_path / "out"
    cfg = eval_cfg(tiny_ema_ckpt, out, tiny_net, "num_samples=40", "seed=3")
    paths = run_evaluate(cfg)
    assert paths == [out / "metrics.json", out / "nearest.png"]
    m = json.loads(paths[0].read_text())
    check_ranges(m)
    # 40 samples; real = the whole validation split of the checkpoint's own data (24 < num_samples)
    assert (m["num_samples"], m["num_real"]) == (40, TINY_VAL)
    stored = torch.load(tiny_net, weights_only=True)["hash"]
    assert m["feature_net_hash"] == stored == load_feature_net(tiny_net).hash

    # by hand: samples of seed 3 from the EMA decoder, the checkpoint's validation faces, Dec(mu) of them
    loaded = ex.load(tiny_ema_ckpt, "cpu")
    val = ex.data_module(cfg, loaded).val
    net = load_feature_net(tiny_net)
    real_f = extract_features(net, val.images)
    fake = ex.sample(loaded.model, 40, 1.0, seed=3)[0]
    assert m["fd_facenet"] == pytest.approx(frechet_distance(extract_features(net, fake), real_f), rel=1e-6)
    raw = ex.Loaded(ex.model_from_checkpoint(loaded.checkpoint, use_ema=False).eval(), loaded.checkpoint,
                    loaded.path, loaded.device)
    fd_raw = frechet_distance(extract_features(net, ex.sample(raw.model, 40, 1.0, seed=3)[0]), real_f)
    assert abs(fd_raw - m["fd_facenet"]) > 1e-3 * m["fd_facenet"]  # the raw decoder was not the one used
    x = val.images.float() / 255
    recon = loaded.model.to_unit(loaded.model.reconstruct(loaded.model.from_uint8(val.images))).detach()
    per_image = (recon - x).square().flatten(1).mean(1).double()
    assert m["recon_mse"] == pytest.approx(float(per_image.mean()), rel=1e-4)
    assert m["recon_psnr"] == pytest.approx(float((-10 * torch.log10(per_image)).mean()), rel=1e-4)
    assert m["recon_psnr"] >= -10 * math.log10(m["recon_mse"]) - 1e-9  # mean of logs >= log of mean

    assert Image.open(paths[1]).size == grid_size(8, 6)  # 8 samples, each + its 5 nearest
    printed = capsys.readouterr().out
    assert "fd_facenet" in printed and f"{m['fd_facenet']:.4g}" in printed and "evaluated in" in printed
    assert "copy check" in printed and "baseline" not in printed
    assert f"note: {TINY_VAL} real faces" in printed and f"num_samples={TINY_VAL}" in printed


def test_num_real_num_recon_and_real_train(tiny_ema_ckpt, tiny_net, tmp_path):
    m = json.loads(run_evaluate(eval_cfg(tiny_ema_ckpt, tmp_path / "a", tiny_net, "num_samples=30",
                                         "real=train", "num_real=50", "num_recon=7", "nearest_rows=3", "k=3"))[0]
                   .read_text())
    assert (m["num_samples"], m["num_real"]) == (30, 50)  # 50 of the 72 training faces
    m_all = json.loads(run_evaluate(eval_cfg(tiny_ema_ckpt, tmp_path / "b", tiny_net, "num_samples=100",
                                             "real=train"))[0].read_text())
    assert m_all["num_real"] == 96 - TINY_VAL
    assert Image.open(tmp_path / "a" / "nearest.png").size == grid_size(3, 4)


def test_a_copying_model_shows_in_nearest(tmp_path):
    """nearest_neighbours is brute force's answer, and a sample that is a training face sits beside itself."""
    g = torch.Generator().manual_seed(0)
    ref, query = torch.randn(300, 16, generator=g), torch.randn(20, 16, generator=g)
    d, idx = nearest_neighbours(query, ref, 4)
    brute = torch.cdist(query.double(), ref.double())
    assert torch.equal(idx, brute.argsort(dim=1)[:, :4])
    torch.testing.assert_close(d, brute.sort(dim=1).values[:, :4])

    images, _ = draw_faces(40, 48, seed=1, channels=1)
    train = FaceDataset(images)
    feats = torch.randn(40, 8, generator=g)
    copies = [5, 17, 30]
    fake = images[copies].float() / 255
    path = nearest_picture(fake, feats[copies], train, feats, rows=3, k=2, path=tmp_path / "n.png")
    grid = np.asarray(Image.open(path).convert("L")).astype(int)
    tile = lambda r, c: grid[2 + r * 50: 50 + r * 50, 2 + c * 50: 50 + c * 50]  # noqa: E731
    for r, i in enumerate(copies):
        assert np.array_equal(tile(r, 0), tile(r, 1)) and np.array_equal(tile(r, 1), images[i, 0].numpy())
        assert not np.array_equal(tile(r, 1), tile(r, 2))


def test_copy_check_ratio_is_samples_over_held_out_faces():
    """The printed copy check: median nearest-training-face distance of the samples over that of unseen
    faces; samples that are training faces read ~0 ("copies"), samples far from all faces read > 1."""
    import re

    from facegen.evaluate import copy_check

    g = torch.Generator().manual_seed(0)
    train, held = torch.randn(50, 8, generator=g), torch.randn(20, 8, generator=g)
    d_held = float(torch.cdist(held.double(), train.double()).min(1).values.median())

    def ratio(text: str) -> float:
        return float(re.search(r"\(ratio ([^;]+);", text).group(1))

    assert ratio(copy_check(train[:20].clone(), held, train)) == 0.0
    far = held * 3
    d_far = float(torch.cdist(far.double(), train.double()).min(1).values.median())
    text = copy_check(far, held, train)
    assert ratio(text) == pytest.approx(d_far / d_held, abs=0.005) and ratio(text) > 1
    assert f"samples {d_far:.4g}, held-out faces {d_held:.4g}" in text


def test_the_better_column_says_which_way_each_metric_is_better():
    """format_table's "better" column (and scripts/rank_agreement.py, which orders runs by it)."""
    from facegen.evaluate import _direction, format_table

    expected = {"fd_facenet": "lower", "kid_facenet": "lower", "kid_facenet_std": "", "fid_inception": "lower",
                "precision": "higher", "recall": "higher", "density": "near 1", "coverage": "higher",
                "fd_eigenfaces": "lower", "sharpness_ratio": "near 1", "texture_outliers": "lower",
                "spectral_distance": "lower", "recon_mse": "lower", "recon_psnr": "higher", "recon_ssim": "higher",
                "recon_feature_distance": "lower", "feature_net_hash": "", "num_samples": "", "num_real": ""}
    assert set(KEYS) <= set(expected)
    assert {key: _direction(key) for key in expected} == expected
    table = format_table({"model": {"recall": 0.5, "kid_facenet_std": 0.01}, "baseline": {"recall": 0.25}})
    assert [line.split() for line in table.splitlines()] == [["metric", "better", "model", "baseline"],
                                                             ["recall", "higher", "0.5", "0.25"],
                                                             ["kid_facenet_std", "0.01", "-"]]


# -- the seed checkpoint, and baseline= ---------------------------------------------------------------------
@needs_seed
def test_seed_checkpoint_beside_a_baseline(tiny_ema_ckpt, tiny_net, tmp_path, capsys):
    out = tmp_path / "out"
    paths = run_evaluate(eval_cfg(SEED_CKPT, out, tiny_net, *SEED_DATA, "model=seed_vae", "num_samples=40",
                                  f"baseline={tiny_ema_ckpt}"))
    assert paths == [out / "metrics.json", out / "metrics_baseline.json", out / "nearest.png"]
    model, base = (json.loads(p.read_text()) for p in paths[:2])
    check_ranges(model)
    check_ranges(base)
    assert (model["num_samples"], model["num_real"]) == (base["num_samples"], base["num_real"]) == (40, 30)
    assert model["feature_net_hash"] == base["feature_net_hash"]
    assert model["fd_facenet"] != base["fd_facenet"] and model["recon_mse"] != base["recon_mse"]
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("metric"))
    assert header.split() == ["metric", "better", "model", "baseline"]
    row = next(line for line in lines if line.startswith("recon_mse ")).split()
    assert row[2:] == [f"{model['recon_mse']:.4g}", f"{base['recon_mse']:.4g}"]

    # the seed alone, model inferred from its weights: the same numbers as with model=seed_vae
    again = json.loads(run_evaluate(eval_cfg(SEED_CKPT, tmp_path / "o2", tiny_net, *SEED_DATA,
                                             "num_samples=40"))[0].read_text())
    assert again == model


@needs_seed
def test_real_path_is_every_face_of_the_folder(tiny_net, tmp_path):
    images, _ = draw_faces(40, 48, seed=2, channels=1)
    folder = tmp_path / "faces"
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img[0].numpy()).save(folder / f"{i:03d}.jpg", quality=95)
    folder_data = ["data=folder", f"data.path={folder}", "data.val_fraction=0.25", "num_samples=64"]
    val = json.loads(run_evaluate(eval_cfg(SEED_CKPT, tmp_path / "v", tiny_net, *folder_data))[0].read_text())
    every = json.loads(run_evaluate(eval_cfg(SEED_CKPT, tmp_path / "p", tiny_net, *folder_data,
                                             "real=path"))[0].read_text())
    assert (val["num_real"], every["num_real"]) == (10, 40)
    with pytest.raises(DataError, match="real=path"):
        run_evaluate(eval_cfg(SEED_CKPT, tmp_path / "s", tiny_net, *SEED_DATA, "real=path"))
    with pytest.raises(DataError, match="real=test"):
        run_evaluate(eval_cfg(SEED_CKPT, tmp_path / "t", tiny_net, *SEED_DATA, "real=test"))


# -- errors for people ------------------------------------------------------------------------------------
def _cli(module: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", f"facegen.{module}", *args, f"hydra.run.dir={tmp_path / 'hydra'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_missing_checkpoint_is_one_line_and_exit_2_through_the_cli(tmp_path):
    out = _cli("evaluate", tmp_path, "checkpoint=nowhere/last.pt", "device=cpu")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert out.stderr.startswith("error: nowhere/last.pt: no such checkpoint file") and "Traceback" not in out.stderr


def test_a_missing_mandatory_key_is_one_line_and_exit_2(tmp_path):
    """data=folder without data.path (??? in conf/data/folder.yaml): the key to give, not a traceback."""
    out = _cli("train", tmp_path, "data=folder", "logger=none")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == "error: data.path has no value (??? in its config): give it on the command line, " \
                                 "e.g. data.path=..."


def test_bad_feature_net_and_baseline_are_user_errors(tiny_ema_ckpt, tiny_net, tmp_path, capsys):
    missing = eval_cfg(tiny_ema_ckpt, tmp_path / "o", tmp_path / "nope.pt", "num_samples=30")
    with pytest.raises(SystemExit) as exit_info:
        run_or_explain(run_evaluate, missing)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'nope.pt'}: no such feature net file")
    with pytest.raises(CheckpointError, match="x.pt: no such checkpoint file .give baseline=PATH"):
        run_evaluate(eval_cfg(tiny_ema_ckpt, tmp_path / "o", tiny_net, f"baseline={tmp_path / 'x.pt'}"))
    with pytest.raises(DataError, match="num_samples=5: precision/recall with k=5"):
        run_evaluate(eval_cfg(tiny_ema_ckpt, tmp_path / "o", tiny_net, "num_samples=5"))


# -- train_features ---------------------------------------------------------------------------------------------
def test_train_features_writes_the_default_net_and_prints_its_hash(tmp_path, capsys):
    cfg = compose_config("train_features", ["data.num_images=80", "steps=3", "batch_size=16", "max_images=50",
                                            "device=cpu", f"out={tmp_path / 'out'}"], output_dir=tmp_path / "hydra")
    assert cfg.data.seed == 42 and cfg.seed == 0  # train's split; the default net's seed
    [path] = run_train_features(cfg)
    assert path == tmp_path / "out" / "facenet.pt"
    net = load_feature_net(path)
    printed = capsys.readouterr().out
    assert f"format 1, hash {net.hash}" in printed and str(path) in printed
    assert net.training_info["num_images"] == 50 and net.training_info["steps"] == 3
    # the same faces and training as the cached default net of these settings: the same weights
    dm = instantiate(cfg.data).setup()
    default = default_feature_net(dm, cache_dir=tmp_path / "cache", steps=3, batch_size=16, max_images=50, seed=0)
    assert default.hash == net.hash
    with pytest.raises(DataError, match="steps=0"):
        run_train_features(compose_config("train_features", ["steps=0", f"out={tmp_path}"], output_dir=tmp_path))


def test_validation_faces_that_are_also_training_faces_are_counted(tiny_ema_ckpt, tiny_net, tmp_path, capsys):
    """FER2013's validation folder holds ~8% exact copies of training faces: evaluate says how many."""
    from torchvision.io import write_png

    images, _ = draw_faces(16, 48, seed=9, channels=1)
    for split, picks in (("train", range(10)), ("val", (0, 1, 10, 11, 12, 13, 14, 15))):  # 2 copies in val
        (tmp_path / split / "x").mkdir(parents=True)
        for i in picks:
            write_png(images[i], str(tmp_path / split / "x" / f"{i}.png"))
    run_evaluate(eval_cfg(tiny_ema_ckpt, tmp_path / "out", tiny_net, "num_samples=8", "k=3", "nearest_rows=2",
                          "data=folder", f"data.path={tmp_path / 'train'}", f"data.val_path={tmp_path / 'val'}",
                          f"paths.cache_dir={tmp_path / 'cache'}"))
    assert "note: 2 of the 8 validation faces are also in the training split" in capsys.readouterr().out
