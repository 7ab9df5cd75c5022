"""The pixel prior's two forms: a logistic term per pixel, and a small MLP over the pixel's context.

The prior is added to the segmentor's logits and fitted with scikit-learn on the training chips
before training (floodlora.training.pixel_prior), so a model starts from a fitted classical rule.

* ``pixel``: a 1x1 convolution on the normalised bands, a fitted threshold.
* ``context``: an MLP per output on features a pixel-level classifier needs on real SAR: each band
  averaged over several neighbourhoods (speckle averages out over a few pixels, a flood plain over
  tens), and each band against its tile's Otsu level and median (8-bit sources are stretched one
  image at a time, so "darker than the rest of this tile" carries across images where an absolute
  level does not). On OMBRIA such a classifier scored well above every network trained for minutes
  (docs/quality.md).
* ``context-quantiles``: the same, plus each band against its tile's 10/25/75/90 % quantiles (the
  shape of the tile's histogram, not just its middle) and its local standard deviation over 5 and
  17 px (open water is smooth, land is speckled and textured). Fitted outside the network on the
  OMBRIA chips these lifted the MLP alone from 70 to 79 F1 on OMBRIA test and from 55 to 78 on
  FRANCE 2021 (docs/quality.md, "The prior's features").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from floodlora.config import PRIOR_FEATURES
from floodlora.models.decoder import otsu_levels

__all__ = [
    "PRIOR_FEATURES",
    "ContextPrior",
    "box_means",
    "build_prior",
    "check_prior_features",
    "context_features",
    "prior_features",
]
CONTEXT_RADII: tuple[int, ...] = (1, 2, 4, 8, 16)  # box-mean neighbourhoods, (2r + 1) px wide
CONTEXT_HIDDEN = 32
TILE_QUANTILES: tuple[float, ...] = (0.10, 0.25, 0.75, 0.90)  # context-quantiles: levels of the tile
TEXTURE_RADII: tuple[int, ...] = (2, 8)  # context-quantiles: local standard deviation, (2r + 1) px


def box_means(x: Tensor, radii: Sequence[int]) -> list[Tensor]:
    """Each pixel's mean over the (2r + 1)-px square around it, clipped to the tile, for each radius.

    Separable running sums: one cumulative sum down the rows serves every radius, and each radius
    adds one along the columns; windows clipped at the tile's edge come from edge-replicated sums,
    so every step is a slice (no gather). The cost per pixel does not grow with the window
    (average pooling's grows with its area: most of the prior's time at r = 16). The tile's mean is
    taken out first so that float32 sums stay exact to about 1e-5 on whole-scene tiles.
    """
    h, w = x.shape[-2:]
    xf = x.float()
    centre = xf.mean(dim=(-2, -1), keepdim=True)
    rows = F.pad(xf - centre, (0, 0, 1, 0)).cumsum(-2)  # [..., h + 1, w]
    ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    out = []
    for r in radii:
        padded = F.pad(rows, (0, 0, r, r), mode="replicate")  # row j holds the sum up to clamp(j - r)
        band = padded[..., 2 * r + 1 : 2 * r + 1 + h, :] - padded[..., :h, :]
        cols = F.pad(F.pad(band, (1, 0)).cumsum(-1), (r, r, 0, 0), mode="replicate")
        total = cols[..., 2 * r + 1 : 2 * r + 1 + w] - cols[..., :w]
        count_y = ((ys + r + 1).clamp(max=h) - (ys - r).clamp(min=0)).float()
        count_x = ((xs + r + 1).clamp(max=w) - (xs - r).clamp(min=0)).float()
        out.append((total / (count_y[:, None] * count_x[None, :]) + centre).to(x.dtype))
    return out


def context_features(
    pixels: Tensor, radii: tuple[int, ...] = CONTEXT_RADII, quantiles: bool = False
) -> Tensor:
    """(B, C, H, W) -> (B, C x n, H, W): each band, its local means, and tile-relative copies.

    Per band (n = len(radii) + 5): the value; its mean over each (2r + 1)-px square; the value and
    its 5-px mean minus the tile's Otsu level; the Otsu level itself (how bright this tile is); the
    value minus the tile's median. With `quantiles` (the context-quantiles form) then, per band, the
    value minus each of the tile's TILE_QUANTILES and its standard deviation over each
    TEXTURE_RADII square (n += 6). One sort serves the median and the quantiles, one set of box
    means the means and the texture. Any tile size works (means ignore the padding).
    """
    x = pixels.float()
    level = otsu_levels(x)
    ordered = x.flatten(2).sort(dim=2).values  # lower quantiles by sorting: ONNX has no median operator
    last = ordered.shape[2] - 1
    extra = tuple(r for r in TEXTURE_RADII if r not in radii) if quantiles else ()
    means = dict(zip(radii + extra, box_means(x, radii + extra), strict=True))
    near = means.get(2, x)
    parts = [x, *(means[r] for r in radii), x - level, near - level, level.expand_as(x)]
    parts.append(x - ordered[..., last // 2, None, None])
    if quantiles:
        parts += [x - ordered[..., int(q * last), None, None] for q in TILE_QUANTILES]
        squares = box_means(x * x, TEXTURE_RADII)
        parts += [
            (sq - means[r] ** 2).clamp_min(0.0).sqrt() for r, sq in zip(TEXTURE_RADII, squares, strict=True)
        ]
    return torch.cat(parts, dim=1).to(pixels.dtype)


class ContextPrior(nn.Module):
    """One small MLP per output over `context_features` (with `quantiles`: the context-quantiles form);
    zero (no effect) until fitted."""

    def __init__(
        self, in_channels: int, n_outputs: int, hidden: int = CONTEXT_HIDDEN, quantiles: bool = False
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.quantiles = quantiles
        per_band = len(CONTEXT_RADII) + 5 + (len(TILE_QUANTILES) + len(TEXTURE_RADII) if quantiles else 0)
        self.n_features = in_channels * per_band
        self.hidden_size = hidden
        self.hidden = nn.Conv2d(self.n_features, hidden * n_outputs, 1)
        self.out = nn.Conv2d(hidden * n_outputs, n_outputs, 1, groups=n_outputs)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def features(self, pixels: Tensor) -> Tensor:
        return context_features(pixels, quantiles=self.quantiles)

    def forward(self, pixels: Tensor) -> Tensor:
        return self.out(torch.relu(self.hidden(self.features(pixels))))

    @torch.no_grad()
    def set_output(
        self, k: int, first: Tensor, first_bias: Tensor, second: Tensor, second_bias: float
    ) -> None:
        """Write output `k`'s fitted MLP: `first` [hidden, n_features], `second` [hidden]."""
        rows = slice(k * self.hidden_size, (k + 1) * self.hidden_size)
        self.hidden.weight[rows, :, 0, 0] = first.to(self.hidden.weight)
        self.hidden.bias[rows] = first_bias.to(self.hidden.bias)
        self.out.weight[k, :, 0, 0] = second.to(self.out.weight)
        self.out.bias[k] = second_bias


def check_prior_features(kind: str) -> None:
    """Refuse an unknown prior form where it is named, not when the prior is first built."""
    if kind not in PRIOR_FEATURES:
        raise ValueError(f"unknown prior_features {kind!r}; choose one of {', '.join(PRIOR_FEATURES)}")


def build_prior(kind: str, in_channels: int, n_outputs: int) -> nn.Module:
    """The prior named `kind`, zero until fitted."""
    check_prior_features(kind)
    if kind == "pixel":
        prior = nn.Conv2d(in_channels, n_outputs, 1)
        nn.init.zeros_(prior.weight)
        nn.init.zeros_(prior.bias)
        return prior
    return ContextPrior(in_channels, n_outputs, quantiles=kind == "context-quantiles")


def prior_features(prior: nn.Module, pixels: Tensor) -> Tensor:
    """What the prior's fitted part sees: the bands themselves, or their context features."""
    return prior.features(pixels) if isinstance(prior, ContextPrior) else pixels
