"""Decoders: the reference per-view deconvolution decoder, and a high-resolution pixel path.

The reference decoder sees only the H/p x W/p token grid, upsampled: a water edge or a river
narrower than a patch (8 px = 80 m) can only be guessed. The ``hires`` option adds a shallow
convolution stem on each input view at full resolution, fused with the upsampled token features
before the last layers, so per-pixel backscatter (what a threshold uses) and the encoder's context
reach the logits together. The ``hires-*`` variants are what ``docs/quality.md`` measured against it
(its token path goes flat during a short CPU run: table "Where the logits come from").
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class DecoderSpec:
    """What a named decoder is made of (the name is what configs and run directories record)."""

    pixel_stem: bool  # a full-resolution convolution stem on each view, fused before the last layers
    token_norm: bool = False  # BatchNorm after every layer of the token decoder
    stem_otsu: bool = False  # the stem also sees each band minus its per-tile Otsu level
    stem_context: bool = False  # the stem also sees each band standardised per tile, + dilated layers


DECODER_SPECS: dict[str, DecoderSpec] = {
    "paper": DecoderSpec(pixel_stem=False),
    "hires": DecoderSpec(pixel_stem=True),
    "hires-bn": DecoderSpec(pixel_stem=True, token_norm=True),
    "hires-otsu": DecoderSpec(pixel_stem=True, stem_otsu=True),
    "hires-bn-otsu": DecoderSpec(pixel_stem=True, token_norm=True, stem_otsu=True),
    "hires-context": DecoderSpec(pixel_stem=True, stem_context=True),
}
DECODERS: tuple[str, ...] = tuple(DECODER_SPECS)


def otsu_levels(pixels: Tensor, bins: int = 64) -> Tensor:
    """Per image and band, the Otsu threshold of its values: (B, C, H, W) -> (B, C, 1, 1).

    The split a per-chip threshold uses; computed from a histogram between each image's 1st and 99th
    percentile so that nodata and bright outliers do not stretch the bins.
    """
    b, c = pixels.shape[:2]
    flat = pixels.detach().float().reshape(b * c, -1)
    ordered = flat.sort(dim=1).values  # torch.quantile refuses inputs of whole-scene size
    n = ordered.shape[1]
    lo = ordered[:, int(0.01 * (n - 1)) : int(0.01 * (n - 1)) + 1]
    hi = ordered[:, int(0.99 * (n - 1)) : int(0.99 * (n - 1)) + 1]
    width = (hi - lo).clamp_min(1e-6)
    idx = ((flat - lo) / width * bins).long().clamp(0, bins - 1)
    hist = torch.zeros(b * c, bins, device=flat.device).scatter_add_(1, idx, torch.ones_like(flat))
    centres = (torch.arange(bins, device=flat.device, dtype=flat.dtype) + 0.5) / bins
    weight = hist.cumsum(1)
    mass = (hist * centres).cumsum(1)
    total_w, total_m = weight[:, -1:], mass[:, -1:]
    w1 = total_w - weight
    mean0 = mass / weight.clamp_min(1)
    mean1 = (total_m - mass) / w1.clamp_min(1)
    between = weight * w1 * (mean0 - mean1).square()
    level = (between.argmax(1, keepdim=True).to(flat.dtype) + 1) / bins
    return (lo + level * width).reshape(b, c, 1, 1).to(pixels.dtype)


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

    def __init__(self, in_dim: int, channels: Sequence[int], patch_size: int = 8, norm: bool = False) -> None:
        super().__init__()
        n_up = int(math.log2(patch_size))
        if 2**n_up != patch_size:
            raise ValueError(f"patch size {patch_size} must be a power of two")
        if len(channels) != 2 + n_up:
            raise ValueError(
                f"need {2 + n_up} decoder channel widths for patch {patch_size}, got {len(channels)}"
            )

        def block(layer: nn.Module, width: int) -> list[nn.Module]:
            return [layer, *([nn.BatchNorm2d(width)] if norm else []), nn.ReLU(inplace=True)]

        layers: list[nn.Module] = [
            *block(nn.Conv2d(in_dim, channels[0], 3, padding=1), channels[0]),
            *block(nn.Conv2d(channels[0], channels[1], 3, padding=1), channels[1]),
        ]
        for c_in, c_out in itertools.pairwise(channels[1:]):
            layers += block(nn.ConvTranspose2d(c_in, c_out, 2, stride=2), c_out)
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
    exported graphs all do the same. `otsu` adds each band minus its per-tile Otsu level (the split a
    per-chip threshold makes); `context` adds each band standardised per tile and two dilated layers.
    """

    def __init__(
        self, in_channels: int, channels: int = 16, context: bool = False, otsu: bool = False
    ) -> None:
        super().__init__()
        self.context = context
        self.otsu = otsu
        copies = 2 + int(context) + int(otsu)
        layers: list[nn.Module] = [
            nn.Conv2d(copies * in_channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
        ]
        if context:
            # Dilated layers widen the receptive field from 5 to 17 px: averaging speckle over a
            # neighbourhood is what separates dark water from dark noise on a single look.
            for dilation in (2, 4):
                layers += [
                    nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation),
                    nn.ReLU(inplace=True),
                ]
        self.net = nn.Sequential(*layers)
        self.out_channels = channels

    def forward(self, pixels: Tensor) -> Tensor:
        centred = pixels - pixels.mean(dim=(2, 3), keepdim=True)
        copies = [pixels, centred]
        if self.context:
            spread = centred.square().mean(dim=(2, 3), keepdim=True).add(1e-4).sqrt()
            copies.append(centred / spread)
        if self.otsu:
            copies.append(pixels - otsu_levels(pixels))
        return self.net(torch.cat(copies, dim=1))


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
