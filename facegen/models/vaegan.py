"""One model interface for every script: encode, reparameterize, decode, sample, reconstruct.

Images enter and leave the networks in the decoder's `output_range`; `from_uint8` and `to_unit`
are the one place where stored faces become model inputs and model outputs become [0, 1] images.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from facegen.utils import ConfigError


class VAEGAN(nn.Module):
    """Encoder + decoder (+ discriminator when a GAN loss needs one)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module,
                 discriminator: nn.Module | None = None) -> None:
        super().__init__()
        if encoder.latent_dim != decoder.latent_dim:
            raise ConfigError(f"encoder latent_dim {encoder.latent_dim} != decoder latent_dim {decoder.latent_dim}")
        if int(encoder.latent_dim) < 1:   # torch builds zero-size layers without complaint: a decoder that ignores z
            raise ConfigError(f"model.latent_dim={encoder.latent_dim}: the latent size must be at least 1 (e.g. 64)")
        self.encoder = encoder
        self.decoder = decoder
        self.discriminator = discriminator
        self.latent_dim: int = encoder.latent_dim
        self.image_size: int = decoder.image_size
        self.channels: int = decoder.channels

    @property
    def output_range(self) -> tuple[float, float]:
        return tuple(self.decoder.output_range)  # type: ignore[return-value]

    # -- conversions ---------------------------------------------------------------------------
    def from_uint8(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [0, 255] -> float in the model's range (on the images' device)."""
        lo, hi = self.output_range
        return images.float().mul_((hi - lo) / 255.0).add_(lo)

    def from_unit(self, images: torch.Tensor) -> torch.Tensor:
        lo, hi = self.output_range
        return images.float() * (hi - lo) + lo

    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        """Model range -> float32 [0, 1]: what grids, .npy files and metrics receive."""
        lo, hi = self.output_range
        return ((images.float() - lo) / (hi - lo)).clamp_(0.0, 1.0)

    # -- the interface ---------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def prior(self, n: int, device: torch.device | str | None = None, temperature: float = 1.0,
              generator: torch.Generator | None = None) -> torch.Tensor:
        device = device or next(self.decoder.parameters()).device
        return torch.randn(n, self.latent_dim, device=device, generator=generator) * temperature

    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.decode(self.prior(n, temperature=temperature, generator=generator))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Dec(mu(x)): the deterministic reconstruction used for pictures and metrics."""
        return self.decode(self.encode(x)[0])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


@torch.no_grad()
def standing_statistics(decoder: nn.Module, latent_dim: int, batches: int, batch_size: int = 64,
                        seed: int = 0) -> int:
    """Re-estimate the decoder's batch-norm running statistics on prior draws alone ("standing
    statistics", Brock et al. 2019, BigGAN); returns how many norm layers were re-estimated.

    A VAE-GAN step decodes Enc(x) and prior draws in one batch (unless `loss.separate_batches`), so
    the running averages that eval mode uses are those of that mixture, and prior samples decoded
    with them carry its offset: on FER2013 a third of their eigenface Fréchet distance was a shift of
    the mean face (docs/recipe.md). Here the statistics are the exact average over `batches` batches
    of N(0, I) draws at the current weights (momentum None), from a generator of their own: the
    training's random stream is untouched, and the same weights and seed give the same statistics.
    Other layers stay in eval mode.
    """
    norms = [m for m in decoder.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or batches <= 0:
        return 0
    device = next(decoder.parameters()).device
    was_training, momenta = decoder.training, [m.momentum for m in norms]
    generator = torch.Generator().manual_seed(int(seed))
    decoder.eval()
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None   # a cumulative average over the batches below, not an exponential one
            m.train()
        for _ in range(int(batches)):
            decoder(torch.randn(int(batch_size), int(latent_dim), generator=generator).to(device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        decoder.train(was_training)
    return len(norms)


def build_model(model_cfg: Any, with_discriminator: bool = True) -> VAEGAN:
    """Instantiate the three networks of a `model` config (conf/model/*.yaml)."""
    from hydra.utils import instantiate

    encoder = instantiate(model_cfg.encoder)
    decoder = instantiate(model_cfg.decoder)
    discriminator = instantiate(model_cfg.discriminator) if with_discriminator else None
    return VAEGAN(encoder, decoder, discriminator)
