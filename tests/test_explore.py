"""Exploring a trained model: every entry point on a tiny trained checkpoint and on the seed's
VAE_epoch_100.pth, checking the numbers in the files they write (facegen/explore.py)."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from facegen.checkpoint import CheckpointError
from facegen.cli import run_or_explain
from facegen.data.base import DataError
from tests.conftest import ROOT, SEED_CKPT, compose_config, tiny_overrides

import facegen.explore as ex

needs_seed = pytest.mark.skipif(not SEED_CKPT.is_file(), reason=f"{SEED_CKPT} is absent")
# The seed is a raw state dict that names no data: pick a few synthetic faces for it.
SEED_DATA = ["data=synthetic", "data.num_images=120", "data.val_fraction=0.25"]
TINY_VAL = 24  # 96 faces, val_fraction 0.25


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A tiny dcgan VAE-GAN trained for 2 epochs on 96 synthetic faces (latent 8)."""
    from facegen.trainer import train

    run = tmp_path_factory.mktemp("tiny") / "run"
    before = torch.get_num_threads()
    cfg = compose_config("train", tiny_overrides("trainer.epochs=2", "trainer.checkpoint_every=1000",
                                                 "trainer.num_threads=1"), output_dir=run)
    train(cfg)
    torch.set_num_threads(before)
    return run / "checkpoints" / "last.pt"


def explore_cfg(name: str, checkpoint: Path, out: Path, *overrides: str):
    """conf/<name>.yaml as `python -m facegen.<name> checkpoint=... out=...` would see it."""
    return compose_config(name, [f"checkpoint={checkpoint}", f"out={out}", "device=cpu", *overrides],
                          output_dir=out / "hydra")


def run_cli(name: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", f"facegen.{name}", "device=cpu",
                           f"hydra.run.dir={tmp_path / 'hydra'}", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def checkpoints(tiny_ckpt: Path) -> dict[str, tuple[Path, list[str]]]:
    return {"tiny": (tiny_ckpt, []), "seed": (SEED_CKPT, SEED_DATA)}


both = pytest.mark.parametrize("which", ["tiny", pytest.param("seed", marks=needs_seed)])


def seed_decoder_by_hand(state: dict, z: torch.Tensor) -> torch.Tensor:
    """The seed's decoder from /work/shared/seed/README.md, in plain torch ops (eval-mode BatchNorm):
    Linear(20, 2304) -> 64x6x6; 3 x [ConvTranspose2d k3 s2 p1 op1 -> BN -> LeakyReLU(0.01)];
    Conv2d(32, 1, k3, p1) -> Sigmoid."""
    h = F.linear(z, state["decoder_input.weight"], state["decoder_input.bias"]).view(-1, 64, 6, 6)
    for i in range(3):
        h = F.conv_transpose2d(h, state[f"decoder.{i}.0.weight"], state[f"decoder.{i}.0.bias"], stride=2,
                               padding=1, output_padding=1)
        h = F.batch_norm(h, state[f"decoder.{i}.1.running_mean"], state[f"decoder.{i}.1.running_var"],
                         state[f"decoder.{i}.1.weight"], state[f"decoder.{i}.1.bias"], training=False, eps=1e-5)
        h = F.leaky_relu(h, 0.01)
    return torch.sigmoid(F.conv2d(h, state["final_layer.0.weight"], state["final_layer.0.bias"], padding=1))


def grid_size(rows: int, cols: int, side: int = 48, pad: int = 2) -> tuple[int, int]:
    """(width, height) of a torchvision grid of rows x cols faces."""
    return cols * (side + pad) + pad, rows * (side + pad) + pad


# -- slerp / lerp ------------------------------------------------------------------------------------
def test_slerp_keeps_equal_norms_and_interpolates_unequal_ones():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 16, generator=g), torch.randn(3, 16, generator=g)
    b_same = b / b.norm(dim=1, keepdim=True) * a.norm(dim=1, keepdim=True)
    t = torch.linspace(0, 1, 9)
    z = ex.slerp(a, b_same, t)
    assert z.shape == (3, 9, 16)
    torch.testing.assert_close(z.norm(dim=-1), a.norm(dim=1, keepdim=True).expand(3, 9), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z[:, 0], a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z[:, -1], b_same, rtol=1e-5, atol=1e-5)

    z = ex.slerp(a, b, t)  # unequal norms: the norm goes linearly from |a| to |b|
    expected = a.norm(dim=1, keepdim=True) * (1 - t) + b.norm(dim=1, keepdim=True) * t
    torch.testing.assert_close(z.norm(dim=-1), expected, rtol=1e-5, atol=1e-5)
    # the direction moves along the great circle: equal angle steps between frames
    u = z / z.norm(dim=-1, keepdim=True)
    steps = torch.acos((u[:, 1:] * u[:, :-1]).sum(-1).clamp(-1, 1))
    torch.testing.assert_close(steps, steps[:, :1].expand_as(steps), rtol=1e-3, atol=1e-4)
    # lerp: a straight line, whose midpoint of equal-norm ends is shorter than the ends
    mid = ex.lerp(a, b_same, torch.tensor([0.5]))[:, 0]
    torch.testing.assert_close(mid, (a + b_same) / 2)
    assert (mid.norm(dim=1) < a.norm(dim=1) - 1e-3).all()


def test_slerp_degenerate_ends_fall_back_to_straight_lines():
    a = torch.tensor([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]])
    b = torch.tensor([[2.0, 4.0, 4.0], [3.0, 0.0, 4.0]])  # parallel; from zero
    z = ex.slerp(a, b, torch.linspace(0, 1, 5))
    assert torch.isfinite(z).all()
    torch.testing.assert_close(z, ex.lerp(a, b, torch.linspace(0, 1, 5)), rtol=1e-5, atol=1e-5)


def test_interpolate_slerp_follows_the_great_circle_and_lerp_the_chord(tiny_ckpt):
    """method=slerp (the default) is slerp all the way to the decoder, checked against the textbook
    formula in float64; method=lerp is the straight line. Both meet the ends exactly."""
    model = ex.load(tiny_ckpt, "cpu").model
    z = ex.prior(model, 4, 1.0, 0)
    a, b = z[:2], z[2:]
    t = np.linspace(0, 1, 5)[None, :, None]
    a64, b64 = a.double().numpy()[:, None], b.double().numpy()[:, None]
    na, nb = np.linalg.norm(a64, axis=-1, keepdims=True), np.linalg.norm(b64, axis=-1, keepdims=True)
    omega = np.arccos(np.sum(a64 / na * b64 / nb, axis=-1, keepdims=True))
    direction = (np.sin((1 - t) * omega) * a64 / na + np.sin(t * omega) * b64 / nb) / np.sin(omega)
    great_circle = torch.from_numpy(direction * ((1 - t) * na + t * nb)).float()

    frames, path = ex.interpolate(model, a, b, 5, "slerp")
    torch.testing.assert_close(path, great_circle, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(frames, ex.decode(model, great_circle), rtol=0, atol=1e-5)
    _, chord = ex.interpolate(model, a, b, 5, "lerp")
    torch.testing.assert_close(chord, torch.from_numpy((1 - t) * a64 + t * b64).float(), rtol=1e-6, atol=1e-6)
    assert (path[:, 2].norm(dim=-1) > chord[:, 2].norm(dim=-1) + 1e-2).all()   # slerp's middle is not shortened
    for p in (path, chord):
        torch.testing.assert_close(p[:, 0], a, rtol=0, atol=1e-5)
        torch.testing.assert_close(p[:, -1], b, rtol=0, atol=1e-5)


def test_batching_keeps_faces_and_latents_in_order(tiny_ckpt):
    """encode, decode, sample and reconstruct in batches of 3-4 give what one call of the model gives,
    row for row: with more faces than batch_size (256), latents.npy and labels.csv, samples and their z,
    frames and their place in the grid must stay aligned."""
    from facegen.data import draw_faces

    model = ex.load(tiny_ckpt, "cpu").model
    images, _ = draw_faces(11, 48, seed=0, channels=1)
    with torch.no_grad():
        mu_ref, logvar_ref = model.encode(model.from_uint8(images))
        recon_ref = model.to_unit(model.decode(mu_ref))
    mu, logvar = ex.encode(model, images, batch_size=4)
    torch.testing.assert_close(mu, mu_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(logvar, logvar_ref, rtol=0, atol=1e-5)
    real, recon = ex.reconstruct(model, images, batch_size=4)
    torch.testing.assert_close(real, images.float() / 255)
    torch.testing.assert_close(recon, recon_ref, rtol=0, atol=1e-5)
    z = ex.prior(model, 12, 1.0, 3).reshape(3, 4, -1)    # [K, T, D] like an interpolation
    with torch.no_grad():
        each = torch.stack([model.to_unit(model.decode(z[k])) for k in range(3)])
    torch.testing.assert_close(ex.decode(model, z, batch_size=5), each, rtol=0, atol=1e-5)
    images_a, z_a = ex.sample(model, 7, 1.0, seed=2, batch_size=3)
    images_b, z_b = ex.sample(model, 7, 1.0, seed=2)
    assert torch.equal(z_a, z_b)
    torch.testing.assert_close(images_a, images_b, rtol=0, atol=1e-5)


# -- sample --------------------------------------------------------------------------------------------
@both
def test_sample_from_the_prior(which, tiny_ckpt, tmp_path):
    ckpt, _ = checkpoints(tiny_ckpt)[which]
    paths = ex.run_sample(explore_cfg("sample", ckpt, tmp_path / "out", "num_samples=6", "seed=3", "temperature=0.5"))
    assert paths == [tmp_path / "out" / "samples.png", tmp_path / "out" / "samples.npy"]
    samples = np.load(paths[1])
    assert samples.dtype == np.float32 and samples.shape == (6, 1, 48, 48)
    assert samples.min() >= 0 and samples.max() <= 1 and samples.std() > 1e-3
    model = ex.load(ckpt, "cpu").model
    z = torch.randn(6, model.latent_dim, generator=torch.Generator().manual_seed(3)) * 0.5  # seed, temperature
    torch.testing.assert_close(torch.from_numpy(samples), ex.decode(model, z), rtol=0, atol=1e-5)
    assert Image.open(paths[0]).size == grid_size(2, 3)  # ceil(sqrt(6)) columns
    other = np.load(ex.run_sample(explore_cfg("sample", ckpt, tmp_path / "o2", "num_samples=6", "seed=4"))[1])
    assert np.abs(other - samples).max() > 1e-3


@needs_seed
def test_sample_latents_cli_reproduces_the_seed_decoder(tmp_path):
    z = torch.randn(7, 20, generator=torch.Generator().manual_seed(1)) * 1.5
    np.save(tmp_path / "z.npy", z.numpy())
    out = tmp_path / "out"
    res = run_cli("sample", tmp_path, f"checkpoint={SEED_CKPT}", f"out={out}", "latents=z.npy")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [str(out / "samples.png"), str(out / "samples.npy")]  # what it wrote
    samples = torch.from_numpy(np.load(out / "samples.npy"))
    state = torch.load(SEED_CKPT, map_location="cpu", weights_only=True)
    expected = seed_decoder_by_hand(state, z)
    assert samples.shape == (7, 1, 48, 48)
    torch.testing.assert_close(samples, expected, rtol=0, atol=1e-5)


def test_sample_errors_for_people(tiny_ckpt, tmp_path, capsys):
    np.save(tmp_path / "bad.npy", np.zeros((4, 5), np.float32))
    cfg = explore_cfg("sample", tiny_ckpt, tmp_path / "out", f"latents={tmp_path / 'bad.npy'}")
    with pytest.raises(DataError, match=r"bad\.npy: expected a float array of shape \[N, 8\].*found float32 \[4, 5\]"):
        ex.run_sample(cfg)
    cfg = explore_cfg("sample", tiny_ckpt, tmp_path / "out")
    cfg.checkpoint = None
    with pytest.raises(SystemExit) as stop:  # what the entry point does with it
        run_or_explain(ex.run_sample, cfg)
    assert stop.value.code == 2
    assert "checkpoint= is required" in capsys.readouterr().err
    cfg.checkpoint = str(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="nope.pt: no such checkpoint file"):
        ex.run_sample(cfg)


def test_sample_with_standing_stats_decodes_with_re_estimated_norms(tiny_ckpt, tmp_path):
    """standing_stats=N re-estimates the checkpoint's decoder norms on prior batches before sampling
    (what trainer.standing_stats does in training); a negative N is refused."""
    from facegen.models import standing_statistics

    cfg = explore_cfg("sample", tiny_ckpt, tmp_path / "out", "num_samples=6", "seed=3", "standing_stats=2")
    samples = torch.from_numpy(np.load(ex.run_sample(cfg)[1]))
    model = ex.load(tiny_ckpt, "cpu").model
    plain = ex.decode(model, torch.randn(6, model.latent_dim, generator=torch.Generator().manual_seed(3)))
    standing_statistics(model.decoder, model.latent_dim, 2, seed=3)
    z = torch.randn(6, model.latent_dim, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(samples, ex.decode(model, z), rtol=0, atol=1e-5)
    assert (samples - plain).abs().max() > 1e-3
    with pytest.raises(DataError, match=r"standing_stats=-1: give a number of batches"):
        ex.run_sample(explore_cfg("sample", tiny_ckpt, tmp_path / "o2", "standing_stats=-1"))


# -- interpolate -----------------------------------------------------------------------------------------
def test_interpolate_cli_between_dataset_faces(tiny_ckpt, tmp_path):
    """a/b are indices into the validation split of the checkpoint's own data (none given)."""
    out = tmp_path / "out"
    res = run_cli("interpolate", tmp_path, f"checkpoint={tiny_ckpt}", f"out={out}", "a=2", "b=17", "steps=6",
                  f"paths.cache_dir={tmp_path / 'cache'}")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[-3:] == [str(out / f"interpolation.{e}") for e in ("png", "gif", "npy")]
    frames = torch.from_numpy(np.load(out / "interpolation.npy"))
    assert frames.dtype == torch.float32 and frames.shape == (1, 6, 1, 48, 48)
    loaded = ex.load(tiny_ckpt, "cpu")
    val = ex.data_module(explore_cfg("interpolate", tiny_ckpt, tmp_path), loaded).val
    assert len(val) == TINY_VAL
    mu, _ = ex.encode(loaded.model, val.images[[2, 17]])
    ends = ex.decode(loaded.model, mu)
    # another process may pick other CPU kernels (float differences ~1e-3 seen in a loaded full
    # suite); the 1e-5 equality of endpoints is checked in-process in test_interpolate_random_pairs.
    # Here: the CLI took faces 2 and 17, i.e. each end is far closer to its own face than the other.
    torch.testing.assert_close(frames[0, 0], ends[0], rtol=0, atol=5e-3)
    torch.testing.assert_close(frames[0, -1], ends[1], rtol=0, atol=5e-3)
    assert (frames[0, 0] - ends[1]).abs().mean() > 10 * (frames[0, 0] - ends[0]).abs().mean()
    gif = Image.open(out / "interpolation.gif")
    assert gif.n_frames == 2 * 6 - 2 and gif.size == (4 * 48, 4 * 48)  # there and back, 4x upscaled
    assert gif.info["loop"] == 0
    assert Image.open(out / "interpolation.png").size == grid_size(1, 6)


@both
def test_interpolate_random_pairs(which, tiny_ckpt, tmp_path):
    ckpt, data = checkpoints(tiny_ckpt)[which]
    cfg = explore_cfg("interpolate", ckpt, tmp_path / "out", "pairs=3", "steps=5", "seed=7", *data)
    paths = ex.run_interpolate(cfg)
    frames = torch.from_numpy(np.load(paths[2]))
    assert frames.shape == (3, 5, 1, 48, 48) and 0 <= frames.min() and frames.max() <= 1
    model = ex.load(ckpt, "cpu").model
    z = ex.prior(model, 6, 1.0, 7)
    torch.testing.assert_close(frames[:, 0], ex.decode(model, z[:3]), rtol=0, atol=1e-5)
    torch.testing.assert_close(frames[:, -1], ex.decode(model, z[3:]), rtol=0, atol=1e-5)
    _, path_z = ex.interpolate(model, z[:3], z[3:], 5, "slerp")
    torch.testing.assert_close(path_z.norm(dim=-1)[:, [0, -1]], torch.stack([z[:3].norm(dim=1), z[3:].norm(dim=1)], 1))
    assert Image.open(paths[0]).size == grid_size(3, 5)
    assert Image.open(paths[1]).n_frames == 8


def test_interpolate_between_image_files(tiny_ckpt, tmp_path):
    """Image files of any size and mode are read gray at the model's 48x48."""
    from torchvision.io import decode_image, ImageReadMode

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 120, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(tmp_path / "b.jpg")
    cfg = explore_cfg("interpolate", tiny_ckpt, tmp_path / "out", f"a={tmp_path / 'a.png'}",
                      f"b={tmp_path / 'b.jpg'}", "steps=3", "method=lerp")
    frames = torch.from_numpy(np.load(ex.run_interpolate(cfg)[2]))
    model = ex.load(tiny_ckpt, "cpu").model
    a = ex.read_image_file(tmp_path / "a.png", 1, 48)
    assert a.shape == (1, 48, 48) and a.dtype == torch.uint8
    b = decode_image(str(tmp_path / "b.jpg"), mode=ImageReadMode.GRAY)
    mu, _ = ex.encode(model, torch.stack([a, b]))
    torch.testing.assert_close(frames[0, 1], ex.decode(model, (mu[0] + mu[1]) / 2), rtol=0, atol=1e-5)
    cfg.b = None
    with pytest.raises(DataError, match="give both ends"):
        ex.run_interpolate(cfg)
    cfg.a, cfg.b = 0, str(tmp_path / "missing.png")
    with pytest.raises(DataError, match="missing.png: no such image file"):
        ex.run_interpolate(cfg)


# -- traverse ----------------------------------------------------------------------------------------------
@both
def test_traverse_rows_sweep_one_dimension_most_used_first(which, tiny_ckpt, tmp_path):
    ckpt, data = checkpoints(tiny_ckpt)[which]
    cfg = explore_cfg("traverse", ckpt, tmp_path / "out", "steps=4", *data)
    loaded = ex.load(ckpt, "cpu")
    faces = ex.data_module(cfg, loaded).train
    mu, logvar = ex.encode(loaded.model, faces.images)
    d = loaded.model.latent_dim
    kl = (-0.5 * (1 + logvar - mu**2 - logvar.exp())).mean(0)  # mean KL per dimension, by hand

    result = ex.traverse(loaded.model, mu, logvar, steps=4)  # range=data, base zero, all dims
    assert result.z.shape == (d, 4, d) and result.images.shape == (d, 4, 1, 48, 48)
    assert sorted(result.dims.tolist()) == list(range(d))
    assert (kl[result.dims][:-1] >= kl[result.dims][1:]).all()
    for row, dim in enumerate(result.dims.tolist()):
        others = torch.ones(d, dtype=torch.bool)
        others[dim] = False
        assert (result.z[row][:, others] == 0).all()  # only the swept coordinate changes
        torch.testing.assert_close(result.z[row, :, dim], torch.linspace(mu[:, dim].min(), mu[:, dim].max(), 4))
    torch.testing.assert_close(result.images, ex.decode(loaded.model, result.z), rtol=0, atol=1e-5)

    base = mu[5]  # range=std around a face of the data, the 3 most used dims only
    result = ex.traverse(loaded.model, mu, logvar, base, dims=3, steps=5, how="std", k=2.0)
    assert result.z.shape == (3, 5, d)
    for row, dim in enumerate(result.dims.tolist()):
        changed = (result.z[row] != base).any(0)
        assert changed.nonzero().flatten().tolist() == [dim]
        m, s = mu[:, dim].mean(), mu[:, dim].std(unbiased=False)
        torch.testing.assert_close(result.z[row, [0, -1], dim], torch.stack([m - 2 * s, m + 2 * s]))

    paths = ex.run_traverse(explore_cfg("traverse", ckpt, tmp_path / "out", "steps=4", "dims=5", "base=3", *data))
    assert [p.name for p in paths] == ["traversal.png"]
    assert Image.open(paths[0]).size == grid_size(5, 4)


# -- reconstruct ------------------------------------------------------------------------------------------
@both
def test_reconstruct_pairs_faces_with_their_reconstructions(which, tiny_ckpt, tmp_path):
    ckpt, data = checkpoints(tiny_ckpt)[which]
    cfg = explore_cfg("reconstruct", ckpt, tmp_path / "out", "num_images=10", *data)
    paths = ex.run_reconstruct(cfg)
    assert [p.name for p in paths] == ["reconstructions.png", "reconstructions.npy"]
    pairs = torch.from_numpy(np.load(paths[1]))
    assert pairs.shape == (10, 2, 1, 48, 48) and pairs.dtype == torch.float32
    loaded = ex.load(ckpt, "cpu")
    val = ex.data_module(cfg, loaded).val
    index = ex.choose(len(val), 10, int(cfg.seed))
    assert len(set(index)) == 10 and max(index) < len(val)
    torch.testing.assert_close(pairs[:, 0], val.images[index].float() / 255)
    mu, _ = ex.encode(loaded.model, val.images[index])
    torch.testing.assert_close(pairs[:, 1], ex.decode(loaded.model, mu), rtol=0, atol=1e-5)
    assert Image.open(paths[0]).size == grid_size(2, 16)
    if which == "seed":  # a trained model: each reconstruction is nearer its own face than the others
        d = ((pairs[:, None, 1] - pairs[None, :, 0]) ** 2).flatten(2).mean(2)
        assert (d.diagonal() < d.mean(1)).float().mean() >= 0.9


# -- attributes ------------------------------------------------------------------------------------------
def test_attribute_groups_of_the_age_gender_labels():
    labels = pd.DataFrame({"age": [1, 5, 12, 13, 40, 59, 60, 85], "gender": [0, 1, 0, 1, 1, 0, 1, 0],
                           "ethnicity": [0, 0, 1, 2, 4, 4, 0, 1], "img_name": [f"{i}.jpg" for i in range(8)]})
    mu = torch.arange(8, dtype=torch.float32).reshape(8, 1) * torch.tensor([[1.0, -2.0]])
    vectors, counts = ex.attribute_vectors(mu, labels)
    assert set(vectors) == {"child", "adult", "senior", "gender", "ethnicity_white", "ethnicity_black",
                            "ethnicity_asian", "ethnicity_other"}
    assert counts["child"] == {"with": 3, "without": 5} and counts["senior"] == {"with": 2, "without": 6}
    assert counts["ethnicity_other"] == {"with": 2, "without": 6}
    # child: ages 1, 5, 12 (rows 0-2) against rows 3-7: mean 1 - mean 5 = -4
    torch.testing.assert_close(vectors["child"], torch.tensor([-4.0, 8.0]))
    # gender: rows 1, 3, 4, 6 (mean 3.5) against 0, 2, 5, 7 (mean 3.5)
    torch.testing.assert_close(vectors["gender"], torch.zeros(2))
    assert all(v.dtype == torch.float32 for v in vectors.values())
    v, c = ex.attribute_vectors(mu, labels, attribute="senior", contrast="child")
    torch.testing.assert_close(v["senior_vs_child"], torch.tensor([6.5 - 1.0, -13.0 + 2.0]))
    assert c["senior_vs_child"] == {"with": 2, "without": 3}
    with pytest.raises(DataError, match="attribute=smiling: .* no such attribute; available: child, adult"):
        ex.attribute_vectors(mu, labels, attribute="smiling")


def write_class_folder(root: Path, images: torch.Tensor, classes: list[str]) -> None:
    for i, (img, cls) in enumerate(zip(images, classes)):
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0].numpy()).save(root / cls / f"{i:04d}.jpg", quality=95)


@both
def test_attributes_file_and_grid(which, tiny_ckpt, tmp_path):
    ckpt, data = checkpoints(tiny_ckpt)[which]
    out = tmp_path / "out"
    cfg = explore_cfg("attributes", ckpt, out, "num_faces=3", "strength=[-1,0,2]", *data)
    paths = ex.run_attributes(cfg)
    assert [p.name for p in paths] == ["attribute_vectors.pt", "attributes.png"]
    saved = torch.load(paths[0], weights_only=True)
    vectors, counts = saved["vectors"], saved["counts"]
    loaded = ex.load(ckpt, "cpu")
    dm = ex.data_module(cfg, loaded)
    train = dm.train
    mu, _ = ex.encode(loaded.model, train.images)
    smiling = torch.from_numpy(train.labels["smiling"].to_numpy() == 1)
    torch.testing.assert_close(vectors["smiling"], mu[smiling].mean(0) - mu[~smiling].mean(0), rtol=1e-5, atol=1e-5)
    assert counts["smiling"] == {"with": int(smiling.sum()), "without": int((~smiling).sum())}
    n = len(train)
    assert counts["hair_darkness"] == {"with": n // 3, "without": n // 3}  # top third vs bottom third
    dark = train.labels["hair_darkness"].to_numpy()
    top = dark >= np.sort(dark)[n - n // 3]
    bottom = dark <= np.sort(dark)[n // 3 - 1]
    torch.testing.assert_close(vectors["hair_darkness"], mu[top].mean(0) - mu[bottom].mean(0), rtol=1e-5, atol=1e-5)
    assert {"glasses", "mouth_open", "hair_style_long"} <= set(vectors)
    assert all(v.dtype == torch.float32 and v.shape == (loaded.model.latent_dim,) for v in vectors.values())
    assert Image.open(paths[1]).size == grid_size(3 * len(vectors), 3)  # one block per vector

    # one vector: its block is each face's z + strength * vector, decoded
    cfg = explore_cfg("attributes", ckpt, out, "attribute=glasses", "faces=[4,1]", "strength=[-1,0,2]", *data)
    ex.run_attributes(cfg)
    assert Image.open(out / "attributes.png").size == grid_size(2, 3)
    z, _ = ex.encode(loaded.model, dm.val.images[[4, 1]])
    images, shifted = ex.apply_attribute(loaded.model, z, vectors["glasses"], [-1, 0, 2])
    torch.testing.assert_close(shifted[:, 2] - shifted[:, 1], 2 * vectors["glasses"].expand(2, -1))
    torch.testing.assert_close(images[:, 1], ex.decode(loaded.model, z), rtol=0, atol=1e-5)


def test_attributes_from_class_folders(tiny_ckpt, tmp_path):
    """Class folders give one vector per class; attribute=A contrast=B gives A against B."""
    from facegen.data import draw_faces

    images, labels = draw_faces(30, seed=5)
    classes = ["smile" if s else "plain" for s in labels["smiling"]]
    classes[:4] = ["wink"] * 4
    write_class_folder(tmp_path / "faces", images, classes)
    cfg = explore_cfg("attributes", tiny_ckpt, tmp_path / "out", "data=folder", f"data.path={tmp_path / 'faces'}",
                      "data.val_fraction=0.2", f"paths.cache_dir={tmp_path / 'cache'}", "attribute=smile",
                      "contrast=plain", "num_faces=2")
    saved = torch.load(ex.run_attributes(cfg)[0], weights_only=True)
    assert set(saved["vectors"]) == {"plain", "smile", "wink", "smile_vs_plain"}
    loaded = ex.load(tiny_ckpt, "cpu")
    train = ex.data_module(cfg, loaded).train
    mu, _ = ex.encode(loaded.model, train.images)
    label = train.labels["label"].to_numpy()
    expected = mu[torch.from_numpy(label == "smile")].mean(0) - mu[torch.from_numpy(label == "plain")].mean(0)
    torch.testing.assert_close(saved["vectors"]["smile_vs_plain"], expected, rtol=1e-5, atol=1e-5)
    assert saved["counts"]["smile_vs_plain"] == {"with": int((label == "smile").sum()),
                                                 "without": int((label == "plain").sum())}
    assert saved["counts"]["wink"]["with"] + saved["counts"]["wink"]["without"] == len(train)

    flat = tmp_path / "flat"  # no class subfolders, no UTKFace names: nothing to compute vectors from
    flat.mkdir()
    for i in range(6):
        Image.fromarray(images[i, 0].numpy()).save(flat / f"img{i}.jpg", quality=95)
    cfg = explore_cfg("attributes", tiny_ckpt, tmp_path / "out", "data=folder", f"data.path={flat}",
                      f"paths.cache_dir={tmp_path / 'cache'}")
    with pytest.raises(DataError, match=r"no labels to compute attribute vectors from \(label columns: path\)"):
        ex.run_attributes(cfg)


# -- encode ------------------------------------------------------------------------------------------------
@both
def test_encode_writes_mu_and_labels(which, tiny_ckpt, tmp_path):
    ckpt, data = checkpoints(tiny_ckpt)[which]
    cfg = explore_cfg("encode", ckpt, tmp_path / "out", "split=all", *data)
    paths = ex.run_encode(cfg)
    assert [p.name for p in paths] == ["latents.npy", "labels.csv"]
    latents = np.load(paths[0])
    loaded = ex.load(ckpt, "cpu")
    dm = ex.data_module(cfg, loaded)
    n = len(dm.train) + len(dm.val)
    assert latents.dtype == np.float32 and latents.shape == (n, loaded.model.latent_dim)
    mu, _ = ex.encode(loaded.model, torch.cat([dm.train.images, dm.val.images]))
    np.testing.assert_allclose(latents, mu.numpy(), atol=1e-5)
    labels = pd.read_csv(paths[1])
    assert len(labels) == n and labels["split"].tolist() == ["train"] * len(dm.train) + ["val"] * len(dm.val)
    np.testing.assert_array_equal(labels["smiling"].to_numpy()[-len(dm.val):], dm.val.labels["smiling"].to_numpy())

    # the counterpart of `sample latents=`: decoding the latents gives the reconstructions
    decoded = np.load(ex.run_sample(explore_cfg("sample", ckpt, tmp_path / "s", f"latents={paths[0]}"))[1])
    _, recon = ex.reconstruct(loaded.model, dm.val.images)
    np.testing.assert_allclose(decoded[-len(dm.val):], recon.numpy(), atol=1e-5)


def test_encode_an_image_folder(tiny_ckpt, tmp_path):
    from facegen.data import draw_faces, read_image_folder

    images, _ = draw_faces(5, seed=2)
    write_class_folder(tmp_path / "faces", images, ["a", "b", "a", "b", "b"])
    cfg = explore_cfg("encode", tiny_ckpt, tmp_path / "out", f"images={tmp_path / 'faces'}",
                      f"paths.cache_dir={tmp_path / 'cache'}")
    latents, labels = ex.run_encode(cfg)
    model = ex.load(tiny_ckpt, "cpu").model
    faces = read_image_folder(tmp_path / "faces", 48, 1)
    np.testing.assert_allclose(np.load(latents), ex.encode(model, faces.images)[0].numpy(), atol=1e-5)
    assert pd.read_csv(labels)["label"].tolist() == ["a", "a", "b", "b", "b"]


@needs_seed
def test_model_and_data_choices_for_the_seed(tmp_path):
    """A raw state dict names no data: entry points that need faces say so; model=seed_vae works."""
    cfg = explore_cfg("reconstruct", SEED_CKPT, tmp_path / "out")
    with pytest.raises(DataError, match="raw state dict that names no training data: choose the faces with data="):
        ex.run_reconstruct(cfg)
    cfg = explore_cfg("sample", SEED_CKPT, tmp_path / "out", "model=seed_vae", "num_samples=2")
    assert ex.load_from_config(cfg).model.latent_dim == 20
    cfg = explore_cfg("sample", SEED_CKPT, tmp_path / "out", "model=seed_vae", "model.latent_dim=16")
    with pytest.raises(CheckpointError, match="do not fit the chosen model"):
        ex.run_sample(cfg)


# -- the smiling vector ----------------------------------------------------------------------------------
# Why a linear model: a trained conv VAE needs thousands of steps before it draws a mouth (measured on
# this 2-core machine: a seed-sized VAE after 680 steps on 3,000 synthetic faces still decodes mouths as
# a blur, and its smiling vector moves nothing), far beyond a 30 s test. What this test checks is
# facegen's attribute arithmetic end to end (a checkpoint, its data config, the labels and their sign,
# mean mu of smiling minus non-smiling faces, z + strength * vector, decoding), so it uses the model
# whose latent space is known to hold the answer: PCA, the optimum of a linear VAE, with 64 components.
class LinearEncoder(torch.nn.Module):
    """mu = components (x - mean): the PCA coordinates of a face (logvar 0, unused here)."""

    def __init__(self, latent_dim: int, channels: int = 1, image_size: int = 48) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.register_buffer("components", torch.zeros(latent_dim, channels * image_size**2))
        self.register_buffer("mean", torch.zeros(channels * image_size**2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = (x.flatten(1) - self.mean) @ self.components.T
        return mu, torch.zeros_like(mu)


class LinearDecoder(LinearEncoder):
    """x = mean + components^T z, in [0, 1] like the seed's decoder."""

    output_range = (0.0, 1.0)

    def __init__(self, latent_dim: int, channels: int = 1, image_size: int = 48) -> None:
        super().__init__(latent_dim, channels, image_size)
        self.channels, self.image_size = channels, image_size

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.components + self.mean).view(-1, self.channels, self.image_size, self.image_size)


@pytest.fixture(scope="module")
def pca_ckpt(tmp_path_factory) -> Path:
    """A facegen checkpoint of the PCA model, fitted to the training split of 3,000 synthetic faces."""
    from facegen.checkpoint import FORMAT_VERSION, atomic_save
    from facegen.data import SyntheticFaces

    data = {"_target_": "facegen.data.SyntheticFaces", "num_images": 3000, "image_size": 48, "channels": 1,
            "batch_size": 64, "val_fraction": 0.15, "seed": 11}
    x = SyntheticFaces(**{k: v for k, v in data.items() if k != "_target_"}).setup().train.images
    x = x.float().flatten(1) / 255
    mean = x.mean(0)
    _, _, v = torch.pca_lowrank(x - mean, q=64, center=False, niter=2, )
    common = {"latent_dim": 64, "channels": 1, "image_size": 48}
    enc, dec = LinearEncoder(**common), LinearDecoder(**common)
    for net in (enc, dec):
        net.components.copy_(v.T)
        net.mean.copy_(mean)
    model = {"latent_dim": 64, "discriminator": None,
             "encoder": {"_target_": f"{__name__}.LinearEncoder", **common},
             "decoder": {"_target_": f"{__name__}.LinearDecoder", **common}}
    path = tmp_path_factory.mktemp("pca") / "pca.pt"
    atomic_save({"format_version": FORMAT_VERSION, "config": {"model": model, "data": data},
                 "model": {"encoder": enc.state_dict(), "decoder": dec.state_dict()}}, path)
    return path


def test_smiling_vector_raises_the_mouth_statistic(pca_ckpt, tmp_path):
    from facegen.data.synthetic import mouth_statistic

    cfg = explore_cfg("attributes", pca_ckpt, tmp_path / "out", "attribute=smiling", "num_faces=2")
    saved = torch.load(ex.run_attributes(cfg)[0], weights_only=True)
    assert saved["counts"]["smiling"]["with"] > 1000 and saved["counts"]["smiling"]["without"] > 1000
    loaded = ex.load(pca_ckpt, "cpu")
    val = ex.data_module(cfg, loaded).val  # held-out faces, not used for the PCA or the vector
    plain = torch.from_numpy(val.labels["smiling"].to_numpy() == 0)
    z, _ = ex.encode(loaded.model, val.images[plain])
    rise = {}
    for name in ("smiling", "glasses"):  # glasses: a control, also a change of the face
        images, _ = ex.apply_attribute(loaded.model, z, saved["vectors"][name], [0, 2])
        rise[name] = mouth_statistic(images[:, 1]) - mouth_statistic(images[:, 0])
    up = rise["smiling"]
    # mouth_statistic is higher for smiles: +2 x smiling raises it, by > 3 standard errors over ~220
    # non-smiling faces (measured: 8-10) and more than the glasses vector does (measured: 2.2-3.3x)
    assert up.mean() > 3 * up.std() / math.sqrt(len(up)), (up.mean(), up.std(), len(up))
    assert up.mean() > 1.5 * rise["glasses"].mean(), (up.mean(), rise["glasses"].mean())


def test_data_given_again_keeps_the_checkpoints_own_split(tmp_path):
    """data=... naming the training faces: the checkpoint's data.seed, not this entry point's seed=42,
    decides which faces are held out (another split's validation faces are mostly training faces)."""
    from facegen.trainer import train

    run = tmp_path / "run"
    train(compose_config("train", tiny_overrides("seed=7", "trainer.max_steps=1"), output_dir=run))
    ckpt = run / "checkpoints" / "last.pt"
    loaded = ex.load(ckpt, "cpu")
    own = ex.data_module(explore_cfg("reconstruct", ckpt, tmp_path / "a"), loaded)
    again = ex.data_module(explore_cfg("reconstruct", ckpt, tmp_path / "b", "data=synthetic", "data.num_images=96",
                                       "data.val_fraction=0.25"), loaded)
    assert again.seed == own.seed == 7 and torch.equal(again.val.images, own.val.images)
    # on the command line, data.seed chooses another split, as asked
    done = run_cli("reconstruct", tmp_path, f"checkpoint={ckpt}", "data=synthetic", "data.num_images=96",
                   "data.val_fraction=0.25", "num_images=4")
    assert done.returncode == 0 and "the checkpoint's own split of these faces (data.seed=7)" in done.stdout
    mine = run_cli("reconstruct", tmp_path, f"checkpoint={ckpt}", "data=synthetic", "data.num_images=96",
                   "data.val_fraction=0.25", "data.seed=3", "num_images=4")
    assert mine.returncode == 0 and "own split" not in mine.stdout


def test_odd_arguments_get_one_line_answers(tiny_ckpt, tmp_path):
    """What an audit of the documented commands found ending in a traceback (2026-12-01)."""
    run_dir = tiny_ckpt.parent.parent
    np.savez(tmp_path / "z.npz", z=np.zeros((2, 8), np.float32))
    cases = [
        ("sample", [f"latents={tmp_path / 'z.npz'}"], r"z\.npz: an archive, not one \.npy array"),
        ("sample", ["batch_size=0"], r"batch_size=0: faces per encoder/decoder call, at least 1"),
        ("interpolate", ["pairs=2", "gif_scale=0"], r"gif_scale=0: at least 1"),
        ("sample", [], r"is a folder, not a checkpoint file \(did you mean checkpoint=.*checkpoints/last\.pt\?\)"),
    ]
    for name, args, says in cases:
        cfg = explore_cfg(name, run_dir if not args else tiny_ckpt, tmp_path / "out", *args)
        with pytest.raises((DataError, CheckpointError), match=says):
            getattr(ex, f"run_{name}")(cfg)
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "cut.pt").write_bytes(tiny_ckpt.read_bytes()[:20000])
    torch.save({"step": __import__("fractions").Fraction(1, 3)}, tmp_path / "pickled.pt")
    for file, says in (("empty.pt", r"is empty \(0 bytes"), ("cut.pt", r"truncated or corrupt .*Copy it again"),
                       ("pickled.pt", r"cannot be read as a weights-only checkpoint .*never unpickles code")):
        with pytest.raises(CheckpointError, match=says):
            ex.run_sample(explore_cfg("sample", tmp_path / file, tmp_path / "out"))


def test_traverse_base_indexes_the_split_whatever_max_images(tiny_ckpt, tmp_path, monkeypatch):
    """max_images limits the faces whose spread sets the sweep, not which face base=INDEX is."""
    seen = {}
    real_traverse = ex.traverse
    monkeypatch.setattr(ex, "traverse", lambda model, mu, logvar, base_z, *a: seen.update(base=base_z)
                        or real_traverse(model, mu, logvar, base_z, *a))
    cfg = explore_cfg("traverse", tiny_ckpt, tmp_path / "out", "base=50", "max_images=10", "split=train")
    ex.run_traverse(cfg)
    loaded = ex.load(tiny_ckpt, "cpu")
    train = ex.data_module(cfg, loaded).train
    assert len(train) > 50
    torch.testing.assert_close(seen["base"], ex.encode(loaded.model, train.images[50:51])[0][0])


def test_attributes_refuses_an_unknown_name_before_encoding(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "encode", lambda *a, **k: pytest.fail("encoded before checking the name"))
    with pytest.raises(DataError, match="attribute=frowning: .* has no such attribute; available: "):
        ex.run_attributes(explore_cfg("attributes", tiny_ckpt, tmp_path / "out", "attribute=frowning"))


def test_encode_skips_bad_images_when_asked_and_puts_split_first(tiny_ckpt, tmp_path):
    from facegen.data import draw_faces
    from facegen.data.folder import SkippedImagesWarning

    images, _ = draw_faces(3, seed=2)
    write_class_folder(tmp_path / "faces", images, ["a", "b", "a"])
    (tmp_path / "faces" / "a" / "broken.jpg").write_bytes(b"not an image")
    args = (f"images={tmp_path / 'faces'}", f"paths.cache_dir={tmp_path / 'cache'}")
    with pytest.raises(DataError, match=r"broken\.jpg: cannot decode it.*set skip_bad=true"):
        ex.run_encode(explore_cfg("encode", tiny_ckpt, tmp_path / "out", *args))
    with pytest.warns(SkippedImagesWarning, match=r"skipped 1 .*\(skip_bad=true\)"):
        _, labels = ex.run_encode(explore_cfg("encode", tiny_ckpt, tmp_path / "out", *args, "skip_bad=true"))
    assert len(pd.read_csv(labels)) == 3
    _, labels = ex.run_encode(explore_cfg("encode", tiny_ckpt, tmp_path / "all", "split=all"))
    assert pd.read_csv(labels).columns[0] == "split"
