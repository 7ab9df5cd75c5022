"""Sliding-window planning and seam-free blending for whole-scene prediction (pure numpy/torch).

A scene is covered by square tiles of one size (Clay's positional encoding needs square inputs whose
side is a multiple of the patch size). Tiles start every ``tile - overlap`` pixels and the last row
and column of tiles are shifted inward so that every tile lies inside the scene; only a scene smaller
than one tile is padded.

Blending. Each tile's prediction is weighted by a separable window that is 0 on a ``margin`` of
pixels at every edge shared with a neighbouring tile (where the model lacks context), rises smoothly
(raised cosine) across the rest of the overlap, and is 1 elsewhere and on edges that lie on the scene
border. The stitched value is the weighted mean, so the seams are gone by construction and, in the
interior of a tile, the stitched value is exactly that tile's own prediction.

Streaming. Tiles are visited row band by row band; :class:`StripBlender` keeps only the rows that a
later band can still touch (``tile`` rows x scene width) and hands back finished rows to be written.
Memory is therefore bounded by a strip of tiles, not by the scene.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tile:
    """One square window: top-left (row, col) in scene pixels and the edges that touch the scene border."""

    row: int
    col: int
    size: int
    top: bool
    bottom: bool
    left: bool
    right: bool

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.row, self.row + self.size), slice(self.col, self.col + self.size)


@dataclass(frozen=True)
class TilePlan:
    """All tiles of a scene, grouped in row bands (row-major order)."""

    height: int
    width: int
    tile: int
    overlap: int
    margin: int
    rows: tuple[int, ...]
    cols: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    def bands(self) -> Iterator[list[Tile]]:
        """Tiles band by band (all tiles sharing a top row), left to right."""
        for r in self.rows:
            yield [self._tile(r, c) for c in self.cols]

    def __iter__(self) -> Iterator[Tile]:
        for band in self.bands():
            yield from band

    def _tile(self, r: int, c: int) -> Tile:
        t = self.tile
        return Tile(r, c, t, top=r == 0, bottom=r + t >= self.height, left=c == 0, right=c + t >= self.width)


def round_up(x: int, multiple: int) -> int:
    return int(math.ceil(x / multiple) * multiple)


def _positions(length: int, tile: int, stride: int) -> tuple[int, ...]:
    if length <= tile:
        return (0,)
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return tuple(sorted(set(starts)))


def plan_tiles(
    height: int, width: int, tile: int, overlap: int, patch: int = 8, margin: int | None = None
) -> TilePlan:
    """Plan square tiles of side `tile` (shrunk, rounded to `patch`, for scenes smaller than a tile).

    `overlap` is the minimum overlap between neighbouring tiles; `margin` (default overlap // 4) is
    the band at each inner tile edge that gets zero weight.
    """
    if height < 1 or width < 1:
        raise ValueError(f"empty scene {width}x{height} px")
    if tile < patch or tile % patch:
        raise ValueError(f"tile size {tile} must be a positive multiple of the patch size {patch}")
    tile = min(tile, round_up(max(height, width), patch))
    if tile >= height and tile >= width:
        overlap = 0  # one tile covers the scene
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap {overlap} must be in [0, tile size {tile})")
    margin = overlap // 4 if margin is None else margin
    if overlap and not 0 <= 2 * margin < overlap:
        raise ValueError(f"margin {margin} must be less than half the overlap {overlap}")
    stride = tile - overlap
    return TilePlan(
        height,
        width,
        tile,
        overlap,
        margin if overlap else 0,
        _positions(height, tile, stride),
        _positions(width, tile, stride),
    )


def ramp(overlap: int, margin: int) -> np.ndarray:
    """1-D weights for the first `overlap` pixels of an inner edge: `margin` zeros, then a raised cosine.

    Opposite ramps of two neighbours never vanish together (2 * margin < overlap), so the weighted
    mean is defined everywhere.
    """
    if overlap == 0:
        return np.ones(0, dtype=np.float32)
    n = overlap - margin
    t = (np.arange(n, dtype=np.float64) + 0.5) / n
    rise = 0.5 - 0.5 * np.cos(np.pi * t)
    return np.concatenate([np.zeros(margin), rise]).astype(np.float32)


def edge_profile(
    size: int, overlap: int, margin: int, start_on_border: bool, end_on_border: bool
) -> np.ndarray:
    """1-D tile weights along one axis; edges on the scene border keep full weight."""
    w = np.ones(size, dtype=np.float32)
    r = ramp(min(overlap, size), margin)
    if r.size:
        if not start_on_border:
            w[: r.size] = np.minimum(w[: r.size], r)
        if not end_on_border:
            w[size - r.size :] = np.minimum(w[size - r.size :], r[::-1])
    return w


def tile_weights(tile: Tile, plan: TilePlan) -> np.ndarray:
    """2-D blending window `[size, size]` for `tile` (outer product of the two edge profiles)."""
    wy = edge_profile(tile.size, plan.overlap, plan.margin, tile.top, tile.bottom)
    wx = edge_profile(tile.size, plan.overlap, plan.margin, tile.left, tile.right)
    return np.outer(wy, wx)


class StripBlender:
    """Weighted accumulation of tile outputs over one strip of rows; finished rows are released.

    Holds `channels` float32 layers plus a weight sum, each `tile` rows x scene width.
    """

    def __init__(self, plan: TilePlan, channels: int) -> None:
        self.plan = plan
        self.channels = channels
        self.start = 0  # scene row of buffer row 0
        rows = plan.tile
        self.acc = np.zeros((channels, rows, plan.width), dtype=np.float64)
        self.wsum = np.zeros((rows, plan.width), dtype=np.float64)
        self._weights: dict[tuple[bool, bool, bool, bool], np.ndarray] = {}

    def weights(self, tile: Tile) -> np.ndarray:
        key = (tile.top, tile.bottom, tile.left, tile.right)
        if key not in self._weights:
            self._weights[key] = tile_weights(tile, self.plan).astype(np.float64)
        return self._weights[key]

    def add(self, tile: Tile, values: np.ndarray) -> None:
        """Accumulate `values` `[channels, size, size]` for `tile` (the part inside the scene)."""
        r0 = tile.row - self.start
        if r0 < 0:
            raise ValueError(f"tile at row {tile.row} comes after rows up to {self.start} were released")
        h = min(tile.size, self.plan.height - tile.row)
        w = min(tile.size, self.plan.width - tile.col)
        wt = self.weights(tile)[:h, :w]
        cs = slice(tile.col, tile.col + w)
        self.acc[:, r0 : r0 + h, cs] += values[:, :h, :w] * wt
        self.wsum[r0 : r0 + h, cs] += wt

    def release(self, until: int) -> tuple[int, np.ndarray] | None:
        """Blend and hand back scene rows [start, until) as (first row, float32 `[channels, n, width]`)."""
        until = min(until, self.plan.height)
        n = until - self.start
        if n <= 0:
            return None
        wsum = self.wsum[:n]
        if (wsum <= 0).any():  # cannot happen for a valid plan; fail loudly rather than write holes
            raise RuntimeError("blending weights vanish somewhere in the released rows")
        out = (self.acc[:, :n] / wsum).astype(np.float32)
        first = self.start
        self.acc = np.roll(self.acc, -n, axis=1)
        self.wsum = np.roll(self.wsum, -n, axis=0)
        self.acc[:, -n:] = 0.0
        self.wsum[-n:] = 0.0
        self.start = until
        return first, out
