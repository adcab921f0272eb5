"""Decoders: z -> image. Each declares `output_range`, the interval its images live in."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from facegen.models.blocks import PreActResBlock, Upsample2x, check_size


class DCGANDecoder(nn.Module):
    """The paper's decoder: FC to widths[0] x s x s, stride-2 upsampling + BN + ReLU, conv, tanh."""

    output_range = (-1.0, 1.0)

    def __init__(self, latent_dim: int, channels: int = 1, image_size: int = 48,
                 widths: Sequence[int] = (256, 128, 32), kernel_size: int = 5,
                 upsample: str = "transpose") -> None:
        super().__init__()
        self.latent_dim, self.channels, self.image_size = latent_dim, channels, image_size
        self.s = check_size(image_size, len(widths), "DCGANDecoder")
        self.w0 = widths[0]
        self.fc = nn.Sequential(nn.Linear(latent_dim, widths[0] * self.s * self.s, bias=False),
                                nn.BatchNorm1d(widths[0] * self.s * self.s), nn.ReLU())
        layers, cin = [], widths[0]
        for w in widths:
            layers += [Upsample2x(cin, w, upsample, kernel_size), nn.BatchNorm2d(w), nn.ReLU()]
            cin = w
        layers += [nn.Conv2d(cin, channels, kernel_size, padding=kernel_size // 2), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(-1, self.w0, self.s, self.s))


class ResNetDecoder(nn.Module):
    """FC to widths[0] x s x s, pre-activation residual blocks that double the resolution, tanh."""

    output_range = (-1.0, 1.0)

    def __init__(self, latent_dim: int, channels: int = 1, image_size: int = 48,
                 widths: Sequence[int] = (128, 64, 32)) -> None:
        super().__init__()
        self.latent_dim, self.channels, self.image_size = latent_dim, channels, image_size
        self.s = check_size(image_size, len(widths), "ResNetDecoder")
        self.w0 = widths[0]
        self.fc = nn.Linear(latent_dim, widths[0] * self.s * self.s)
        blocks, cin = [], widths[0]
        for w in widths:
            blocks.append(PreActResBlock(cin, w, resample="up"))
            cin = w
        blocks += [nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, channels, 3, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(-1, self.w0, self.s, self.s))


class SeedDecoder(nn.Module):
    """The seed project's VAE_v1 decoder, layer for layer, with its state-dict key names.

    Keys: decoder_input (Linear), decoder.{i}.0 (ConvTranspose2d k3 s2 p1 op1), decoder.{i}.1
    (BatchNorm2d), final_layer.0 (Conv2d k3 p1) followed by a sigmoid: images in [0, 1].
    """

    output_range = (0.0, 1.0)

    def __init__(self, latent_dim: int = 20, channels: int = 1, image_size: int = 48,
                 hidden_dims: Sequence[int] = (64, 64, 32)) -> None:
        super().__init__()
        self.latent_dim, self.channels, self.image_size = latent_dim, channels, image_size
        self.s = check_size(image_size, len(hidden_dims), "SeedDecoder")
        self.w0 = hidden_dims[0]
        self.decoder_input = nn.Linear(latent_dim, hidden_dims[0] * self.s * self.s)
        blocks, cin = [], hidden_dims[0]
        for h in hidden_dims:
            blocks.append(nn.Sequential(
                nn.ConvTranspose2d(cin, h, 3, stride=2, padding=1, output_padding=1),
                nn.BatchNorm2d(h), nn.LeakyReLU(0.01)))
            cin = h
        self.decoder = nn.Sequential(*blocks)
        self.final_layer = nn.Sequential(nn.Conv2d(cin, channels, 3, padding=1), nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.decoder_input(z).view(-1, self.w0, self.s, self.s)
        return self.final_layer(self.decoder(h))
