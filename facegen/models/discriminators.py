"""Discriminators: image -> (real/fake logit, features of a chosen layer).

The features feed the learned-similarity reconstruction loss of the VAE-GAN (Dis_l in the paper).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from facegen.models.blocks import Blur, MinibatchStd, PreActResBlock, check_size


def _sn(module: nn.Module, spectral: bool) -> nn.Module:
    return nn.utils.spectral_norm(module) if spectral else module


class DCGANDiscriminator(nn.Module):
    """The paper's discriminator: conv 32 (no BN), then stride-2 convs with BN, FC 512, FC 1.

    Layers are numbered 0..len(widths) (the convs, then the FC 512); `feature_layer` picks one.
    LeakyReLU(0.2) rather than the paper's ReLU: the usual choice for a stable GAN discriminator.
    With `spectral_norm` the BNs are dropped (spectral normalisation takes their role).
    `minibatch_std` (a group size, 0 = off) appends the minibatch standard deviation channel to the
    last conv's output, inside the FC layer, so layer numbers and the features Dis_l sees are unchanged.
    """

    def __init__(self, channels: int = 1, image_size: int = 48,
                 widths: Sequence[int] = (32, 128, 256, 256), kernel_size: int = 5,
                 fc_width: int = 512, spectral_norm: bool = False, strided_kernel_size: int | None = None,
                 blur: bool = False, minibatch_std: int = 0) -> None:
        super().__init__()
        self.channels, self.image_size = channels, image_size
        s = check_size(image_size, len(widths) - 1, "DCGANDiscriminator")
        p = kernel_size // 2
        # the stride-2 convs' kernel: an odd one overlaps unevenly, so the gradient it sends the decoder
        # has a checkerboard pattern (Odena et al. 2016); a kernel divisible by the stride does not
        ks = int(strided_kernel_size or kernel_size)
        ps = (ks - 1) // 2                                  # halves the size for even and odd kernels
        layers = [nn.Sequential(_sn(nn.Conv2d(channels, widths[0], kernel_size, padding=p), spectral_norm),
                                nn.LeakyReLU(0.2))]
        cin = widths[0]
        for w in widths[1:]:
            norm = nn.Identity() if spectral_norm else nn.BatchNorm2d(w)
            conv = _sn(nn.Conv2d(cin, w, ks, stride=2, padding=ps, bias=spectral_norm), spectral_norm)
            # blur: a fixed low-pass before each stride-2 conv (anti-aliased downsampling, as in
            # StyleGAN2's discriminator): the gradient the decoder receives through the stride loses
            # its period-2 pattern (the activations' masks still bring some back)
            layers.append(nn.Sequential(Blur(cin), conv, norm, nn.LeakyReLU(0.2)) if blur
                          else nn.Sequential(conv, norm, nn.LeakyReLU(0.2)))
            cin = w
        fc_norm = nn.Identity() if spectral_norm else nn.BatchNorm1d(fc_width)
        mbstd = [MinibatchStd(minibatch_std)] if minibatch_std else []
        layers.append(nn.Sequential(*mbstd, nn.Flatten(),
                                    _sn(nn.Linear((cin + bool(mbstd)) * s * s, fc_width), spectral_norm),
                                    fc_norm, nn.LeakyReLU(0.2)))
        self.layers = nn.ModuleList(layers)
        self.head = _sn(nn.Linear(fc_width, 1), spectral_norm)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def default_feature_layer(self) -> int:
        """The last conv layer (before the FC), the paper's choice of Dis_l."""
        return len(self.layers) - 2

    def forward(self, x: torch.Tensor, feature_layer: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        feats = None
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i == feature_layer:
                feats = x
        return self.head(x).squeeze(1), feats


class ResNetDiscriminator(nn.Module):
    """Residual blocks (no BN, LeakyReLU), each halving the resolution, then FC 1.

    Layers are numbered 0..len(widths)-1 (the blocks); `feature_layer` picks one.
    `minibatch_std` (a group size, 0 = off): the minibatch standard deviation channel before the head.
    """

    def __init__(self, channels: int = 1, image_size: int = 48,
                 widths: Sequence[int] = (32, 64, 128), spectral_norm: bool = False,
                 minibatch_std: int = 0) -> None:
        super().__init__()
        self.channels, self.image_size = channels, image_size
        s = check_size(image_size, len(widths), "ResNetDiscriminator")
        self.stem = _sn(nn.Conv2d(channels, widths[0], 3, padding=1), spectral_norm)
        blocks, cin = [], widths[0]
        for w in widths:
            blocks.append(PreActResBlock(cin, w, resample="down", norm=False, spectral=spectral_norm))
            cin = w
        self.layers = nn.ModuleList(blocks)
        mbstd = [MinibatchStd(minibatch_std)] if minibatch_std else []
        self.head = nn.Sequential(nn.LeakyReLU(0.2), *mbstd, nn.Flatten(),
                                  _sn(nn.Linear((cin + bool(mbstd)) * s * s, 1), spectral_norm))

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def default_feature_layer(self) -> int:
        """The last residual block, the deepest spatial features."""
        return len(self.layers) - 1

    def forward(self, x: torch.Tensor, feature_layer: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.stem(x)
        feats = None
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i == feature_layer:
                feats = x
        return self.head(x).squeeze(1), feats
