"""Segmentor shapes, missing views, and what each adaptation strategy lets an optimiser change."""

from __future__ import annotations

import pytest
import torch

from floodlora.models.clay import ClayEncoder, get_preset
from floodlora.models.segmentor import FloodSegmentor
from floodlora.models.strategies import (
    LoraSettings,
    apply_strategy,
    count_parameters,
)

FOUR_VIEWS = ("pre_asc", "pre_desc", "post_asc", "post_desc")


def _model(
    views: tuple[str, ...] = ("pre", "post"), bands: tuple[str, ...] = ("vv", "vh"), **kw
) -> FloodSegmentor:
    torch.manual_seed(0)
    return FloodSegmentor(ClayEncoder(get_preset("test-micro")), views=views, bands=bands, **kw)


def _inputs(views: tuple[str, ...], b: int = 2, c: int = 2, size: int = 32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {v: torch.randn(b, c, size, size, generator=g) for v in views}


@pytest.mark.parametrize("views", [("pre", "post"), FOUR_VIEWS])
def test_forward_backward_shapes(views: tuple[str, ...]) -> None:
    model = _model(views)
    logits = model(_inputs(views))
    assert logits.shape == (2, 1, 32, 32)
    logits.mean().backward()
    assert all(p.grad is not None for p in model.decoder_parameters())


def test_missing_view_is_filled_and_flagged() -> None:
    model = _model(FOUR_VIEWS).eval()
    inputs = _inputs(FOUR_VIEWS)
    del inputs["pre_desc"]
    with pytest.warns(UserWarning, match="pre_desc"):
        logits = model(inputs)
    assert logits.shape == (2, 1, 32, 32)
    assert torch.isfinite(logits).all()
    assert model.last_missing_views == ("pre_desc",)
    full = model(_inputs(FOUR_VIEWS))
    assert model.last_missing_views == ()
    assert not torch.allclose(full, logits)


def test_missing_view_backward_in_training() -> None:
    model = _model(FOUR_VIEWS).train()
    logits = model({k: v for k, v in _inputs(FOUR_VIEWS).items() if k.startswith("post")})
    logits.mean().backward()
    assert model.last_missing_views == ("pre_asc", "pre_desc")


def test_undeclared_view_and_wrong_band_count_rejected() -> None:
    model = _model(("pre", "post"))
    with pytest.raises(ValueError, match="not declared"):
        model(_inputs(("post", "post_asc")))
    with pytest.raises(ValueError, match="channels"):
        model(_inputs(("pre", "post"), c=1))


def test_single_band_model() -> None:
    model = _model(("pre", "post"), bands=("vv",))
    assert model(_inputs(("pre", "post"), c=1)).shape == (2, 1, 32, 32)


def test_view_dropout_keeps_one_view_and_is_off_in_eval() -> None:
    model = _model(FOUR_VIEWS, view_dropout=0.9).train()
    drop = model._sample_view_dropout(list(FOUR_VIEWS), 64, torch.zeros(1))
    assert drop is not None
    kept = torch.stack([drop[v] for v in FOUR_VIEWS], 1)
    assert (kept.sum(1) >= 1).all()
    model.eval()
    assert model._sample_view_dropout(list(FOUR_VIEWS), 64, torch.zeros(1)) is None


def _one_step(model: FloodSegmentor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    model.train()
    logits = model(_inputs(("pre", "post")))
    target = torch.zeros_like(logits)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, target).backward()
    opt.step()
    # A second step so that LoRA's zero-initialised B has moved and A receives gradients.
    opt.zero_grad()
    model(_inputs(("pre", "post"))).mean().backward()
    opt.step()
    after = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return before, after


def test_lora_changes_only_adapters_and_decoder() -> None:
    model = apply_strategy(_model(), "lora", LoraSettings(rank=4))
    before, after = _one_step(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    base_keys = [k for k in before if k.startswith("encoder.") and "lora_" not in k]
    assert base_keys and not any(k in changed for k in base_keys), "base encoder weights changed"
    assert any("lora_B" in k for k in changed) and any("lora_A" in k for k in changed)
    assert any(k.startswith("decoders.") for k in changed) and any(k.startswith("head.") for k in changed)


def test_frozen_changes_no_encoder_weight() -> None:
    model = apply_strategy(_model(), "frozen")
    before, after = _one_step(model)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoders."))
    assert not model.encoder.training


def test_full_changes_encoder_weights() -> None:
    model = apply_strategy(_model(), "full")
    before, after = _one_step(model)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("encoder.transformer"))


def test_lora_targets_only_attention_by_default_and_mlp_on_request() -> None:
    model = apply_strategy(_model(), "lora", LoraSettings(rank=2))
    names = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith("encoder.")]
    assert names and all(("to_qkv" in n or "to_out" in n) and "lora_" in n for n in names)
    model = apply_strategy(_model(), "lora", LoraSettings(rank=2, targets=["attention", "mlp"]))
    names = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith("encoder.")]
    assert any("net.1" in n for n in names) and any("net.3" in n for n in names)


def test_base_preset_parameter_counts_on_meta_device() -> None:
    """The documented table: clay-v1-base, four views. LoRA grows by 55,296 per unit of rank."""
    counts = {}
    for strategy, rank in [("frozen", 0), ("lora", 8), ("lora", 256), ("full", 0)]:
        with torch.device("meta"):
            model = FloodSegmentor(ClayEncoder(get_preset("clay-v1-base")), views=FOUR_VIEWS)
        apply_strategy(model, strategy, LoraSettings(rank=rank) if rank else None)
        counts[(strategy, rank)] = count_parameters(model)
    decoder = counts[("frozen", 0)].trainable
    assert 8_400_000 < decoder < 8_900_000  # the reference decoder has 8.65M
    assert counts[("lora", 8)].trainable - decoder == 8 * 55_296
    assert counts[("lora", 256)].trainable - decoder == 256 * 55_296
    # per unit of rank: A (r x in) + B (out x r) for to_qkv (768 -> 3 x 768) and to_out, in 12 blocks
    assert 55_296 == 12 * ((768 + 3 * 768) + (768 + 768))
    assert counts[("full", 0)].trainable == 92_102_144 + decoder


def test_latlon_order_reaches_the_encoder() -> None:
    """lon-lat swaps the pairs before the encoder; zeros drops the location; lat-lon passes it on."""
    from floodlora.models.segmentor import reorder_latlon

    code = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert reorder_latlon(code, "lon-lat").tolist() == [[3.0, 4.0, 1.0, 2.0]]
    assert not reorder_latlon(code, "zeros").any() and reorder_latlon(code, "lat-lon") is code
    model = _model().eval()
    x = _inputs(("pre", "post"))
    latlon = torch.tensor([[0.5, 0.8, -0.3, 0.9], [0.1, 0.99, 0.7, 0.7]])
    with torch.no_grad():
        lat_first = model(x, None, latlon)
        model.latlon_order = "lon-lat"
        lon_first = model(x, None, latlon)
        model.latlon_order = "lat-lon"
        swapped_input = model(x, None, latlon[:, [2, 3, 0, 1]])
    assert not torch.allclose(lat_first, lon_first)
    assert torch.allclose(lon_first, swapped_input, atol=1e-6)


def test_latlon_order_auto_per_checkpoint_and_stored_in_runs(tmp_path, clay_fixtures) -> None:
    from floodlora.config import ModelConfig, RunConfig
    from floodlora.errors import ConfigError
    from floodlora.models.factory import build_segmentor, resolve_latlon_order
    from floodlora.runs import load_run, save_run

    assert resolve_latlon_order(ModelConfig(checkpoint="embedded")) == "lat-lon"
    assert resolve_latlon_order(ModelConfig(checkpoint="clay-v1.5")) == "lon-lat"
    assert resolve_latlon_order(ModelConfig(checkpoint=str(clay_fixtures / "clay_tiny.ckpt"))) == "lon-lat"
    assert resolve_latlon_order(ModelConfig(checkpoint="random:test-micro", latlon_order="zeros")) == "zeros"
    with pytest.raises(ConfigError, match=r"latlon_order: must be one of auto, lat-lon, lon-lat, zeros"):
        ModelConfig(latlon_order="latlon")
    cfg = RunConfig()
    cfg.model.checkpoint = str(clay_fixtures / "clay_tiny.ckpt")
    cfg.model.strategy = "full"
    model = build_segmentor(cfg.model, ["post"], ["vv", "vh"])
    assert model.latlon_order == "lon-lat"
    save_run(tmp_path / "run", cfg, model)
    # a full run is rebuilt from a random encoder of the stored size: the order comes from base.json
    assert load_run(tmp_path / "run").model.latlon_order == "lon-lat"
