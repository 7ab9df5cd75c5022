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


@pytest.mark.parametrize("trainable", [True, False])
def test_prior_trainable_decides_whether_training_moves_the_fitted_prior(trainable: bool) -> None:
    cfg = RunConfig()
    cfg.model.checkpoint = "random:test-micro"
    cfg.model.lora_rank = 2
    cfg.model.decoder = "hires"
    cfg.model.outputs = ["flood", "water"]
    cfg.model.pixel_prior = True
    cfg.model.prior_trainable = trainable
    torch.manual_seed(0)
    model = build_segmentor(cfg.model, ["pre", "post"], ["vv", "vh"])
    fit_pixel_prior(model, _chips("flood", 3, 1, 0) + _chips("water", 3, 1, 1))  # fits with grads off too
    fitted = model.prior.weight.detach().clone()
    assert float(fitted.abs().sum()) > 0
    trainable_params = [p for p in model.parameters() if p.requires_grad]
    assert any(p is model.prior.weight for p in trainable_params) is trainable
    head_before = [p.detach().clone() for p in model.head.parameters()]
    opt = torch.optim.SGD(trainable_params, lr=0.5)
    x = {v: torch.randn(2, 2, 32, 32) for v in ("pre", "post")}
    model.forward_all(x).square().mean().backward()
    opt.step()
    assert torch.equal(model.prior.weight, fitted) is not trainable
    assert any(not torch.equal(a, b) for a, b in zip(head_before, model.head.parameters(), strict=True))


def test_prior_fit_names_the_chips_or_fails_in_one_line() -> None:
    from floodlora.config import ConfigError, ModelConfig

    assert ModelConfig(prior_fit="whole").prior_fit == "whole"
    expected = r"model\.prior_fit: must be one of crops, whole, whole-context, got 'all'"
    with pytest.raises(ConfigError, match=expected):
        ModelConfig(prior_fit="all")


class _Chips(list):
    """A list of chip dicts with `refs` (the label kinds `sample_pixels(only_kinds=...)` reads before a
    chip) that records the kinds of the chips read from it."""

    def __init__(self, chips: list) -> None:
        super().__init__(chips)
        self.read: list[str] = []

    @property
    def refs(self) -> list:
        from types import SimpleNamespace

        return [SimpleNamespace(label_kind=c["label_kind"]) for c in self]

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        chip = super().__getitem__(index)
        self.read.append(chip["label_kind"])
        return chip


def test_context_dataset_feeds_only_the_context_outputs() -> None:
    """`whole-context`: the MLP output is sampled from the whole chips, the logistic one from the crops,
    and each set is read only for its own outputs' chips."""
    torch.manual_seed(0)
    model = FloodSegmentor(
        ClayEncoder(get_preset("test-micro")), decoder="hires", pixel_prior=True,
        outputs=("flood", "water"), prior_features="context",
    )  # fmt: skip
    crops = _Chips(_chips("flood", 4, dark_is=1, seed=0) + _chips("water", 4, dark_is=1, seed=1))
    # the whole chips label the opposite convention, so the fit shows which set each output learned
    whole = _Chips(_chips("flood", 4, dark_is=0, seed=2) + _chips("water", 4, dark_is=0, seed=3))
    summary = fit_pixel_prior(model, crops, context_kinds=["flood"], context_dataset=whole)
    assert summary["flood"]["form"] == "context" and summary["water"]["form"] == "logistic"
    assert sorted(crops.read) == ["water"] * 4 and sorted(whole.read) == ["flood"] * 4
    x = {"pre": torch.ones(1, 2, 32, 32), "post": torch.full((1, 2, 32, 32), -2.0)}  # dark everywhere
    x["post"][..., :, 16:] = 1.0  # right half bright
    with torch.no_grad():
        prior = model.prior(model.prior_inputs(x, 1, 32, 32, x["post"]))
    dark, bright = prior[0, :, :, :8].mean((1, 2)), prior[0, :, :, -8:].mean((1, 2))
    assert float(dark[1]) > float(bright[1])  # water, from the crops: dark is water
    assert float(dark[0]) < float(bright[0])  # flood, from the whole chips: dark is dry


def test_a_single_context_output_is_fitted_on_the_context_dataset() -> None:
    """One MLP output answers every chip, so `context_dataset` replaces the crops for it."""

    def fitted(chips: list, context: list | None) -> torch.Tensor:
        torch.manual_seed(0)
        model = FloodSegmentor(
            ClayEncoder(get_preset("test-micro")), decoder="hires", pixel_prior=True,
            outputs=("flood",), prior_features="context",
        )  # fmt: skip
        fit_pixel_prior(model, chips, context_dataset=context)
        chip = _chips("flood", 1, dark_is=0, seed=7)[0]  # unseen; flood is bright here
        x = {k: v[None] for k, v in chip["views"].items()}
        with torch.no_grad():
            prior = model.prior(model.prior_inputs(x, 1, 32, 32, x["post"]))[0, 0]
        return prior[chip["mask"] == 1].mean() - prior[chip["mask"] == 0].mean()

    crops = _Chips(_chips("flood", 4, dark_is=1, seed=0))
    whole = _Chips(_chips("flood", 4, dark_is=0, seed=2))  # the opposite convention
    with_context = fitted(crops, whole)
    assert float(with_context) > 1.0 and float(fitted(crops, None)) < -1.0
    torch.testing.assert_close(with_context, fitted(whole, None))  # exactly a fit on `whole`


def test_a_single_logistic_output_keeps_every_crop_whatever_the_context_dataset() -> None:
    """One output answers chips of every kind; as a logistic term it is fitted on all the crops."""
    torch.manual_seed(0)
    model = FloodSegmentor(
        ClayEncoder(get_preset("test-micro")), decoder="hires", pixel_prior=True,
        outputs=("flood",), prior_features="context",
    )  # fmt: skip
    crops = _Chips(_chips("flood", 3, dark_is=1, seed=0) + _chips("water", 3, dark_is=1, seed=1))
    whole = _Chips(_chips("flood", 3, dark_is=0, seed=2))
    summary = fit_pixel_prior(model, crops, context_kinds=[], context_dataset=whole)
    assert summary["flood"]["form"] == "logistic"
    assert sorted(crops.read) == ["flood"] * 3 + ["water"] * 3 and whole.read == []
