"""Encoders: image (in the decoder's output range) -> (mu, logvar) of q(z|x)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from facegen.models.blocks import PreActResBlock, check_size


class DCGANEncoder(nn.Module):
    """The paper's encoder: 5x5 stride-2 convs + BN + ReLU, then FC to mu and log-variance."""

    def __init__(self, latent_dim: int, channels: int = 1, image_size: int = 48,
                 widths: Sequence[int] = (64, 128, 256), kernel_size: int = 5) -> None:
        super().__init__()
        self.latent_dim, self.channels, self.image_size = latent_dim, channels, image_size
        s = check_size(image_size, len(widths), "DCGANEncoder")
        layers, cin = [], channels
        for w in widths:
            layers += [nn.Conv2d(cin, w, kernel_size, stride=2, padding=kernel_size // 2, bias=False),
                       nn.BatchNorm2d(w), nn.ReLU()]
            cin = w
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.fc_mu = nn.Linear(cin * s * s, latent_dim)
        self.fc_logvar = nn.Linear(cin * s * s, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.fc_mu(h), self.fc_logvar(h)


class ResNetEncoder(nn.Module):
    """Pre-activation residual blocks, each halving the resolution, then FC to mu and log-variance."""

    def __init__(self, latent_dim: int, channels: int = 1, image_size: int = 48,
                 widths: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        self.latent_dim, self.channels, self.image_size = latent_dim, channels, image_size
        s = check_size(image_size, len(widths), "ResNetEncoder")
        blocks, cin = [nn.Conv2d(channels, widths[0], 3, padding=1)], widths[0]
        for w in widths:
            blocks.append(PreActResBlock(cin, w, resample="down"))
            cin = w
        blocks += [nn.BatchNorm2d(cin), nn.ReLU(), nn.Flatten()]
        self.features = nn.Sequential(*blocks)
        self.fc_mu = nn.Linear(cin * s * s, latent_dim)
        self.fc_logvar = nn.Linear(cin * s * s, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.fc_mu(h), self.fc_logvar(h)


class SeedEncoder(nn.Module):
    """The seed project's VAE_v1 encoder, layer for layer, with its state-dict key names.

    Keys: encoder.{i}.0 (Conv2d k3 s2 p1), encoder.{i}.1 (BatchNorm2d), fc_mu, fc_var (log-variance),
    so the seed's VAE_epoch_100.pth loads into it unchanged.
    """

    def __init__(self, latent_dim: int = 20, channels: int = 1, image_size: int = 48,
                 hidden_dims: Sequence[int] = (32, 64, 64)) -> None:
        super().__init__()
        self.latent_dim, self.channels, self.image_size = latent_dim, channels, image_size
        s = check_size(image_size, len(hidden_dims), "SeedEncoder")
        blocks, cin = [], channels
        for h in hidden_dims:
            blocks.append(nn.Sequential(nn.Conv2d(cin, h, 3, stride=2, padding=1),
                                        nn.BatchNorm2d(h), nn.LeakyReLU(0.01)))
            cin = h
        self.encoder = nn.Sequential(*blocks)
        self.fc_mu = nn.Linear(cin * s * s, latent_dim)
        self.fc_var = nn.Linear(cin * s * s, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.flatten(self.encoder(x), 1)
        return self.fc_mu(h), self.fc_var(h)
