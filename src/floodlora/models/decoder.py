"""Decoders: the reference per-view deconvolution decoder, and a high-resolution pixel path.

The reference decoder sees only the H/p x W/p token grid, upsampled: a water edge or a river
narrower than a patch (8 px = 80 m) can only be guessed. The ``hires`` option adds a shallow
convolution stem on each input view at full resolution, fused with the upsampled token features
before the last layers, so per-pixel backscatter (what a threshold uses) and the encoder's context
reach the logits together.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

DECODERS: tuple[str, ...] = ("paper", "hires")


def default_decoder_channels(encoder_dim: int) -> tuple[int, int, int, int, int]:
    """Channel widths (conv1, conv2, up1, up2, up3) sized from the encoder width.

    For the 768-wide Clay v1 base encoder with four views this gives a segmentation head of
    ~8.6M parameters, the size of the reference method's decoder.
    """
    if encoder_dim >= 768:
        return (256, 144, 64, 32, 16)
    return (max(64, encoder_dim // 2), 64, 32, 16, 16)


class ViewDecoder(nn.Module):
    """Two 3x3 convolutions, then one stride-2 transposed convolution per factor of 2 of the patch.

    For patch size 8 this is the reference design: conv, conv, 3 x (ConvTranspose x2), ReLU after
    every layer, from the H/8 x W/8 token grid back to H x W.
    """

    def __init__(self, in_dim: int, channels: Sequence[int], patch_size: int = 8) -> None:
        super().__init__()
        n_up = int(math.log2(patch_size))
        if 2**n_up != patch_size:
            raise ValueError(f"patch size {patch_size} must be a power of two")
        if len(channels) != 2 + n_up:
            raise ValueError(
                f"need {2 + n_up} decoder channel widths for patch {patch_size}, got {len(channels)}"
            )
        layers: list[nn.Module] = [
            nn.Conv2d(in_dim, channels[0], 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels[0], channels[1], 3, padding=1),
            nn.ReLU(inplace=True),
        ]
        for c_in, c_out in itertools.pairwise(channels[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 2, stride=2), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers)
        self.out_channels = channels[-1]

    def forward(self, grid: Tensor) -> Tensor:
        return self.net(grid)


class FusionHead(nn.Module):
    """Concatenate the per-view feature maps and produce flood logits, one channel per output."""

    def __init__(self, n_views: int, channels: int, n_outputs: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(n_views * channels, n_outputs, 3, padding=1)

    def forward(self, features: Tensor) -> Tensor:
        return self.conv(features)


class PixelStem(nn.Module):
    """Two 3x3 convolutions on one normalised input view at full resolution (no downsampling).

    The stem sees each band twice: as normalised, and minus its mean over the tile. The second copy
    is what a per-chip threshold uses (darker than the rest of this chip -> water); it makes the
    pixel path indifferent to one scene's calibration offset (8-bit sources and events differ in
    absolute level). Computed inside the model, so training, evaluation, whole-scene tiles and
    exported graphs all do the same.
    """

    def __init__(self, in_channels: int, channels: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(2 * in_channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.out_channels = channels

    def forward(self, pixels: Tensor) -> Tensor:
        centred = pixels - pixels.mean(dim=(2, 3), keepdim=True)
        return self.net(torch.cat([pixels, centred], dim=1))


class HiResFusionHead(nn.Module):
    """Token-decoder features and pixel-stem features of every view -> 3x3 conv -> 1x1 logits per output."""

    def __init__(
        self, n_views: int, decoder_channels: int, stem_channels: int, n_outputs: int = 1, hidden: int = 32
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(n_views * (decoder_channels + stem_channels), hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, n_outputs, 1),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)
