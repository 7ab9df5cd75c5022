"""Decoder options: the paper's decoder unchanged, the hires pixel path, and how both are saved."""

from __future__ import annotations

import pytest
import torch

from floodlora.config import ModelConfig
from floodlora.models.decoder import DECODER_SPECS, DECODERS
from floodlora.models.factory import build_segmentor
from floodlora.models.segmentor import FloodSegmentor


def _conv(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k + c_out


def test_paper_decoder_parameter_count_is_the_reference_design() -> None:
    model = build_segmentor(
        ModelConfig(checkpoint="random:floodlora-mini", decoder="paper"), ["pre", "post"], ["vv", "vh"]
    )
    # mini encoder (dim 192): per view conv 192->96, conv 96->64, 3 x ConvTranspose(2x2): 64->32->16->16
    per_view = _conv(192, 96, 3) + _conv(96, 64, 3) + _conv(64, 32, 2) + _conv(32, 16, 2) + _conv(16, 16, 2)
    head = _conv(2 * 16, 1, 3)
    assert sum(p.numel() for p in model.decoder_parameters()) == 2 * per_view + head
    assert len(model.stems) == 0


def test_hires_decoder_adds_a_pixel_path_of_known_size() -> None:
    paper = build_segmentor(
        ModelConfig(checkpoint="random:test-micro", decoder="paper"), ["pre", "post"], ["vv", "vh"]
    )
    hires = build_segmentor(
        ModelConfig(checkpoint="random:test-micro", decoder="hires"), ["pre", "post"], ["vv", "vh"]
    )
    token_part = sum(p.numel() for p in paper.decoders.parameters())
    stems = 2 * (_conv(4, 16, 3) + _conv(16, 16, 3))  # each band as is and minus its tile mean
    c_last = paper.decoder_channels[-1]
    head = _conv(2 * (c_last + 16), 32, 3) + _conv(32, 1, 1)
    assert sum(p.numel() for p in hires.decoder_parameters()) == token_part + stems + head


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("size", [32, 48])
def test_decoder_output_shapes_and_missing_views(decoder: str, size: int) -> None:
    model = build_segmentor(
        ModelConfig(checkpoint="random:test-micro", decoder=decoder), ["pre", "post"], ["vv", "vh"]
    )
    model.eval()
    views = {"pre": torch.randn(3, 2, size, size), "post": torch.randn(3, 2, size, size)}
    with torch.no_grad():
        both = model(views)
        with pytest.warns(UserWarning, match="missing"):
            post_only = model({"post": views["post"]})
    assert both.shape == post_only.shape == (3, 1, size, size)
    assert torch.isfinite(both).all() and not torch.allclose(both, post_only)


def test_hires_pixel_path_is_local_and_sees_tile_contrast() -> None:
    """The stem answers a 1-px change within its 5 x 5 receptive field (elsewhere only through the
    tile mean, which one pixel barely moves), and a tile-wide offset only through its raw copy."""
    from floodlora.models.decoder import PixelStem

    torch.manual_seed(0)
    stem = PixelStem(2).eval()
    x = torch.randn(1, 2, 32, 32)
    y = x.clone()
    y[0, :, 13, 13] += 5.0
    with torch.no_grad():
        diff = (stem(y) - stem(x)).abs().amax(dim=1)[0]
    near = diff[11:16, 11:16].max()
    far = diff.clone()
    far[11:16, 11:16] = 0
    assert near > 20 * far.max()
    # a tile-wide offset leaves the centred copy unchanged: equal to a stem that sees x + c raw only
    with torch.no_grad():
        shifted = stem(x + 3.0)
        centred = x - x.mean(dim=(2, 3), keepdim=True)
        expected = stem.net(torch.cat([x + 3.0, centred], dim=1))
    assert torch.allclose(shifted, expected, atol=1e-5)


def test_hires_decode_needs_pixels_and_unknown_decoder_fails() -> None:
    model = build_segmentor(
        ModelConfig(checkpoint="random:test-micro", decoder="hires"), ["post"], ["vv", "vh"]
    )
    feats = model.encode({"post": torch.randn(1, 2, 16, 16)})
    with pytest.raises(ValueError, match="needs the input pixels"):
        model.decode(feats)
    with pytest.raises(ValueError, match="unknown decoder 'unet'"):
        build_segmentor(ModelConfig(checkpoint="random:test-micro", decoder="unet"), ["post"], ["vv", "vh"])


@pytest.mark.parametrize("decoder", DECODERS)
def test_run_directory_records_the_decoder(tmp_path, decoder: str) -> None:
    from floodlora.config import RunConfig
    from floodlora.runs import load_run, save_run

    cfg = RunConfig()
    cfg.model.checkpoint, cfg.model.decoder, cfg.data.views = "random:test-micro", decoder, ["post"]
    model = build_segmentor(cfg.model, ["post"], ["vv", "vh"])
    save_run(tmp_path / "run", cfg, model)
    # a later default must not change how an existing run is rebuilt
    (tmp_path / "run" / "config.yaml").write_text(
        (tmp_path / "run" / "config.yaml").read_text().replace(f"decoder: {decoder}", "decoder: hires")
    )
    loaded = load_run(tmp_path / "run")
    assert loaded.model.decoder_kind == decoder
    x = {"post": torch.randn(1, 2, 16, 16)}
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), model.eval()(x))


def test_decoder_variants_differ_from_hires_only_in_what_they_declare() -> None:
    """Each hires variant: BatchNorm in the token decoder, or more stem inputs / layers, nothing else."""
    from torch import nn

    def build(name: str) -> FloodSegmentor:
        return build_segmentor(
            ModelConfig(checkpoint="random:test-micro", decoder=name), ["pre", "post"], ["vv", "vh"]
        )

    hires = build("hires")
    for name, spec in DECODER_SPECS.items():
        if not spec.pixel_stem:
            continue
        model = build(name)
        norms = [m for m in model.decoders.modules() if isinstance(m, nn.BatchNorm2d)]
        assert bool(norms) == spec.token_norm, name
        first = model.stems[0].net[0]
        assert first.in_channels == 2 * (2 + spec.stem_otsu + spec.stem_context), name
        dilated = [m for m in model.stems[0].net if isinstance(m, nn.Conv2d) and m.dilation != (1, 1)]
        assert len(dilated) == (2 if spec.stem_context else 0), name
        assert type(model.head) is type(hires.head)


def test_otsu_levels_match_scikit_image() -> None:
    """The stem's per-tile Otsu level is the classical per-chip threshold (within one histogram bin)."""
    from skimage.filters import threshold_otsu

    from floodlora.models.decoder import otsu_levels

    torch.manual_seed(0)
    water = torch.randn(2, 2, 24, 48) * 0.5 - 2.0
    land = torch.randn(2, 2, 40, 48) * 0.7 + 1.0
    x = torch.cat([water, land], dim=2)
    levels = otsu_levels(x)
    assert levels.shape == (2, 2, 1, 1)
    for i in range(2):
        for c in range(2):
            band = x[i, c]
            expected = threshold_otsu(band.numpy())
            bin_width = float(band.quantile(0.99) - band.quantile(0.01)) / 64
            assert abs(float(levels[i, c]) - expected) <= 1.5 * bin_width
            assert -2.0 < float(levels[i, c]) < 1.0


def test_pixel_dropout_leaves_the_token_path_alone_in_training_only() -> None:
    """With pixel dropout a training chip may be predicted from tokens alone; evaluation keeps both."""
    cfg = ModelConfig(checkpoint="random:test-micro", decoder="hires", pixel_dropout=0.99, pixel_prior=True)
    model = build_segmentor(cfg, ["post"], ["vv", "vh"])
    torch.nn.init.normal_(model.prior.weight)
    x = {"post": torch.randn(2, 2, 16, 16)}
    hooks = [s.register_forward_hook(lambda _m, _i, out: out * 0) for s in model.stems]
    saved_prior, model.prior = model.prior, None
    model.eval()
    with torch.no_grad():
        tokens_only = model(x)
    for h in hooks:
        h.remove()
    model.prior = saved_prior
    torch.manual_seed(1)
    model.train()
    for m in model.modules():  # dropout layers of the encoder off: only the pixel dropout draws
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    with torch.no_grad():
        dropped = model(x)
        model.eval()
        full = model(x)
    assert torch.allclose(dropped, tokens_only, atol=1e-5)
    assert not torch.allclose(full, tokens_only, atol=1e-3)
    with pytest.raises(Exception, match="pixel_dropout"):
        ModelConfig(pixel_dropout=1.0)
