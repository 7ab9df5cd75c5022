"""Shared builders for the inference tests: tiny georeferenced scenes, stub models, tiny runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

UTM33 = "EPSG:32633"


def write_scene(
    path: Path,
    data: np.ndarray,
    crs: str | None = UTM33,
    transform: tuple[float, ...] = (10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0),
    nodata: float | None = float("nan"),
    descriptions: Sequence[str] | None = ("VV", "VH"),
) -> Path:
    """A float32 GeoTIFF `[C, H, W]` with the given georeferencing."""
    import rasterio
    from rasterio.transform import Affine

    profile = {
        "driver": "GTiff",
        "height": data.shape[1],
        "width": data.shape[2],
        "count": data.shape[0],
        "dtype": "float32",
        "transform": Affine(*transform),
    }
    if crs is not None:
        profile["crs"] = crs
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data.astype(np.float32))
        for i, d in enumerate(descriptions or [], start=1):
            ds.set_band_description(i, d)
    return path


def db_scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Plausible dB backscatter `[2, h, w]`: land around -10/-17 dB with a dark (water) disk."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    water = (yy - h * 0.45) ** 2 + (xx - w * 0.55) ** 2 < (min(h, w) * 0.3) ** 2
    vv = np.where(water, -21.0, -9.0) + rng.normal(0, 1.5, (h, w))
    vh = np.where(water, -27.0, -16.0) + rng.normal(0, 1.5, (h, w))
    return np.stack([vv, vh]).astype(np.float32)


class PointwiseModel(nn.Module):
    """A translation-equivariant stand-in segmentor: logits = -2·vv - vh (per pixel, no context)."""

    views = ("pre", "post")
    bands = ("vv", "vh")
    patch_size = 8

    def forward(
        self, views: Mapping[str, Tensor], time: Tensor | None = None, latlon: Tensor | None = None
    ) -> Tensor:
        x = views["post"]
        return -2.0 * x[:, :1] - x[:, 1:2]


class ConvModel(nn.Module):
    """Two 3x3 convolutions (receptive radius 2): stitching must equal one pass over the scene."""

    views = ("post",)
    bands = ("vv", "vh")
    patch_size = 8

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 1, 3, padding=1))

    def forward(
        self, views: Mapping[str, Tensor], time: Tensor | None = None, latlon: Tensor | None = None
    ) -> Tensor:
        return self.net(views["post"])


def make_run(
    run_dir: Path,
    strategy: str = "lora",
    views: Sequence[str] = ("pre", "post"),
    crop: int = 32,
    **model: Any,
) -> Path:
    """A tiny trained-looking run: test-micro encoder, perturbed adapters/decoder, crop size `crop`.

    `model` sets further `ModelConfig` fields (a decoder, a prior).
    """
    from floodlora.config import RunConfig
    from floodlora.models.factory import build_segmentor
    from floodlora.runs import save_run

    cfg = RunConfig()
    cfg.model.checkpoint = "random:test-micro"
    cfg.model.strategy = strategy
    cfg.model.lora_rank = 2
    cfg.data.crop_size = crop
    cfg.data.views = list(views)
    for key, value in model.items():
        setattr(cfg.model, key, value)
    segmentor = build_segmentor(cfg.model, list(views), ["vv", "vh"])
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in segmentor.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    save_run(run_dir, cfg, segmentor)
    return run_dir
