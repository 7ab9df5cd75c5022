"""The context prior: an MLP over each pixel's neighbourhood means and its tile's Otsu level."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from floodlora.config import ConfigError, ModelConfig, RunConfig
from floodlora.models.clay import ClayEncoder, get_preset
from floodlora.models.decoder import otsu_levels
from floodlora.models.factory import build_segmentor
from floodlora.models.prior import (
    CONTEXT_RADII,
    TEXTURE_RADII,
    TILE_QUANTILES,
    ContextPrior,
    context_features,
)
from floodlora.models.segmentor import FloodSegmentor
from floodlora.runs import load_run, save_run
from floodlora.training.pixel_prior import fit_pixel_prior

SIZE = 48


def _model(prior_features: str, **kw) -> FloodSegmentor:
    torch.manual_seed(0)
    kw.setdefault("outputs", ("flood", "water"))
    return FloodSegmentor(
        ClayEncoder(get_preset("test-micro")),
        decoder="hires",
        pixel_prior=True,
        prior_features=prior_features,
        **kw,
    )


def _speckled_chips(kind: str, n: int, seed: int) -> list[dict]:
    """Chips whose water is an 8-px block pattern, 1 dB darker, under speckle of 1.5 per pixel.

    One pixel alone says little (the classes overlap), its neighbourhood mean says a lot; each chip
    also gets its own brightness offset, which only a tile-relative feature undoes.
    """
    g = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        blocks = g.random((SIZE // 8, SIZE // 8)) < 0.4
        mask = np.kron(blocks, np.ones((8, 8))).astype(np.uint8)
        offset = g.uniform(-3, 3)
        vv = offset - 1.0 * mask + 1.5 * g.standard_normal((SIZE, SIZE))
        post = np.stack([vv, vv]).astype(np.float32)
        views = {"post": torch.from_numpy(post)}
        if kind == "flood":
            views["pre"] = torch.from_numpy(np.full_like(post, offset))
        out.append({"views": views, "mask": torch.from_numpy(mask),
                    "valid": torch.ones(SIZE, SIZE, dtype=torch.bool), "label_kind": kind})  # fmt: skip
    return out


def _accuracy(model: FloodSegmentor, chips: list[dict], output: int) -> float:
    hits = []
    for chip in chips:
        x = {v: t[None] for v, t in chip["views"].items()}
        with torch.no_grad():
            logits = model.prior(model.prior_inputs(x, 1, SIZE, SIZE, x["post"]))
        hits.append(((logits[0, output] > 0).numpy() == (chip["mask"].numpy() == 1)).mean())
    return float(np.mean(hits))


def test_context_features_hold_each_band_its_local_means_and_tile_levels() -> None:
    x = torch.zeros(2, 3, 20, 36)
    x[:, :, :, 18:] = 4.0  # left half 0, right half 4
    f = context_features(x)
    per_band = len(CONTEXT_RADII) + 5
    assert f.shape == (2, 3 * per_band, 20, 36)
    band0 = f[0].view(per_band, 3, 20, 36)[:, 0]  # parts are stacked band-minor
    assert torch.equal(band0[0], x[0, 0])  # the value itself
    # the 3-px mean: 0 far from the edge, 4/3 just left of it (one of three columns is 4)
    assert float(band0[1, 10, 5]) == 0.0 and float(band0[1, 10, 17]) == pytest.approx(4 / 3)
    # the 33-px mean near the edge mixes both halves; a tile smaller than the window still works
    assert 0.0 < float(band0[len(CONTEXT_RADII), 10, 17]) < 4.0
    level = float(otsu_levels(x)[0, 0])
    assert 0.0 < level < 4.0
    assert torch.allclose(band0[len(CONTEXT_RADII) + 1], x[0, 0] - level)  # value - Otsu level
    assert torch.allclose(band0[len(CONTEXT_RADII) + 3], torch.full((20, 36), level))  # the level


def _quantile_part(pixels: torch.Tensor) -> torch.Tensor:
    """What `quantiles=True` adds after the plain context features: tile quantiles, then texture."""
    full = context_features(pixels, quantiles=True)
    assert torch.equal(full[:, : (len(CONTEXT_RADII) + 5) * pixels.shape[1]], context_features(pixels))
    return full[:, (len(CONTEXT_RADII) + 5) * pixels.shape[1] :]


def test_quantile_features_hold_the_value_against_tile_quantiles_and_the_local_texture() -> None:
    x = torch.arange(100, dtype=torch.float32).view(1, 1, 10, 10)  # one band, values 0..99
    f = _quantile_part(x)
    assert f.shape == (1, len(TILE_QUANTILES) + len(TEXTURE_RADII), 10, 10)
    for i, q in enumerate(TILE_QUANTILES):  # the lower quantile by sorting: value index int(q * 99)
        assert torch.equal(f[0, i], x[0, 0] - int(q * 99))
    flat = torch.zeros(1, 1, 12, 12)
    checker = (torch.arange(12)[:, None] + torch.arange(12)[None, :]) % 2 * 2.0 - 1.0  # +-1
    texture = _quantile_part(torch.stack([flat[0, 0], checker])[:, None])[:, len(TILE_QUANTILES)]
    assert torch.equal(texture[0], torch.zeros(12, 12))  # a smooth tile has no texture
    assert float(texture[1, 6, 6]) == pytest.approx(1.0, abs=0.05)  # 5 x 5 window: std about 1


def test_context_quantiles_sees_texture_that_context_alone_misses() -> None:
    """Water as smooth as glass, land speckled, both with the same mean: only texture tells them apart."""
    g = np.random.default_rng(0)

    def chips(n: int) -> list[dict]:
        out = []
        for _ in range(n):
            mask = np.kron(g.random((SIZE // 8, SIZE // 8)) < 0.4, np.ones((8, 8))).astype(np.uint8)
            vv = np.where(mask == 1, 0.1, 1.5) * g.standard_normal((SIZE, SIZE))
            post = torch.from_numpy(np.stack([vv, vv]).astype(np.float32))
            views = {"post": post, "pre": torch.zeros_like(post)}
            valid = torch.ones(SIZE, SIZE, dtype=torch.bool)
            mask_t = torch.from_numpy(mask)
            out.append({"views": views, "mask": mask_t, "valid": valid, "label_kind": "flood"})
        return out

    train, held_out = chips(12), chips(4)
    context = _model("context", outputs=("flood",))
    quantiles = _model("context-quantiles", outputs=("flood",))
    fit_pixel_prior(context, train)
    fit_pixel_prior(quantiles, train)
    per_band = len(CONTEXT_RADII) + 5 + len(TILE_QUANTILES) + len(TEXTURE_RADII)
    assert quantiles.prior.n_features == 4 * per_band  # pre and post, VV and VH
    context_acc, quantiles_acc = _accuracy(context, held_out, 0), _accuracy(quantiles, held_out, 0)
    assert quantiles_acc > 0.9, quantiles_acc
    assert quantiles_acc > context_acc + 0.05, (context_acc, quantiles_acc)


def test_context_prior_is_built_by_name_and_unknown_forms_are_refused() -> None:
    assert isinstance(_model("context").prior, ContextPrior)  # inert until fitted: test_pixel_prior.py
    with pytest.raises(ValueError, match="unknown prior_features 'nope'"):
        _model("nope")
    with pytest.raises(ConfigError, match=r"model\.prior_features: must be one of pixel, context"):
        ModelConfig(prior_features="nope")


def test_context_prior_beats_the_pixel_prior_where_one_pixel_is_ambiguous() -> None:
    train = _speckled_chips("flood", 8, seed=0) + _speckled_chips("water", 8, seed=1)
    held_out = _speckled_chips("flood", 4, seed=2)
    pixel, context = _model("pixel"), _model("context")
    fit_pixel_prior(pixel, train)
    summary = fit_pixel_prior(context, train)
    assert summary["flood"]["fitted"] and summary["water"]["fitted"]
    pixel_acc, context_acc = _accuracy(pixel, held_out, 0), _accuracy(context, held_out, 0)
    assert context_acc > 0.85, context_acc
    assert context_acc > pixel_acc + 0.1, (pixel_acc, context_acc)


def test_context_kinds_fit_the_other_outputs_as_an_exact_logistic_term() -> None:
    train = _speckled_chips("flood", 6, seed=0) + _speckled_chips("water", 6, seed=1)
    model = _model("context")
    summary = fit_pixel_prior(model, train, context_kinds=["flood"])
    assert (summary["flood"]["form"], summary["water"]["form"]) == ("context", "logistic")
    g = torch.Generator().manual_seed(3)
    a, b = (torch.randn(1, 4, SIZE, SIZE, generator=g) * 2 for _ in range(2))
    with torch.no_grad():
        fa, fb, fmid = model.prior(a), model.prior(b), model.prior(0.3 * a + 0.7 * b)
    # water: affine in the pixel's own bands (relu(z) - relu(-z) = z), so mixing inputs mixes logits
    assert torch.allclose(fmid[0, 1], 0.3 * fa[0, 1] + 0.7 * fb[0, 1], atol=1e-4)
    assert float(fa[0, 1].std()) > 0.1  # and fitted, not zero
    # flood: the MLP over context, which is not affine
    assert not torch.allclose(fmid[0, 0], 0.3 * fa[0, 0] + 0.7 * fb[0, 0], atol=1e-2)
    assert _accuracy(model, _speckled_chips("water", 3, seed=4), 1) > 0.6
    with pytest.raises(ConfigError, match=r"model\.prior_context_kinds: must name outputs of this model"):
        ModelConfig(outputs=["flood"], prior_context_kinds=["water"])


@pytest.mark.parametrize("form", ["context", "context-quantiles"])
def test_fitted_context_prior_survives_save_and_load(tmp_path: Path, form: str) -> None:
    cfg = RunConfig()
    cfg.model.checkpoint = "random:test-micro"
    cfg.model.lora_rank = 2
    cfg.model.outputs = ["flood", "water"]
    cfg.model.pixel_prior = True
    cfg.model.prior_features = form
    model = build_segmentor(cfg.model, ["pre", "post"], ["vv", "vh"])
    fit_pixel_prior(model, _speckled_chips("flood", 3, 0) + _speckled_chips("water", 3, 1))
    model.eval()
    x = {v: torch.randn(1, 2, 32, 32) for v in ("pre", "post")}
    expected = model.forward_all(x)
    save_run(tmp_path / "run", cfg, model)
    loaded = load_run(tmp_path / "run")
    assert loaded.base["prior_features"] == form
    assert isinstance(loaded.model.prior, ContextPrior)
    assert loaded.model.prior.quantiles == (form == "context-quantiles")
    assert torch.allclose(loaded.model.forward_all(x), expected, atol=1e-6)


@pytest.mark.parametrize("form", ["context", "context-quantiles"])
def test_context_prior_exports_to_torch_export_and_onnx(tmp_path: Path, form: str) -> None:
    from tests.inference_helpers import make_run

    from floodlora.inference.export import export_run

    run = make_run(tmp_path / "run", decoder="hires-bn", pixel_prior=True, prior_features=form)
    assert isinstance(load_run(run).model.prior, ContextPrior)
    rep = export_run(run, tmp_path / "exp", torch_export=True, onnx=True, tile=32)
    assert rep.torch_export_max_abs_diff is not None and rep.torch_export_max_abs_diff < 1e-4
    pytest.importorskip("onnxruntime")
    assert rep.onnx_max_abs_diff is not None and rep.onnx_max_abs_diff < 1e-4
