"""facegen.metrics: each metric checked against numbers (closed forms, hand-computed cases, known orderings)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.transforms.functional import gaussian_blur

from facegen.data import draw_faces
from facegen.metrics import (
    FeatureNetError,
    compute_metrics,
    default_feature_net,
    eigenfaces,
    extract_features,
    frechet_distance,
    frechet_distance_from_stats,
    kernel_distance,
    laplacian_variance,
    load_feature_net,
    precision_recall_density_coverage,
    quick_metrics,
    radial_log_spectrum,
    reconstruction_metrics,
    save_feature_net,
    sharpness_ratio,
    spectral_distance,
    texture_outliers,
    train_feature_net,
)
from facegen.metrics.features import DEGRADATIONS, augment, degrade, label_targets, weights_hash

TINY_NET = {"widths": (8, 16, 32, 32), "embed_dim": 32}
HALF = 600


@pytest.fixture(scope="module")
def faces():
    """Synthetic faces: 384 to train the feature net on, and two disjoint real halves to compare."""
    images, labels = draw_faces(384 + 2 * HALF, 48, seed=0, channels=1)
    return {"train": images[:384], "labels": labels.iloc[:384].reset_index(drop=True),
            "a": images[384:384 + HALF], "b": images[384 + HALF:]}


@pytest.fixture(scope="module")
def net(faces):
    # in only 100 steps a tiny net learns to see resolution loss reliably with a stronger degradation
    # head (weight 1, the default, leaves some seeds nearly blind to blur at this size; see features.py)
    return train_feature_net(faces["train"], faces["labels"], steps=100, batch_size=32, seed=0,
                             degradation_weight=3.0, **TINY_NET)


@pytest.fixture(scope="module")
def feats(net, faces):
    return {k: extract_features(net, faces[k]) for k in ("a", "b")}


def blur(images_uint8: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian-blurred copies as float in [0, 1] (sigma 0: the images themselves)."""
    x = images_uint8.float() / 255
    if sigma == 0:
        return x
    return gaussian_blur(x, kernel_size=2 * math.ceil(3 * sigma) + 1, sigma=sigma)


# -- the feature net ---------------------------------------------------------------------------
def test_same_seed_same_weights_and_other_seed_differs(faces):
    kw = dict(steps=3, batch_size=16, **TINY_NET)
    a = train_feature_net(faces["train"][:64], faces["labels"].iloc[:64], seed=7, **kw)
    b = train_feature_net(faces["train"][:64], faces["labels"].iloc[:64], seed=7, **kw)
    c = train_feature_net(faces["train"][:64], faces["labels"].iloc[:64], seed=8, **kw)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert a.hash == b.hash and a.hash != c.hash
    assert len(a.hash) == 12 and int(a.hash, 16) >= 0


def test_training_leaves_global_rng_alone(faces):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_feature_net(faces["train"][:32], None, steps=2, batch_size=8, seed=0, **TINY_NET)
    assert torch.equal(torch.rand(3), expected)


def test_feature_net_file_round_trips_weights_only(net, faces, tmp_path):
    path = save_feature_net(net, tmp_path / "facenet.pt")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format_version"] == 1 and raw["arch"]["widths"] == [8, 16, 32, 32]
    assert raw["hash"] == net.hash == weights_hash(raw["state_dict"])
    assert [h["column"] for h in raw["training"]["heads"]][:3] == ["smiling", "mouth_open", "glasses"]
    loaded = load_feature_net(path)
    assert loaded.hash == net.hash and loaded.name == "facenet"
    assert torch.equal(extract_features(loaded, faces["a"][:16]), extract_features(net, faces["a"][:16]))
    raw["state_dict"]["embed.bias"] = raw["state_dict"]["embed.bias"] + 1e-3
    torch.save(raw, tmp_path / "tampered.pt")
    with pytest.raises(FeatureNetError, match="does not match"):
        load_feature_net(tmp_path / "tampered.pt")


def test_extract_features_accepts_uint8_float_other_sizes_and_channels(net, faces):
    x = faces["a"][:8]
    f_u8 = extract_features(net, x, batch_size=3)
    assert f_u8.shape == (8, 32) and f_u8.dtype == torch.float32
    torch.testing.assert_close(extract_features(net, x.float() / 255), f_u8)
    rgb = x.expand(-1, 3, -1, -1).contiguous()
    torch.testing.assert_close(extract_features(net, rgb), f_u8, atol=1e-5, rtol=1e-5)
    big = torch.nn.functional.interpolate(x.float() / 255, size=64, mode="bilinear")
    assert extract_features(net, big).shape == (8, 32)


def test_a_gray_net_reads_rgb_faces_as_their_channel_mean(net, faces):
    """RGB samples measured with a gray feature net (the default net of a gray dataset) are read as the
    mean of their channels, not as one of them: here three different faces as the R, G, B channels."""
    x = faces["a"][:24].float() / 255
    rgb = torch.cat([x[:8], x[8:16], x[16:]], dim=1)   # [8, 3, 48, 48]
    torch.testing.assert_close(extract_features(net, rgb), extract_features(net, rgb.mean(1, keepdim=True)),
                               atol=1e-5, rtol=1e-5)
    assert (extract_features(net, rgb) - extract_features(net, x[:8])).abs().max() > 1e-2


def test_label_targets_pick_heads_per_column_kind():
    df = pd.DataFrame({
        "path": [f"happy/{i}.jpg" for i in range(40)],  # identifier: skipped
        "label": ["happy", "sad"] * 20, "label_idx": [0, 1] * 20,  # label_idx repeats label
        "age": np.arange(40) % 35, "smiling": [0, 1, 1, 0] * 10, "pose": np.linspace(-1, 1, 40),
        "constant": [3] * 40,
    })
    got = {t.name: (t.kind, t.num_classes) for t in label_targets(df, max_classes=32)}
    assert got == {"label": ("class", 2), "age": ("regress", 0), "smiling": ("class", 2), "pose": ("regress", 0)}
    assert label_targets(df[["path", "age"]].iloc[:10]) == []  # all values different: identifiers
    pose = next(t for t in label_targets(df) if t.name == "pose")
    assert abs(float(pose.values.mean())) < 1e-6 and abs(float(pose.values.std(unbiased=False)) - 1) < 1e-5


def test_augment_is_seeded_and_in_range(faces):
    x = faces["a"][:16].float() / 255
    v1 = augment(x, torch.Generator().manual_seed(3))
    v2 = augment(x, torch.Generator().manual_seed(3))
    assert torch.equal(v1, v2) and v1.shape == x.shape
    assert float(v1.min()) >= 0 and float(v1.max()) <= 1 and not torch.equal(v1, x)
    x = faces["a"][:64].float() / 255
    d, level = degrade(x.repeat(4, 1, 1, 1), torch.Generator().manual_seed(0))
    x = x.repeat(4, 1, 1, 1)
    assert set(level.tolist()) == set(range(len(DEGRADATIONS)))
    assert torch.equal(d[level == 0], x[level == 0])
    sharp = [float(laplacian_variance(d[level == i]).mean() / laplacian_variance(x[level == i]).mean())
             for i in range(len(DEGRADATIONS))]
    kinds = [k for k, _ in DEGRADATIONS]
    blur = [sharp[i] for i, k in enumerate(kinds) if k == "blur"]
    noise = [sharp[i] for i, k in enumerate(kinds) if k == "noise"]
    assert sharp[0] == 1.0 and blur[0] < 0.8 and blur[2] < blur[1] < blur[0]   # more blur, less detail
    assert 1.2 < noise[0] < noise[1]                                            # noise adds grain
    for i, k in enumerate(kinds):  # shuffled tiles: the same pixels, another arrangement
        if k == "shuffle":
            m = level == i
            assert torch.equal(d[m].flatten(1).sort(1).values, x[m].flatten(1).sort(1).values)
            assert not torch.equal(d[m], x[m])


def test_default_feature_net_trains_once_then_uses_cache(faces, tmp_path):
    kw = dict(steps=2, batch_size=8, max_images=40, **TINY_NET)
    first = default_feature_net(faces["train"][:64], cache_dir=tmp_path, **kw)
    files = list(tmp_path.glob("facenet-*.pt"))
    assert len(files) == 1 and first.training_info["num_images"] == 40
    assert first.training_info["data_num_images"] == 64
    mtime = files[0].stat().st_mtime_ns
    again = default_feature_net(faces["train"][:64], cache_dir=tmp_path, **kw)
    assert again.hash == first.hash and files[0].stat().st_mtime_ns == mtime
    other = default_feature_net(faces["train"][1:65], cache_dir=tmp_path, **kw)  # other data: new file
    assert len(list(tmp_path.glob("facenet-*.pt"))) == 2 and other.hash != first.hash
    assert default_feature_net(path=files[0]).hash == first.hash
    with pytest.raises(FeatureNetError, match="no such feature net file"):
        default_feature_net(faces["train"], path=tmp_path / "missing.pt")


# -- Fréchet distance ------------------------------------------------------------------------------
def _fd_closed_form(mu1, s1, mu2, s2) -> float:
    """Independent W2 of Gaussians: Tr sqrt(S1 S2) = Tr sqrt(S1^1/2 S2 S1^1/2), via symmetric eigh only."""
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(w)) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(np.clip(inner, 0, None))))


def test_frechet_hand_case_and_closed_form():
    # N(0, diag(1, 4)) vs N((1, 1), diag(4, 1)): |mu|^2 + sum (sqrt a - sqrt b)^2 = 2 + 1 + 1
    assert frechet_distance_from_stats(np.zeros(2), np.diag([1.0, 4.0]), np.ones(2), np.diag([4.0, 1.0])) == \
        pytest.approx(4.0, rel=1e-9)
    rng = np.random.default_rng(0)
    d = 12
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T / d + 0.1 * np.eye(d), b @ b.T / d + 0.1 * np.eye(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    truth = _fd_closed_form(mu1, s1, mu2, s2)
    assert frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(truth, rel=1e-4)
    # on samples: equal to the closed form of the sample statistics, and near the population value
    xa = rng.multivariate_normal(mu1, s1, size=20000)
    xb = rng.multivariate_normal(mu2, s2, size=20000)
    sample_truth = _fd_closed_form(xa.mean(0), np.cov(xa.T), xb.mean(0), np.cov(xb.T))
    got = frechet_distance(torch.from_numpy(xa).float(), xb)
    assert got == pytest.approx(sample_truth, rel=1e-4)
    assert got == pytest.approx(truth, rel=0.05)
    assert frechet_distance(xa, xa) == pytest.approx(0.0, abs=1e-6)


# -- KID ----------------------------------------------------------------------------------------
def test_kid_is_the_unbiased_mmd_over_subsets_of_at_most_half_of_each_set():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20, 6)), rng.normal(0.5, 1.0, size=(20, 6))

    def mmd(a, b):
        k = lambda u, v: (u @ v.T / 6 + 1) ** 3  # noqa: E731
        kxx, kyy, kxy, n = k(a, a), k(b, b), k(a, b), len(a)
        return ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (n * (n - 1)) - 2 * kxy.mean()

    # subset_size 1000 is capped to 10, half of each set: whole-set "subsets" would all be one set
    # reordered, and their std 0 would say nothing about the noise
    mean, std = kernel_distance(x, y, subsets=5, subset_size=1000, seed=3)
    g = torch.Generator().manual_seed(3)
    ref = []
    for _ in range(5):
        ia, ib = torch.randperm(20, generator=g)[:10].numpy(), torch.randperm(20, generator=g)[:10].numpy()
        ref.append(mmd(x[ia], y[ib]))
    assert mean == pytest.approx(np.mean(ref), rel=1e-9) and std == pytest.approx(np.std(ref), rel=1e-9)
    assert std > 0.01 * abs(mean)
    assert kernel_distance(x, y, subsets=5, subset_size=1000, seed=3) == (mean, std)
    assert kernel_distance(x[:3], y, subsets=3)[1] >= 0   # 3 faces: subsets of 2
    with pytest.raises(ValueError, match="at least 2"):
        kernel_distance(x[:1], y)


# -- precision / recall / density / coverage -----------------------------------------------------
def test_prdc_hand_computed_case():
    # k=1 radii: real {0:1, 1:1, 3:2}, fake {0.5:2.1, 2.6:2.1, 10:7.4}
    real, fake = np.array([[0.0], [1.0], [3.0]]), np.array([[0.5], [2.6], [10.0]])
    got = precision_recall_density_coverage(real, fake, k=1)
    assert got == pytest.approx({"precision": 2 / 3, "recall": 1.0, "density": 1.0, "coverage": 1.0})
    got = precision_recall_density_coverage(real, np.array([[0.5], [0.6], [10.0]]), k=1)
    # real 3 (radius 2) holds no fake; fake radii 0.1, 0.1, 9.4: only 1 and 3 lie in 10's ball
    assert got == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "density": 4 / 3, "coverage": 2 / 3})


def _prdc_reference(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """Naeem et al.'s definitions written out with scipy's cdist: closed k-NN balls, the point itself excluded."""
    from scipy.spatial.distance import cdist

    r_real = np.sort(cdist(real, real), axis=1)[:, k]   # column 0 is the point itself
    r_fake = np.sort(cdist(fake, fake), axis=1)[:, k]
    d = cdist(fake, real)                                # [fake, real]
    inside = d <= r_real[None, :]
    return {"precision": float(inside.any(1).mean()),
            "recall": float((d <= r_fake[:, None]).any(0).mean()),
            "density": float(inside.sum() / (k * len(fake))),
            "coverage": float(inside.any(0).mean())}


def test_prdc_balls_are_closed_and_match_a_reference():
    """Ties are exactly on a ball's edge, where closed and open balls differ: Kynkäänniemi's balls are
    closed, so a fake at distance == the radius counts. Integer grids make ties common (and exact)."""
    real, fake = np.array([[0.0], [1.0], [2.0]]), np.array([[3.0], [5.0], [7.0]])
    # k=1 radii: real 1, 1, 1; fake 2, 2, 2. Fake 3 is on real 2's ball edge; reals 1 and 2 in fake 3's ball
    got = precision_recall_density_coverage(real, fake, k=1)
    assert got == pytest.approx({"precision": 1 / 3, "recall": 2 / 3, "density": 1 / 3, "coverage": 1 / 3})
    rng = np.random.default_rng(0)
    for k in (1, 3):
        real, fake = rng.integers(0, 5, size=(40, 2)).astype(float), rng.integers(1, 7, size=(30, 2)).astype(float)
        assert precision_recall_density_coverage(real, fake, k=k) == pytest.approx(_prdc_reference(real, fake, k))


def test_precision_high_on_real_and_recall_detects_mode_collapse(feats):
    real_vs_real = precision_recall_density_coverage(feats["a"], feats["b"], k=5)
    assert real_vs_real["precision"] > 0.9 and real_vs_real["recall"] > 0.9
    assert 0.7 < real_vs_real["density"] < 1.3 and real_vs_real["coverage"] > 0.9
    collapsed = feats["b"][:10].repeat(HALF // 10, 1)  # 10 faces, many times each
    got = precision_recall_density_coverage(feats["a"], collapsed, k=5)
    assert got["recall"] < 0.1 and got["coverage"] < 0.2
    assert got["precision"] > 0.7  # the few faces it has are still real faces


# -- the feature-space distances rank degradations --------------------------------------------------
def test_fd_and_kid_grow_with_blur_and_noise_is_worst(net, faces, feats):
    noise = torch.rand(faces["b"].shape, generator=torch.Generator().manual_seed(0))
    fd, kid = {}, {}
    for label, images in [("sigma0", blur(faces["b"], 0)), ("sigma1", blur(faces["b"], 1)),
                          ("sigma2", blur(faces["b"], 2)), ("noise", noise)]:
        f = extract_features(net, images)
        fd[label] = frechet_distance(feats["a"], f)
        kid[label] = kernel_distance(feats["a"], f, subsets=20, subset_size=200)[0]
    print("FD", fd, "KID", kid)
    for d in (fd, kid):
        assert d["sigma0"] < d["sigma1"] < d["sigma2"] < d["noise"]
    # FD of two real halves is its finite-sample bias; KID is unbiased, so its halves value is ~0
    assert fd["sigma0"] < 0.5 * fd["sigma1"] and fd["sigma0"] < 0.25 * fd["sigma2"]
    assert fd["noise"] > 5 * fd["sigma2"]
    assert abs(kid["sigma0"]) < 0.25 * kid["sigma1"]


# -- pixel statistics ----------------------------------------------------------------------------
def test_sharpness_and_spectrum_see_blur(faces):
    a, b = blur(faces["a"], 0), blur(faces["b"], 0)
    b1, b2 = blur(faces["b"], 1), blur(faces["b"], 2)
    ratios = [sharpness_ratio(x, a) for x in (b, b1, b2)]
    print("sharpness ratio halves / sigma 1 / sigma 2:", ratios)
    assert ratios[0] == pytest.approx(1.0, abs=0.1) and ratios[2] < ratios[1] < 0.7
    halves, blurred = spectral_distance(b, a), spectral_distance(b1, a)
    print("spectral distance halves / sigma 1:", halves, blurred)
    assert blurred > 3 * halves
    # blur removes power at high frequencies: the outer end of the profile drops, the DC term does not
    prof_real, prof_blur = radial_log_spectrum(a), radial_log_spectrum(b1)
    assert prof_real.shape == (round(math.sqrt(2) * 24) + 1,)
    assert float((prof_real - prof_blur)[-10:].mean()) > 2.0
    assert abs(float(prof_real[0] - prof_blur[0])) < 0.5


def _radial_log_power_numpy(images: np.ndarray) -> np.ndarray:
    """The azimuthal mean of log |FFT|^2 of the channel-mean gray image, per integer radius, in numpy."""
    n, _, h, w = images.shape
    gray = images.astype(np.float64).mean(axis=1)
    power = np.abs(np.fft.fft2(gray)) ** 2
    radius = np.round(np.hypot(*np.meshgrid(np.fft.fftfreq(h) * h, np.fft.fftfreq(w) * w, indexing="ij"))).astype(int)
    logp = np.log(power + 1e-10)
    return np.array([logp[:, radius == r].mean() for r in range(radius.max() + 1)])


def test_radial_spectrum_and_spectral_distance_match_numpy():
    """Log *power* (not amplitude) of the channel mean (not one channel), and the mean *absolute*
    difference of the two profiles (a signed mean lets high-frequency loss cancel a low-frequency gain)."""
    g = torch.Generator().manual_seed(0)
    fake = torch.rand(5, 3, 16, 16, generator=g) * torch.tensor([0.2, 1.0, 0.5]).reshape(1, 3, 1, 1)
    real = gaussian_blur(torch.rand(7, 3, 16, 16, generator=g), kernel_size=5, sigma=1.0)
    ref_fake, ref_real = _radial_log_power_numpy(fake.numpy()), _radial_log_power_numpy(real.numpy())
    np.testing.assert_allclose(radial_log_spectrum(fake).numpy(), ref_fake, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(radial_log_spectrum(real).numpy(), ref_real, rtol=1e-9, atol=1e-9)
    diff = ref_fake - ref_real
    assert (diff > 0).any() and (diff < 0).any()   # the two profiles cross: sign matters
    assert spectral_distance(fake, real) == pytest.approx(float(np.abs(diff).mean()), rel=1e-9)


def test_sharpness_ratio_of_a_known_pattern():
    # a checkerboard of 0/1 has Laplacian +-4 everywhere (variance 16); half its contrast, 1/4 of that
    board = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2
    board = board.float()[None, None].repeat(3, 1, 1, 1)
    assert sharpness_ratio(board * 0.5 + 0.25, board) == pytest.approx(0.25, rel=1e-9)


def test_texture_outliers_count_the_samples_sharper_than_real_faces(faces):
    """Real against other real faces: ~1% (the 99th percentile's definition); blur: 0; a set where
    one face in ten is replaced by a stripe pattern (a GAN's partial collapse): at least that tenth."""
    a, b = faces["a"], faces["b"]
    assert texture_outliers(b, a) <= 0.04
    assert texture_outliers(blur(b, 1), a) == 0
    stripes = ((torch.arange(48)[:, None] + torch.arange(48)[None, :]) // 3 % 2 * 255).to(torch.uint8)
    collapsed = b.clone()
    collapsed[::10] = stripes                                     # 60 of the 600 faces
    share = texture_outliers(collapsed, a)
    print("texture outliers real / blur / 10% stripes:", texture_outliers(b, a), share)
    assert 0.1 <= share <= 0.14
    assert texture_outliers(collapsed, a, quantile=0.5) > texture_outliers(collapsed, a)
    assert texture_outliers(a, a) == pytest.approx(0.01, abs=0.005)


def test_reconstruction_metrics_identity_and_known_error(net, faces):
    x = faces["a"][:20].float() / 255 * 0.6 + 0.2  # [0.2, 0.8]: +0.1 stays in range
    same = reconstruction_metrics(x, x.clone(), net)
    assert same["recon_mse"] == 0 and math.isinf(same["recon_psnr"]) and same["recon_psnr"] > 0
    assert same["recon_ssim"] == pytest.approx(1.0, abs=1e-6)  # float32 SSIM: within a float32 epsilon
    assert same["recon_feature_distance"] == pytest.approx(0.0, abs=1e-5)
    shifted = reconstruction_metrics(x, x + 0.1, net)
    assert shifted["recon_mse"] == pytest.approx(0.01, rel=1e-5)
    assert shifted["recon_psnr"] == pytest.approx(20.0, abs=1e-3)  # 10 log10(1 / 0.01)
    assert shifted["recon_ssim"] < 1 and shifted["recon_feature_distance"] > 0
    blurred = reconstruction_metrics(x, blur((x * 255).round().to(torch.uint8), 2))
    assert blurred["recon_ssim"] < shifted["recon_ssim"]
    assert set(blurred) == {"recon_mse", "recon_psnr", "recon_ssim"}
    # SSIM runs in float32 (float64 convs on the CPU take ~11 MB per face): the same value as in float64
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim
    y = blur((x * 255).round().to(torch.uint8), 2)
    assert blurred["recon_ssim"] == pytest.approx(float(ssim(y.double(), x.double(), data_range=1.0)), abs=1e-5)


def test_recon_feature_distance_is_the_mean_l2_distance_per_face():
    """recon_feature_distance: mean over faces of ||f(x) - f(recon)||_2 (not squared), checked with
    a feature net whose features are the pixels themselves."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 16, 16, generator=g) * 0.5 + 0.25
    recon = x + torch.linspace(0.01, 0.2, 6).reshape(6, 1, 1, 1) * torch.randn(x.shape, generator=g).clamp(-1, 1)
    got = reconstruction_metrics(x, recon, torch.nn.Flatten())
    ref = np.linalg.norm((x - recon).flatten(1).double().numpy(), axis=1)
    assert got["recon_feature_distance"] == pytest.approx(float(ref.mean()), rel=1e-5)
    assert got["recon_mse"] == pytest.approx(float(((x - recon).double() ** 2).mean()), rel=1e-9)


# -- the full record ---------------------------------------------------------------------------
def test_compute_metrics_keys_and_values(net, faces):
    fake = blur(faces["b"], 1)
    out = compute_metrics(fake, faces["a"], net, kid_subsets=10)
    assert set(out) == {"fd_facenet", "kid_facenet", "kid_facenet_std", "precision", "recall", "density",
                        "coverage", "fd_eigenfaces", "sharpness_ratio", "texture_outliers", "spectral_distance",
                        "feature_net_hash", "num_samples", "num_real"}
    assert out["feature_net_hash"] == net.hash and out["num_samples"] == HALF and out["num_real"] == HALF
    assert out["fd_facenet"] == pytest.approx(frechet_distance(extract_features(net, faces["a"]),
                                                               extract_features(net, fake)), rel=1e-9)
    with_recon = compute_metrics(faces["b"][:20], faces["a"][:20], net, recon01=faces["b"][:20],
                                 real_for_recon01=faces["b"][:20], kid_subsets=3)
    assert {"recon_mse", "recon_psnr", "recon_ssim", "recon_feature_distance"} <= set(with_recon)
    assert with_recon["recon_mse"] == 0 and with_recon["num_samples"] == 20  # 20 images: KID capped
    with pytest.raises(ValueError, match="both"):
        compute_metrics(fake, faces["a"], net, recon01=fake)


def test_a_real_cache_reuses_the_real_side_and_changes_no_number(net, faces, monkeypatch):
    import facegen.metrics as metrics

    fake1, fake2 = blur(faces["b"], 1), faces["b"]
    fresh = [compute_metrics(f, faces["a"], net, kid_subsets=5) for f in (fake1, fake2)]
    calls = []
    real_extract = metrics.extract_features
    monkeypatch.setattr(metrics, "extract_features", lambda n, x, *a, **kw: calls.append(len(x)) or real_extract(n, x, *a, **kw))
    monkeypatch.setattr(metrics, "eigenfaces", lambda *a, **kw: calls.append("pca") or eigenfaces(*a, **kw))
    cache: dict = {}
    cached = [compute_metrics(f, faces["a"], net, kid_subsets=5, real_cache=cache) for f in (fake1, fake2)]
    assert cached == fresh
    assert calls == [len(fake1), len(faces["a"]), "pca", len(fake2)]   # the real side once


def test_quick_metrics_subsamples_and_agrees_in_direction(net, faces):
    good = quick_metrics(faces["b"], faces["a"], net, max_samples=300, kid_subsets=5)
    bad = quick_metrics(blur(faces["b"], 2), faces["a"], net, max_samples=300, kid_subsets=5)
    print("quick metrics, real halves:", good, "sigma 2:", bad)
    assert set(good) == {"fd_facenet", "kid_facenet", "sharpness_ratio", "precision", "recall", "feature_net_hash"}
    assert good["fd_facenet"] < bad["fd_facenet"] and good["kid_facenet"] < bad["kid_facenet"]
    assert bad["sharpness_ratio"] < 0.7 * good["sharpness_ratio"]
    assert quick_metrics(faces["b"], faces["a"], net, max_samples=300, kid_subsets=5) == good
    full = compute_metrics(faces["b"][:300], faces["a"][:300], net, kid_subsets=5)
    assert good["fd_facenet"] != full["fd_facenet"]  # a random 300 of each, not the first 300


def _pool_net(seed: int) -> torch.nn.Module:
    """A tiny fixed feature net: 4x4 average pool then a seeded linear map (its own weights hash)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(16, 6))


def test_compute_and_quick_metrics_pass_real_and_fake_to_the_right_side():
    """precision is about the samples, recall about the real faces: a sample set that repeats 3 real faces
    has high precision and low recall, whichever way the sets are passed in. compute_metrics also
    honours k and the KID seed, and its real_cache never hands one net's real features to another net."""
    g = torch.Generator().manual_seed(0)
    real = torch.rand(40, 1, 16, 16, generator=g)
    fake = real[[0, 1, 2]].repeat(10, 1, 1, 1) + 0.01 * torch.rand(30, 1, 16, 16, generator=g)
    net, other = _pool_net(0), _pool_net(1)
    f_real, f_fake = extract_features(net, real), extract_features(net, fake)
    expected = precision_recall_density_coverage(f_real, f_fake, k=2)
    assert expected["precision"] > 0.9 and expected["recall"] < 0.3
    cache: dict = {}
    out = compute_metrics(fake, real, net, kid_subsets=3, k=2, seed=5, real_cache=cache)
    assert {key: out[key] for key in expected} == pytest.approx(expected, rel=1e-12)
    assert out["kid_features"] == pytest.approx(kernel_distance(f_real, f_fake, 3, 1000, seed=5)[0], rel=1e-12)
    quick = quick_metrics(fake, real, net, max_samples=100, kid_subsets=3, k=2)   # no subsampling: all 40/30
    assert (quick["precision"], quick["recall"]) == pytest.approx((expected["precision"], expected["recall"]))
    # a second net with the same cache: its own real features, the same numbers as without a cache
    assert compute_metrics(fake, real, other, kid_subsets=3, k=2, real_cache=cache) == \
        compute_metrics(fake, real, other, kid_subsets=3, k=2)


@pytest.mark.slow
def test_fid_inception_from_a_local_weights_file(faces, tmp_path):
    from torchvision.models import inception_v3

    from facegen.metrics import InceptionFeatures

    with torch.random.fork_rng():
        torch.manual_seed(0)
        torch.save(inception_v3(weights=None, aux_logits=True, init_weights=True).state_dict(), tmp_path / "inc.pt")
    inc = InceptionFeatures(tmp_path / "inc.pt")
    f = extract_features(inc, faces["a"][:6], batch_size=3)
    assert f.shape == (6, 2048)
    net = train_feature_net(faces["train"][:32], None, steps=1, batch_size=8, **TINY_NET)
    out = compute_metrics(faces["a"][:8], faces["a"][:8], net, kid_subsets=2, k=2, inception=inc)
    assert out["fid_inception"] == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(FeatureNetError, match="no such InceptionV3"):
        InceptionFeatures(tmp_path / "missing.pt")


def test_eigenface_distance_sees_structure_not_grain(faces):
    """Real halves ~ noisy faces < blurred faces << shuffled tiles < uniform noise; matches a numpy PCA."""
    from facegen.metrics import eigenface_distance
    from facegen.metrics.features import _shuffle_tiles

    a, b = blur(faces["a"], 0), blur(faces["b"], 0)
    g = torch.Generator().manual_seed(0)
    halves = eigenface_distance(b, a)
    grain = eigenface_distance((b + 0.05 * torch.randn(b.shape, generator=g)).clamp(0, 1), a)
    blurred = eigenface_distance(blur(faces["b"], 2), a)
    shuffled = eigenface_distance(_shuffle_tiles(b, 8, g), a)
    noise = eigenface_distance(torch.rand(b.shape, generator=g), a)
    print("eigenface fd halves/grain/blur/shuffled/noise:", halves, grain, blurred, shuffled, noise)
    assert grain < 2 * halves and halves < blurred < shuffled < noise and shuffled > 5 * halves
    # the same number from a plain numpy PCA (SVD of the centred real faces) and scipy's Fréchet
    from scipy import linalg

    ra, fb = a.flatten(1).double().numpy(), b.flatten(1).double().numpy()
    mean = ra.mean(0)
    basis = np.linalg.svd(ra - mean, full_matrices=False)[2][:64].T
    pa, pb = (ra - mean) @ basis, (fb - mean) @ basis
    m1, m2, s1, s2 = pa.mean(0), pb.mean(0), np.cov(pa, rowvar=False), np.cov(pb, rowvar=False)
    ref = float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real))
    assert halves == pytest.approx(ref, rel=1e-3)
