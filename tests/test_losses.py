"""Every loss term against an independent formula, and each network's objective as the docs state it.

The trainer tests compare the trainer's gradients with `per_network_losses`' own terms, so a wrong
term (a flipped sign, a lost 1/2, swapped labels) passes them: these pin the terms themselves.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence as torch_kl

from facegen.losses import (VAEGANLoss, VAELoss, bce_reconstruction, discriminator_gan_loss, equilibrium_gate,
                            equilibrium_gate_tensor, feature_reconstruction_loss, generator_gan_loss,
                            kl_divergence, kl_per_dimension, mse_reconstruction)


def _close(value: torch.Tensor, expected: torch.Tensor | float) -> None:
    assert float(value) == pytest.approx(float(expected), rel=1e-5, abs=1e-6)


def test_each_term_matches_an_independent_formula():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    # KL(N(mu, sigma^2) || N(0, 1)): torch.distributions' closed form, summed per image, batch mean
    by_torch = torch_kl(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0))
    _close(kl_divergence(mu, logvar), by_torch.sum(1).mean())
    assert torch.allclose(kl_per_dimension(mu, logvar), by_torch.mean(0), atol=1e-6)
    assert float(kl_divergence(torch.zeros(2, 3), torch.zeros(2, 3))) == 0.0   # the prior itself costs nothing

    x, r = torch.rand(4, 1, 3, 3, generator=g), torch.rand(4, 1, 3, 3, generator=g).clamp(0.05, 0.95)
    # per-image sums, averaged over the batch of 4
    _close(bce_reconstruction(r, x), -(x * r.log() + (1 - x) * (1 - r).log()).sum() / 4)
    _close(mse_reconstruction(r, x), (r - x).pow(2).sum() / 4)
    fa, fb = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    _close(feature_reconstruction_loss(fa, fb), 0.5 * (fa - fb).pow(2).sum() / 4)   # half the squared distance

    real, fake1, fake2 = torch.randn(4, generator=g), torch.randn(4, generator=g), torch.randn(4, generator=g)
    # D: -log D(x) - log(1 - D(f)) per kind of fake; G (non-saturating): -log D(f) per kind
    d = -torch.sigmoid(real).log().mean() - (1 - torch.sigmoid(fake1)).log().mean() - (1 - torch.sigmoid(fake2)).log().mean()
    _close(discriminator_gan_loss(real, fake1, fake2), d)
    _close(generator_gan_loss(fake1, fake2), -torch.sigmoid(fake1).log().mean() - torch.sigmoid(fake2).log().mean())
    # and their directions: D gains by scoring faces higher and fakes lower, G by fakes scoring higher
    assert discriminator_gan_loss(real + 1, fake1 - 1) < discriminator_gan_loss(real, fake1)
    assert generator_gan_loss(fake1 + 1) < generator_gan_loss(fake1)
    # the gate's costs: the discriminator's BCE on real faces (label 1) and on prior samples (label 0)
    costs = VAEGANLoss.gate_costs(real, fake2)
    assert torch.allclose(costs, torch.stack([-torch.sigmoid(real).log().mean(),
                                              -(1 - torch.sigmoid(fake2)).log().mean()]), atol=1e-6)


def _network_inputs(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b = 4
    return {"x": torch.rand(b, 1, 4, 4, generator=g), "recon": torch.rand(b, 1, 4, 4, generator=g),
            "mu": torch.randn(b, 3, generator=g), "logvar": torch.randn(b, 3, generator=g),
            "logits_real": torch.randn(b, generator=g), "logits_recon": torch.randn(b, generator=g),
            "logits_prior": torch.randn(b, generator=g), "feats_real": torch.randn(b, 5, generator=g),
            "feats_recon": torch.randn(b, 5, generator=g)}


@pytest.mark.parametrize("recon_gan", [True, False])
def test_each_networks_objective_is_the_documented_weighted_sum(recon_gan):
    """encoder <- kl_weight KL + L_llike (+ w pixel); decoder <- gamma L_llike (+ w pixel) and, gated,
    L_GAN(G); discriminator <- L_GAN(D); loss.recon_gan=false: reconstructions are no fakes."""
    inp = _network_inputs()
    loss = VAEGANLoss(kl_weight=0.3, gamma=0.05, pixel_weight=2.0, pixel_warmup_steps=10, recon_gan=recon_gan)
    losses, terms = loss.per_network_losses(**inp, step=4)
    kl = kl_divergence(inp["mu"], inp["logvar"])
    llike = feature_reconstruction_loss(inp["feats_real"], inp["feats_recon"])
    pixel = mse_reconstruction(inp["recon"], inp["x"])
    fakes = (inp["logits_recon"], inp["logits_prior"]) if recon_gan else (inp["logits_prior"],)
    w = 2.0 * (1 - 4 / 10)                                  # pixel_weight faded over pixel_warmup_steps
    _close(losses["encoder"], 0.3 * kl + llike + w * pixel)
    _close(losses["decoder"], 0.05 * llike + w * pixel)
    _close(losses["decoder_gan"], generator_gan_loss(*fakes))
    _close(losses["discriminator"], discriminator_gan_loss(inp["logits_real"], *fakes))
    assert set(terms) == {"kl", "feature_reconstruction", "gan_generator", "gan_discriminator", "pixel"}


def test_pixel_weight_fades_out_over_its_warmup_and_the_vae_objective_weighs_kl():
    loss = VAEGANLoss(pixel_weight=1.0, pixel_warmup_steps=10)
    assert [loss.pixel_factor(s) for s in (0, 2, 10, 50)] == pytest.approx([1.0, 0.8, 0.0, 0.0])
    assert VAEGANLoss(pixel_weight=0.5).pixel_factor(10**6) == 0.5      # no warm-up: constant
    inp = _network_inputs(2)
    x01, r01 = inp["x"], inp["recon"].clamp(0.05, 0.95)
    for reconstruction, rec in (("bce", bce_reconstruction(r01, x01)), ("mse", mse_reconstruction(r01, x01))):
        terms = VAELoss(kl_weight=0.25, reconstruction=reconstruction).terms(x01, r01, inp["mu"], inp["logvar"])
        _close(terms["total"], rec + 0.25 * kl_divergence(inp["mu"], inp["logvar"]))
        _close(terms["reconstruction"], rec)


def test_host_and_device_gates_agree_exactly_on_the_thresholds():
    """Costs exactly at equilibrium -/+ margin (0.25 and 0.75: exact in float32 and float64) train."""
    for real in (0.25, 0.5, 0.75):
        for fake in (0.25, 0.5, 0.75):
            dec, dis = equilibrium_gate_tensor(torch.tensor([real, fake]), 0.5, 0.25)
            assert equilibrium_gate(real, fake, 0.5, 0.25) == (True, True)
            assert (bool(dec), bool(dis)) == (True, True), (real, fake)
