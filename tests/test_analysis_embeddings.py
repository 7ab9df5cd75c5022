"""Patch embeddings, linear probe and t-SNE on tiny synthetic scenes and a micro encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from floodlora.analysis.embeddings import linear_probe, patch_embeddings, tsne_figure
from floodlora.data.sample import Sample, SampleMeta
from floodlora.data.synthetic import generate_scene
from floodlora.errors import DataError
from floodlora.models.registry import load_encoder


@pytest.fixture(scope="module")
def scenes() -> list[Sample]:
    out = []
    for seed in range(4):
        s = generate_scene(64, "in", seed, views=("pre", "post"), target="water", nodata_edge_prob=0.0)
        out.append(s)
    return out


@pytest.fixture(scope="module")
def micro():
    return load_encoder("random:test-micro")


def test_patch_embeddings_shapes_labels_and_nodata(scenes: list[Sample], micro) -> None:
    feats, labels, events = patch_embeddings(micro, scenes, ["vv", "vh"])
    assert feats.shape == (4 * 64, 64) and feats.dtype == np.float32
    assert set(np.unique(labels)) <= {0, 1} and len(events) == len(labels) == len(feats)
    # labels are the majority of each 8x8 patch of the mask
    m = (scenes[0].mask == 1).reshape(8, 8, 8, 8).mean(axis=(1, 3)).reshape(-1) > 0.5
    assert np.array_equal(labels[:64], m.astype(int))
    # a patch touching nodata is skipped
    s = scenes[0]
    holey = Sample(
        views={v: {b: a.copy() for b, a in bands.items()} for v, bands in s.views.items()},
        mask=s.mask.copy(),
        meta=s.meta,
    )
    holey.views["post"]["vv"][0, 0] = np.nan
    holey.valid = np.isfinite(holey.views["post"]["vv"])
    feats2, _, _ = patch_embeddings(micro, [holey], ["vv", "vh"])
    assert len(feats2) == 63
    assert np.allclose(feats2, feats[1:64], atol=1e-3)  # attention mixes the changed patch in slightly


def test_patch_embeddings_use_adapted_encoder_of_a_segmentor(scenes: list[Sample], micro) -> None:
    from floodlora.models.segmentor import FloodSegmentor

    seg = FloodSegmentor(micro, views=("pre", "post"), bands=("vv", "vh"))
    a, _, _ = patch_embeddings(seg, scenes[:1], ["vv", "vh"])
    b, _, _ = patch_embeddings(micro, scenes[:1], ["vv", "vh"])
    assert np.allclose(a, b, atol=1e-6)
    with pytest.raises(DataError):
        patch_embeddings(seg, scenes[:1], ["vv"])


def test_linear_probe_beats_chance_on_synthetic_scenes(scenes: list[Sample], micro) -> None:
    more = scenes + [generate_scene(64, "in", s, target="water", nodata_edge_prob=0.0) for s in range(4, 8)]
    feats, labels, _ = patch_embeddings(micro, more, ["vv", "vh"])
    res = linear_probe(feats, labels, seed=0)
    assert set(res) >= {"accuracy", "balanced_accuracy", "chance", "n_train", "n_test"}
    assert res["n_train"] + res["n_test"] == len(labels)
    # water is dark: even a random encoder's patch tokens separate it well above chance
    assert res["balanced_accuracy"] > 0.75
    assert res["accuracy"] > res["chance"]


def test_linear_probe_at_chance_on_noise() -> None:
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((600, 8))
    labels = rng.integers(0, 2, 600)
    assert abs(linear_probe(feats, labels)["balanced_accuracy"] - 0.5) < 0.12
    with pytest.raises(DataError):
        linear_probe(feats, np.zeros(600, int))


def test_tsne_figure_writes_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    feats = np.concatenate([rng.normal(0, 1, (60, 16)), rng.normal(4, 1, (60, 16))])
    labels = np.repeat([0, 1], 60)
    events = ["a", "b"] * 60
    out = tsne_figure(feats, labels, events, tmp_path / "t.png", max_points=100)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp"))


def test_patch_embeddings_need_labels(micro) -> None:
    meta = SampleMeta("x", "e", "synthetic", "db")
    s = Sample(views={"post": {"vv": np.zeros((16, 16), np.float32)}}, mask=None, meta=meta)
    with pytest.raises(DataError):
        patch_embeddings(micro, [s], ["vv", "vh"])
