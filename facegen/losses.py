"""Every loss term in one place, each a small pure function, and the two objectives built from them.

The VAE-GAN objective follows Larsen et al. 2015 ("Autoencoding beyond pixels"):
    encoder       <- kl_weight * KL + L_llike(Dis_l)            (+ pixel_weight * pixel term)
    decoder       <- gamma * L_llike(Dis_l) + L_GAN(generator)  (+ pixel_weight * pixel term)
    discriminator <- L_GAN(discriminator)
`per_network_losses` returns one scalar per network; the trainer back-propagates each into its own
network's parameters only, so no network is stepped with another network's objective.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from facegen.utils import ConfigError


# -- terms ---------------------------------------------------------------------------------------
def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over latent dims, averaged over the batch."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(1).mean()


def kl_per_dimension(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean KL of each latent dimension: how much the model uses it (for traversal order)."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).mean(0)


def bce_reconstruction(recon01: torch.Tensor, target01: torch.Tensor) -> torch.Tensor:
    """Per-image summed binary cross-entropy, averaged over the batch (the seed's reconstruction)."""
    with torch.autocast(recon01.device.type, enabled=False):  # BCE is unsafe under autocast
        return F.binary_cross_entropy(recon01.float(), target01.float(), reduction="sum") / recon01.shape[0]


def mse_reconstruction(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image summed squared error, averaged over the batch (Gaussian likelihood in pixels)."""
    return (recon.float() - target.float()).pow(2).flatten(1).sum(1).mean()


def feature_reconstruction_loss(feats_real: torch.Tensor, feats_recon: torch.Tensor) -> torch.Tensor:
    """The learned-similarity term L_llike^Dis_l: a Gaussian likelihood in the discriminator's
    feature space, i.e. half the squared distance, summed per image, averaged over the batch."""
    return 0.5 * (feats_recon.float() - feats_real.float()).pow(2).flatten(1).sum(1).mean()


def discriminator_gan_loss(real_logits: torch.Tensor, *fake_logits: torch.Tensor) -> torch.Tensor:
    """-log D(x) - sum_f log(1 - D(f)): real faces are 1, each kind of generated face 0."""
    loss = F.binary_cross_entropy_with_logits(real_logits.float(), torch.ones_like(real_logits, dtype=torch.float))
    for logits in fake_logits:
        loss = loss + F.binary_cross_entropy_with_logits(logits.float(), torch.zeros_like(logits, dtype=torch.float))
    return loss


def generator_gan_loss(*fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: -sum_f log D(f)."""
    loss = fake_logits[0].new_zeros((), dtype=torch.float)
    for logits in fake_logits:
        loss = loss + F.binary_cross_entropy_with_logits(logits.float(), torch.ones_like(logits, dtype=torch.float))
    return loss


def r1_penalty(real_logits: torch.Tensor, real_inputs: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): the squared norm of the discriminator's gradient at real faces,
    per image, averaged; differentiable (create_graph), so the discriminator can be trained on it."""
    grad, = torch.autograd.grad(real_logits.float().sum(), real_inputs, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


def equilibrium_gate(real_cost: float, fake_cost: float, equilibrium: float, margin: float) -> tuple[bool, bool]:
    """The paper's gate, as in its code: returns (train_decoder_gan, train_discriminator).

    The discriminator rests when it is too strong (a cost below equilibrium - margin); the decoder's
    GAN update rests when it is too weak (a cost above equilibrium + margin); never both.
    """
    train_dis = not (real_cost < equilibrium - margin or fake_cost < equilibrium - margin)
    train_dec = not (real_cost > equilibrium + margin or fake_cost > equilibrium + margin)
    if not (train_dis or train_dec):
        train_dis = train_dec = True
    return train_dec, train_dis


def equilibrium_gate_tensor(costs: torch.Tensor, equilibrium: float, margin: float
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`equilibrium_gate` on the device, from ``costs = [real_cost, fake_cost]``: two float 0/1
    tensors (train_decoder_gan, train_discriminator), with no host sync (the CUDA fast path)."""
    train_dis = (costs >= equilibrium - margin).all()
    train_dec = (costs <= equilibrium + margin).all()
    neither = ~(train_dis | train_dec)
    return (train_dec | neither).float(), (train_dis | neither).float()


# -- objectives ----------------------------------------------------------------------------------
@dataclass
class VAELoss:
    """The seed's ELBO: per-image summed BCE (or MSE) + kl_weight * KL. No discriminator."""

    kl_weight: float = 1.0
    reconstruction: str = "bce"

    needs_discriminator = False

    def __post_init__(self) -> None:
        if self.reconstruction not in ("bce", "mse"):
            raise ConfigError(f"loss.reconstruction must be 'bce' or 'mse', got {self.reconstruction!r}")

    def terms(self, x01: torch.Tensor, recon01: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
              ) -> dict[str, torch.Tensor]:
        rec = bce_reconstruction(recon01, x01) if self.reconstruction == "bce" else mse_reconstruction(recon01, x01)
        kl = kl_divergence(mu, logvar)
        return {"reconstruction": rec, "kl": kl, "total": rec + self.kl_weight * kl}


@dataclass
class VAEGANLoss:
    """The VAE-GAN objective of Larsen et al. 2015, one scalar per network.

    equilibrium/margin: the paper's gate (equilibrium=null turns it off); pixel_weight: an optional
    pixel MSE term for the encoder and decoder, useful at the start; pixel_warmup_steps fades it out.
    vae_warmup_steps: the first steps train the encoder and decoder as a plain VAE (the seed's
    BCE + kl_weight * KL, no discriminator: cheaper steps that learn faces), then the GAN takes over.
    instance_noise: the standard deviation of Gaussian noise added to every image the discriminator
    sees (Sønderby et al. 2016), faded to 0 over instance_noise_steps (0: constant); a face and its
    reconstruction get the same noise, so the feature reconstruction still compares like with like.
    r1_weight: gamma of the R1 gradient penalty on real faces, added to the discriminator's loss as
    gamma / 2 * r1_penalty (a smooth discriminator that a texture cannot fool as easily).
    min_dis_every: the discriminator trains at every step that is a multiple of this, whatever the
    gate says (0: the gate alone decides): a floor under its share of the steps, which the gate
    otherwise lets fall to 1-18% (docs/recipe.md).
    separate_batches: the decoder decodes Enc(x) draws and prior draws as two batches, so batch norm
    normalises prior samples by prior statistics alone, as standing statistics
    (`trainer.standing_stats`) decode them when sampling; False: one batch of both.
    """

    kl_weight: float = 1.0
    gamma: float = 1e-2
    feature_layer: int | None = None
    equilibrium: float | None = 0.68
    margin: float = 0.35
    pixel_weight: float = 0.0
    pixel_warmup_steps: int = 0
    recon_gan: bool = True
    vae_warmup_steps: int = 0
    instance_noise: float = 0.0
    instance_noise_steps: int = 0
    r1_weight: float = 0.0
    min_dis_every: int = 0
    separate_batches: bool = False

    needs_discriminator = True

    def __post_init__(self) -> None:
        self.min_dis_every = int(self.min_dis_every)
        if self.min_dis_every < 0:
            raise ConfigError(f"loss.min_dis_every must be 0 (off) or a number of steps, got {self.min_dis_every}")

    def forces_discriminator(self, step: int) -> bool:
        """Whether training step ``step`` trains the discriminator whatever the gate says."""
        return self.min_dis_every > 0 and step % self.min_dis_every == 0

    def noise_std(self, step: int) -> float:
        """instance_noise at training step ``step``, linearly faded to 0 over instance_noise_steps."""
        if self.instance_noise <= 0 or self.instance_noise_steps <= 0:
            return max(0.0, float(self.instance_noise))
        return float(self.instance_noise) * max(0.0, 1.0 - step / self.instance_noise_steps)

    def in_vae_warmup(self, step: int) -> bool:
        """Whether training step ``step`` (0-based) is a plain VAE step."""
        return step < self.vae_warmup_steps

    def terms(self, x01: torch.Tensor, recon01: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
              ) -> dict[str, torch.Tensor]:
        """The VAE warm-up's objective: the seed's ELBO (per-image BCE + kl_weight * KL)."""
        return VAELoss(kl_weight=self.kl_weight).terms(x01, recon01, mu, logvar)

    def pixel_factor(self, step: int) -> float:
        """pixel_weight, linearly faded to 0 over pixel_warmup_steps (constant when 0)."""
        if self.pixel_weight == 0:
            return 0.0
        if self.pixel_warmup_steps <= 0:
            return float(self.pixel_weight)
        return float(self.pixel_weight) * max(0.0, 1.0 - step / self.pixel_warmup_steps)

    def per_network_losses(self, *, x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor,
                           logvar: torch.Tensor, logits_real: torch.Tensor, logits_recon: torch.Tensor,
                           logits_prior: torch.Tensor, feats_real: torch.Tensor, feats_recon: torch.Tensor,
                           step: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Returns ({encoder, decoder, discriminator, decoder_gan}, {term: value}) tensors."""
        kl = kl_divergence(mu, logvar)
        llike = feature_reconstruction_loss(feats_real.detach(), feats_recon)
        fakes = (logits_recon, logits_prior) if self.recon_gan else (logits_prior,)
        gen = generator_gan_loss(*fakes)
        dis = discriminator_gan_loss(logits_real, *fakes)
        terms = {"kl": kl, "feature_reconstruction": llike, "gan_generator": gen, "gan_discriminator": dis}
        encoder = self.kl_weight * kl + llike
        decoder = self.gamma * llike
        if self.pixel_weight > 0:  # logged for the whole run (fixed keys), used while its weight is > 0
            pixel = terms["pixel"] = mse_reconstruction(recon, x)
            w = self.pixel_factor(step)
            if w > 0:
                encoder = encoder + w * pixel
                decoder = decoder + w * pixel
        losses = {"encoder": encoder, "decoder": decoder, "decoder_gan": gen, "discriminator": dis}
        return losses, terms

    @staticmethod
    def gate_costs(logits_real: torch.Tensor, logits_prior: torch.Tensor) -> torch.Tensor:
        """The two discriminator costs the gate compares: BCE on real faces and on prior samples."""
        real = F.binary_cross_entropy_with_logits(logits_real.float(), torch.ones_like(logits_real, dtype=torch.float))
        fake = F.binary_cross_entropy_with_logits(logits_prior.float(), torch.zeros_like(logits_prior, dtype=torch.float))
        return torch.stack([real, fake]).detach()
