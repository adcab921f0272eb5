"""The networks: shapes for every family and size, the one interface, and the seed's VAE_v1 1:1."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

import facegen
from facegen.checkpoint import CheckpointError, read_checkpoint, seed_model_config, split_seed_state_dict
from facegen.models import build_model
from tests.conftest import SEED_CKPT, compose_config


@pytest.mark.parametrize("preset", ["dcgan", "resnet", "seed_vae"])
@pytest.mark.parametrize("size,channels", [(48, 1), (64, 3)])
def test_every_preset_builds_and_keeps_shapes(preset, size, channels):
    if preset == "seed_vae" and size == 64:
        size = 64  # the seed layout generalises: 64 -> 8 after three halvings
    cfg = compose_config("train", [f"model={preset}", f"data.image_size={size}", f"data.channels={channels}"])
    model = build_model(cfg.model).eval()
    x = torch.rand(2, channels, size, size)
    mu, logvar = model.encode(model.from_unit(x))
    assert mu.shape == logvar.shape == (2, cfg.model.latent_dim)
    out = model.decode(mu)
    lo, hi = model.output_range
    assert out.shape == x.shape and out.min() >= lo and out.max() <= hi
    logits, feats = model.discriminator(out, 1)
    assert logits.shape == (2,) and feats is not None and feats.shape[0] == 2
    assert model.sample(3).shape == (3, channels, size, size)
    assert model.reconstruct(model.from_unit(x)).shape == x.shape
    unit = model.to_unit(out)
    assert unit.min() >= 0 and unit.max() <= 1


def _nyquist_energy(x: torch.Tensor) -> float:
    """Mean power of the period-2 pattern of each map's interior (the checkerboard's frequency)."""
    x = x.detach()[..., 2:-2, 2:-2]
    sign = (torch.arange(x.shape[-2])[:, None] + torch.arange(x.shape[-1])[None, :]) % 2 * 2 - 1
    return float(((x - x.mean(dim=(-2, -1), keepdim=True)) * sign).mean(dim=(-2, -1)).pow(2).mean())


@pytest.mark.parametrize("mode", ["transpose", "transpose_blur", "resize"])
def test_upsampling_modes_double_the_size_and_blur_removes_the_grid(mode):
    from facegen.models.blocks import Upsample2x

    torch.manual_seed(0)
    up = Upsample2x(8, 6, mode, kernel_size=3)
    for p in up.parameters():      # four phase-dependent kernels, as a GAN can make them
        nn.init.normal_(p)
    x = torch.ones(2, 8, 12, 12)   # a flat input: any grid in the output is the layer's own
    y = up(x)
    assert y.shape == (2, 6, 24, 24)
    grid = _nyquist_energy(y)
    if mode == "transpose":
        assert grid > 1.0
    else:
        assert grid < 1e-10
    y.sum().backward()             # the fixed filter has no parameters but passes gradients
    assert all(p.grad is not None for p in up.parameters())
    assert [n for n, _ in up.named_parameters()] == (["body.0.weight"] if mode == "transpose_blur" else
                                                      ["body.weight"] if mode == "transpose" else ["body.1.weight"])


@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("channels_last", [False, True])
def test_resize_conv_on_the_small_image_equals_resize_then_conv(k, channels_last):
    from facegen.models.blocks import Upsample2x, resize_conv

    torch.manual_seed(k)
    x = torch.randn(3, 5, 7, 6, dtype=torch.float64)   # odd, non-square sizes: the borders are checked too
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    w = torch.randn(4, 5, k, k, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(3, 4, 14, 12, dtype=torch.float64)
    ref = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, b, padding=k // 2)
    ref_grads = torch.autograd.grad(ref, (x, w, b), grad_out)
    out = resize_conv(x, w, b)
    grads = torch.autograd.grad(out, (x, w, b), grad_out)
    assert out.shape == ref.shape
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # the decoder's layer takes this path and keeps its parameters (checkpoints load as before)
    up = Upsample2x(5, 4, "resize", kernel_size=k).double()
    torch.testing.assert_close(up(x), up.body(x), rtol=1e-12, atol=1e-12)
    assert [n for n, _ in up.named_parameters()] == ["body.1.weight"]


def test_single_network_override_mixes_families():
    cfg = compose_config("train", ["model=dcgan", "model/discriminator=resnet"])
    model = build_model(cfg.model)
    assert type(model.encoder).__name__ == "DCGANEncoder"
    assert type(model.discriminator).__name__ == "ResNetDiscriminator"


def test_uint8_conversion_round_trips_per_output_range():
    u8 = torch.arange(0, 256, dtype=torch.uint8).view(1, 1, 16, 16)
    for preset in ("dcgan", "seed_vae"):
        model = build_model(compose_config("train", [f"model={preset}"]).model, with_discriminator=False)
        x = model.from_uint8(u8)
        lo, hi = model.output_range
        assert x.min().item() == pytest.approx(lo) and x.max().item() == pytest.approx(hi)
        assert torch.allclose(model.to_unit(x) * 255, u8.float(), atol=1e-3)


def test_odd_image_size_is_refused_with_a_clear_message():
    cfg = compose_config("train", ["data.image_size=50"])
    with pytest.raises(Exception, match="not divisible"):
        instantiate(cfg.model.encoder)


@pytest.mark.skipif(not SEED_CKPT.exists(), reason="seed checkpoint not present")
def test_seed_state_dict_loads_one_to_one_with_unchanged_key_names():
    raw = read_checkpoint(SEED_CKPT)
    cfg = compose_config("train", ["model=seed_vae"])
    model = build_model(cfg.model, with_discriminator=False)
    enc, dec = split_seed_state_dict(raw)
    assert set(enc) == set(model.encoder.state_dict()) and set(dec) == set(model.decoder.state_dict())
    assert len(enc) + len(dec) == len(raw)
    loaded = facegen.load_model(SEED_CKPT)
    assert loaded.latent_dim == 20 and not loaded.training
    for k, v in raw.items():
        owner = loaded.encoder if k in enc else loaded.decoder
        assert torch.equal(owner.state_dict()[k], v), k
    assert seed_model_config(raw)["encoder"]["hidden_dims"] == [32, 64, 64]


@pytest.mark.skipif(not SEED_CKPT.exists(), reason="seed checkpoint not present")
def test_seed_state_dict_into_the_wrong_model_lists_mismatched_keys():
    cfg = compose_config("train", ["model=dcgan"])
    with pytest.raises(CheckpointError, match=r"(?s)do not fit.*missing keys.*model=seed_vae"):
        facegen.load_model(SEED_CKPT, model_cfg=cfg.model)


@pytest.mark.parametrize("strided", ["null", "4", "3"])
def test_discriminator_returns_the_chosen_layer(strided):
    cfg = compose_config("train", ["model=dcgan", f"model.discriminator.strided_kernel_size={strided}"])
    dis = build_model(cfg.model).discriminator.eval()
    x = torch.rand(2, 1, 48, 48)
    shapes = [tuple(dis(x, i)[1].shape) for i in range(dis.num_layers)]
    assert shapes == [(2, 16, 48, 48), (2, 32, 24, 24), (2, 32, 12, 12), (2, 32, 6, 6), (2, 128)]
    assert dis(x, None)[1] is None
    assert isinstance(dis.layers[0][0], nn.Conv2d)
    assert dis.layers[0][0].kernel_size == (5, 5)
    assert dis.layers[1][0].kernel_size == ((5, 5) if strided == "null" else (int(strided),) * 2)


def test_each_discriminator_names_its_default_feature_layer():
    """loss.feature_layer=null picks it: the paper's last conv for dcgan, the last block for resnet."""
    for preset, layer in (("dcgan", 3), ("resnet", 2)):
        dis = build_model(compose_config("train", [f"model={preset}"]).model).discriminator
        assert dis.default_feature_layer == layer and dis.default_feature_layer < dis.num_layers


def _axis_nyquist_fraction(g: torch.Tensor) -> float:
    """Share of a map's interior energy in the period-2 pattern along rows or along columns (fx or fy = 1/2)."""
    g = g.detach()[..., 8:-8, 8:-8].double()
    h, w = g.shape[-2:]
    sx = (torch.arange(w) % 2 * 2 - 1).double()
    sy = (torch.arange(h) % 2 * 2 - 1).double()[:, None]
    along_x = (g * sx).sum(-1).pow(2).sum(-1) / w     # each row's energy in its (-1)^x component
    along_y = (g * sy).sum(-2).pow(2).sum(-1) / h
    return float(((along_x + along_y) / g.pow(2).sum(dim=(-2, -1))).mean())


def test_discriminator_blur_keeps_the_layers_and_sends_less_period_2_gradient():
    """model.discriminator.blur: anti-aliased stride-2 convs (a fixed low-pass before each): the same
    layers, parameters and feature shapes, and a fraction of the period-2 content in the gradient the
    decoder gets (without it, about white noise's share; what is left comes from the activations'
    masks, which no fixed filter removes)."""
    share, params = {}, {}
    for blur in (False, True):
        cfg = compose_config("train", ["model=dcgan", "model.discriminator.kernel_size=3",
                                       f"model.discriminator.blur={str(blur).lower()}"])
        torch.manual_seed(0)
        dis = build_model(cfg.model).discriminator.eval()
        assert [tuple(dis(torch.rand(2, 1, 48, 48), i)[1].shape) for i in range(dis.num_layers)] == \
            [(2, 16, 48, 48), (2, 32, 24, 24), (2, 32, 12, 12), (2, 32, 6, 6), (2, 128)]
        x = torch.rand(8, 1, 48, 48, requires_grad=True)
        dis(x)[0].sum().backward()
        share[blur] = _axis_nyquist_fraction(x.grad)
        params[blur] = sum(p.numel() for p in dis.parameters())
    assert params[False] == params[True]          # the filter has no parameters
    assert share[False] > 0.04 and share[True] < 0.35 * share[False], share


def test_minibatch_std_measures_each_groups_spread_and_keeps_kinds_apart():
    """MinibatchStd (ProGAN): one extra channel, constant per group of consecutive images, equal to
    the features' mean standard deviation over the group: 0 for a group of one image repeated."""
    from facegen.models.blocks import MinibatchStd
    torch.manual_seed(0)
    varied = torch.randn(4, 3, 5, 5)
    repeated = varied[:1].expand(4, 3, 5, 5)
    out = MinibatchStd(4)(torch.cat([varied, repeated]))            # two groups: the kinds stay apart
    assert out.shape == (8, 4, 5, 5) and torch.equal(out[:, :3], torch.cat([varied, repeated]))
    expected = varied.var(dim=0, unbiased=False).add(1e-8).sqrt().mean()
    assert torch.allclose(out[:4, 3], expected.expand(4, 5, 5), atol=1e-6)
    assert out[4:, 3].abs().max() < 1e-3                              # a repeated pattern shows as ~0
    # the group is the largest divisor of the batch up to the size asked: 6 images -> groups of 3
    six = MinibatchStd(4)(torch.cat([varied[:3], repeated[:3]]))
    assert six[:3, 3].min() > 0.5 and six[3:, 3].abs().max() < 1e-3
    assert MinibatchStd(4)(varied[:1])[:, 3].abs().max() == 0         # one image: no spread, no error
    with pytest.raises(ValueError, match="group_size=1"):
        MinibatchStd(1)


@pytest.mark.parametrize("preset", ["dcgan", "resnet"])
def test_discriminator_minibatch_std_option_sees_repetition_and_keeps_features(preset):
    """model.discriminator.minibatch_std=4: same layers and Dis_l features as without it (the channel
    joins at the head), and the logit now depends on the rest of the group: a face among copies of
    itself scores differently than among other faces; off, it does not."""
    logit_moves = {}
    for g in (0, 4):
        cfg = compose_config("train", [f"model={preset}", f"model.discriminator.minibatch_std={g}"])
        torch.manual_seed(0)
        dis = instantiate(cfg.model.discriminator).eval()
        x = torch.rand(4, 1, 48, 48)
        layer = dis.default_feature_layer
        with torch.no_grad():
            logits, feats = dis(x, layer)
            same_logits, same_feats = dis(x[:1].expand(4, 1, 48, 48), layer)
        assert dis.num_layers == (5 if preset == "dcgan" else 3) and feats.shape[0] == 4
        assert torch.allclose(feats[0], same_feats[0], atol=1e-5)   # features: per image either way
        logit_moves[g] = float((logits[0] - same_logits[0]).abs())
    assert logit_moves[0] < 1e-5 < logit_moves[4]


def test_standing_statistics_are_the_exact_average_over_prior_batches():
    """The decoder's norms end with the plain average of their batch statistics over `batches` prior
    batches (checked exactly at the first norm, whose inputs do not depend on the others), the same
    statistics for the same seed, and nothing else changed: weights, momenta, modes, the global RNG."""
    from facegen.models import standing_statistics

    cfg = compose_config("train", ["model=dcgan", "data.image_size=32", "data.channels=1",
                                   "model.latent_dim=8"])
    model = build_model(cfg.model, with_discriminator=False)
    dec = model.decoder.train()
    for _ in range(3):  # running statistics of some other mixture, as training leaves them
        dec(torch.randn(8, 8) * 3 + 1)
    weights = {k: v.clone() for k, v in dec.state_dict().items() if "running" not in k and "tracked" not in k}
    norms = [m for m in dec.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    first_in = dec.fc[0]                    # Linear, then the first norm
    rng = torch.get_rng_state()
    assert standing_statistics(dec, 8, batches=3, batch_size=16, seed=5) == len(norms)
    assert torch.equal(torch.get_rng_state(), rng)
    assert dec.training and all(m.training for m in norms) and all(m.momentum == 0.1 for m in norms)
    for k, v in weights.items():
        assert torch.equal(dec.state_dict()[k], v), k
    z = torch.randn(48, 8, generator=torch.Generator().manual_seed(5)).view(3, 16, 8)
    with torch.no_grad():
        h = first_in(z)                     # [3, 16, features]
    torch.testing.assert_close(norms[0].running_mean, h.mean(1).mean(0))
    torch.testing.assert_close(norms[0].running_var, h.var(1, unbiased=True).mean(0))
    assert all(int(m.num_batches_tracked) == 3 for m in norms)
    first = {k: v.clone() for k, v in dec.state_dict().items()}
    standing_statistics(dec, 8, batches=3, batch_size=16, seed=5)
    for k, v in dec.state_dict().items():
        assert torch.equal(v, first[k]), k
    # in eval mode, prior samples now meet statistics of their own kind: the first norm standardises
    # them, which the statistics of the other mixture (inputs 3 z + 1) did not
    standing_statistics(dec, 8, batches=64, batch_size=64, seed=6)
    dec.eval()
    with torch.no_grad():
        out = norms[0](first_in(torch.randn(4096, 8)))
    assert out.mean(0).abs().max() < 0.15 and (out.var(0) - 1).abs().max() < 0.25
