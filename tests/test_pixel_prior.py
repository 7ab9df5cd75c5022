"""The pixel prior: a logistic term on the inputs, fitted per label kind before training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from floodlora.config import RunConfig
from floodlora.models.clay import ClayEncoder, get_preset
from floodlora.models.factory import build_segmentor
from floodlora.models.segmentor import FloodSegmentor
from floodlora.runs import load_run, save_run
from floodlora.training.pixel_prior import fit_pixel_prior


def _model(**kw) -> FloodSegmentor:
    torch.manual_seed(0)
    kw.setdefault("outputs", ("flood", "water"))
    return FloodSegmentor(ClayEncoder(get_preset("test-micro")), decoder="hires", pixel_prior=True, **kw)


def _chips(kind: str, n: int, dark_is: int, seed: int) -> list[dict]:
    """Chips where the post-event VV is -2 on labelled pixels of class `dark_is` and +1 elsewhere."""
    g = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        mask = (g.random((32, 32)) < 0.3).astype(np.uint8)
        vv = np.where(mask == dark_is, -2.0, 1.0) + 0.3 * g.standard_normal((32, 32))
        post = np.stack([vv, 0.5 * vv]).astype(np.float32)
        views = {"post": torch.from_numpy(post)}
        if kind == "flood":
            views["pre"] = torch.from_numpy(np.ones_like(post))
        mask[:2] = 255  # nodata rows are not sampled
        out.append({"views": views, "mask": torch.from_numpy(mask),
                    "valid": torch.ones(32, 32, dtype=torch.bool), "label_kind": kind})  # fmt: skip
    return out


@pytest.mark.parametrize("prior_features", ["pixel", "context", "context-quantiles"])
def test_prior_is_inert_until_fitted(prior_features: str) -> None:
    model = _model(prior_features=prior_features).eval()
    x = {v: torch.randn(1, 2, 32, 32) for v in ("pre", "post")}
    feats = model.encode(x)
    with torch.no_grad():
        with_prior = model.decode(feats, x)
        model.prior = None
        without = model.decode(feats, x)
    assert torch.equal(with_prior, without)


def test_each_output_is_fitted_on_its_own_kind() -> None:
    model = _model()
    # flood chips: dark = flood; water chips: the opposite convention, to tell the fits apart
    chips = _chips("flood", 6, dark_is=1, seed=0) + _chips("water", 6, dark_is=0, seed=1)
    summary = fit_pixel_prior(model, chips)
    assert summary["flood"]["fitted"] and summary["water"]["fitted"]
    assert summary["flood"]["train_accuracy"] > 0.95 and summary["water"]["train_accuracy"] > 0.95
    assert summary["flood"]["pixels"] == 6 * 30 * 32  # every labelled pixel (fewer than the cap)
    post_vv = model.views.index("post") * len(model.bands)
    w = model.prior.weight.detach()[:, :, 0, 0]
    assert w[0, post_vv] < 0 < w[1, post_vv]  # flood: darker -> more likely; water here: the reverse
    chip = chips[0]
    x = {v: t[None] for v, t in chip["views"].items()}
    logits = model.prior(model.prior_inputs(x, 1, 32, 32, x["post"]))
    pred = (logits[0, 0] > 0).numpy()
    labelled = chip["mask"].numpy() != 255
    assert (pred[labelled] == (chip["mask"].numpy()[labelled] == 1)).mean() > 0.95


def test_single_output_is_fitted_on_every_chip_and_missing_kind_stays_zero() -> None:
    one = _model(outputs=("flood",))
    summary = fit_pixel_prior(one, _chips("water", 4, dark_is=1, seed=2))
    assert summary["flood"]["fitted"] and summary["flood"]["pixels"] == 4 * 30 * 32
    two = _model()
    summary = fit_pixel_prior(two, _chips("water", 4, dark_is=1, seed=2))
    assert summary["flood"] == {"fitted": False, "pixels": 0}
    w = two.prior.weight.detach()
    assert float(w[0].abs().sum()) == 0.0 and float(w[1].abs().sum()) > 0


def test_a_model_without_prior_refuses_fitting() -> None:
    model = FloodSegmentor(ClayEncoder(get_preset("test-micro")), decoder="hires")
    with pytest.raises(ValueError, match="no pixel prior"):
        fit_pixel_prior(model, _chips("flood", 1, 1, 0))


def test_fitted_prior_survives_save_and_load(tmp_path: Path) -> None:
    cfg = RunConfig()
    cfg.model.checkpoint = "random:test-micro"
    cfg.model.lora_rank = 2
    cfg.model.outputs = ["flood", "water"]
    cfg.model.pixel_prior = True
    model = build_segmentor(cfg.model, ["pre", "post"], ["vv", "vh"])
    fit_pixel_prior(model, _chips("flood", 3, 1, 0) + _chips("water", 3, 1, 1))
    model.eval()
    x = {v: torch.randn(1, 2, 32, 32) for v in ("pre", "post")}
    expected = model.forward_all(x)
    save_run(tmp_path / "run", cfg, model)
    loaded = load_run(tmp_path / "run")
    assert loaded.base["pixel_prior"] is True
    assert torch.equal(loaded.model.prior.weight, model.prior.weight)
    assert torch.allclose(loaded.model.forward_all(x), expected, atol=1e-6)


def test_prior_kinds_limit_which_outputs_are_fitted() -> None:
    model = _model()
    chips = _chips("flood", 3, dark_is=1, seed=0) + _chips("water", 3, dark_is=1, seed=1)
    summary = fit_pixel_prior(model, chips, kinds=["water"])
    assert summary["flood"]["fitted"] is False and summary["water"]["fitted"] is True
    w = model.prior.weight.detach()
    assert float(w[0].abs().sum()) == 0.0 and float(w[1].abs().sum()) > 0
