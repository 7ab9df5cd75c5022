"""Tile planning and blending: coverage, weights, exact reconstruction through the strip buffer."""

from __future__ import annotations

import numpy as np
import pytest

from floodlora.inference.tiling import StripBlender, plan_tiles, ramp, tile_weights


@pytest.mark.parametrize(
    ("h", "w", "tile", "overlap"), [(75, 90, 32, 8), (200, 130, 64, 16), (20, 300, 32, 8)]
)
def test_plan_covers_scene_with_square_patch_multiple_tiles(h: int, w: int, tile: int, overlap: int) -> None:
    plan = plan_tiles(h, w, tile, overlap, patch=8)
    assert plan.tile % 8 == 0
    covered = np.zeros((h, w), dtype=int)
    for t in plan:
        assert t.row >= 0 and t.col >= 0
        if plan.tile <= h:
            assert t.row + t.size <= h
        if plan.tile <= w:
            assert t.col + t.size <= w
        covered[t.row : t.row + t.size, t.col : t.col + t.size] += 1
    assert covered.min() >= 1


def test_small_scene_shrinks_tile_to_patch_multiple() -> None:
    plan = plan_tiles(20, 13, 512, 128, patch=8)
    assert plan.tile == 24 and len(plan) == 1


@pytest.mark.parametrize(
    ("h", "w", "tile", "overlap"), [(75, 90, 32, 8), (200, 130, 64, 16), (100, 100, 32, 31)]
)
def test_weights_never_vanish_and_inner_edges_are_zero(h: int, w: int, tile: int, overlap: int) -> None:
    plan = plan_tiles(h, w, tile, overlap)
    wsum = np.zeros((h, w))
    for t in plan:
        wt = tile_weights(t, plan)
        wsum[t.row : t.row + t.size, t.col : t.col + t.size] += wt[: h - t.row, : w - t.col]
        if not t.left and plan.margin:
            assert (wt[:, : plan.margin] == 0).all()
        if t.top and t.left:
            assert wt[0, 0] == 1.0  # scene-border edges keep full weight
    assert wsum.min() > 0


def test_ramp_is_smooth_and_monotone() -> None:
    r = ramp(32, 8)
    assert (r[:8] == 0).all() and (np.diff(r) >= 0).all() and 0.99 < r[-1] <= 1.0


def test_strip_blender_reconstructs_scene_exactly() -> None:
    """Tiles cut from one image, blended band by band, give back that image: no offsets, no seams."""
    rng = np.random.default_rng(0)
    h, w = 150, 110
    scene = rng.normal(size=(2, h, w)).astype(np.float32)
    plan = plan_tiles(h, w, 32, 12)
    blender = StripBlender(plan, channels=2)
    out = np.full_like(scene, np.nan)

    def take(released: tuple[int, np.ndarray] | None) -> None:
        if released is not None:
            row, data = released
            out[:, row : row + data.shape[1]] = data

    for i, band in enumerate(plan.bands()):
        if i:
            take(blender.release(band[0].row))
        for t in band:
            tile = np.zeros((2, t.size, t.size), dtype=np.float32)
            part = scene[:, t.row : t.row + t.size, t.col : t.col + t.size]
            tile[:, : part.shape[1], : part.shape[2]] = part
            blender.add(t, tile)
    take(blender.release(h))
    np.testing.assert_allclose(out, scene, atol=1e-6)
    assert blender.acc.shape[1] == plan.tile  # the buffer is one strip, not the scene
