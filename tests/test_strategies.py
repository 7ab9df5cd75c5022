"""Every registered adaptation strategy passes the same checks: what it trains is what it stores,
what it stores loads back to the same predictions, and bad settings fail in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from floodlora.config import STRATEGIES, RunConfig
from floodlora.errors import CheckpointError, ConfigError
from floodlora.models.clay import ClayEncoder, get_preset
from floodlora.models.segmentor import FloodSegmentor
from floodlora.models.strategies import (
    REGISTRY,
    AdaptationStrategy,
    FullStrategy,
    LoraSettings,
    LoraStrategy,
    get_strategy,
    strategy_of,
)

NAMES = list(REGISTRY)
VIEWS = ("pre", "post")


def _strategy(name: str) -> AdaptationStrategy:
    return get_strategy(name, lora=LoraSettings(rank=2))


def _model(seed: int = 0) -> FloodSegmentor:
    torch.manual_seed(seed)
    return FloodSegmentor(ClayEncoder(get_preset("test-micro")), views=VIEWS, bands=("vv", "vh"))


def _prepared(name: str, seed: int = 0) -> FloodSegmentor:
    return _strategy(name).prepare(_model(seed))


def _perturb(model: torch.nn.Module) -> None:
    """Move every trainable tensor (LoRA's B starts at zero, so untouched adapters would prove nothing)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {v: torch.randn(2, 2, 32, 32, generator=g) for v in VIEWS}


def _trainable(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_registry_matches_the_config_names() -> None:
    assert tuple(REGISTRY) == STRATEGIES
    assert all(REGISTRY[n].name == n for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_prepare_records_the_strategy(name: str) -> None:
    strategy = _strategy(name)
    model = strategy.prepare(_model())
    assert model.strategy == name and strategy_of(model) is strategy
    assert model.decoder_parameters() and all(p.requires_grad for p in model.decoder_parameters())
    encoder_trainable = [n for n in _trainable(model) if n.startswith("encoder.")]
    if strategy.constant_encoder:
        assert not encoder_trainable and not model.train().encoder.training
    else:
        assert encoder_trainable


@pytest.mark.parametrize("name", NAMES)
def test_trainable_parameters_are_what_a_run_stores(name: str) -> None:
    strategy = _strategy(name)
    model = strategy.prepare(_model())
    stored = strategy.trainable_state(model)
    params = dict(model.named_parameters())
    assert _trainable(model) <= set(stored)
    if strategy.needs_base:
        # nothing the base checkpoint already holds: every stored parameter is a trained one
        assert {k for k in stored if k in params} == _trainable(model)
    else:
        assert set(stored) == set(model.state_dict())
    assert all(not t.requires_grad and t.device.type == "cpu" and t.is_contiguous() for t in stored.values())


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_filter_keeps_stored_entries_and_foreign_ones(name: str) -> None:
    strategy = _strategy(name)
    model = strategy.prepare(_model())
    state = {f"model.{k}": v for k, v in model.state_dict().items()} | {"other.step": torch.tensor(3)}
    kept = strategy.checkpoint_filter(state, prefix="model.")
    assert set(kept) == {f"model.{k}" for k in strategy.trainable_state(model)} | {"other.step"}


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip_gives_identical_outputs(name: str) -> None:
    strategy = _strategy(name)
    model = strategy.prepare(_model(seed=0))
    _perturb(model)
    model.eval()
    expected = model(_inputs())
    # a strategy that needs the base gets the same base; one that stores everything gets another init
    fresh = _strategy(name).prepare(_model(seed=0 if strategy.needs_base else 1))
    fresh.eval()
    assert not torch.allclose(fresh(_inputs()), expected)
    strategy_of(fresh).load_state(fresh, strategy.trainable_state(model), "weights")
    assert torch.equal(fresh(_inputs()), expected)


@pytest.mark.parametrize("name", NAMES)
def test_load_state_refuses_missing_unexpected_and_misshapen_tensors(name: str) -> None:
    strategy = _strategy(name)
    model = strategy.prepare(_model())
    state = strategy.trainable_state(model)
    key = next(k for k in state if k.startswith("head."))
    with pytest.raises(CheckpointError, match=rf"^w: weights are missing {key}"):
        strategy.load_state(model, {k: v for k, v in state.items() if k != key}, "w")
    with pytest.raises(CheckpointError, match=r"^w: weights do not fit this model: unexpected bogus\.x$"):
        strategy.load_state(model, state | {"bogus.x": torch.zeros(1)}, "w")
    with pytest.raises(CheckpointError, match=r"^w: weights do not fit this model \(.*size mismatch"):
        strategy.load_state(model, state | {key: torch.zeros(*state[key].shape, 3)}, "w")


@pytest.mark.parametrize("name", NAMES)
def test_standalone_model_predicts_the_same_and_stores_everything(name: str) -> None:
    strategy = _strategy(name)
    model = strategy.prepare(_model())
    _perturb(model)
    model.eval()
    expected = model(_inputs())
    strategy.standalone(model)
    assert model.strategy == "full" and isinstance(strategy_of(model), FullStrategy)
    assert torch.allclose(model(_inputs()), expected, atol=1e-5)
    stored = strategy_of(model).trainable_state(model)
    assert set(stored) == set(model.state_dict()) and not any("lora_" in k for k in stored)


@pytest.mark.parametrize("name", NAMES)
def test_adapter_state_only_for_strategies_on_a_base(name: str) -> None:
    strategy = _strategy(name)
    model = strategy.prepare(_model())
    if strategy.needs_base:
        assert strategy.adapter_state(model).keys() == strategy.trainable_state(model).keys()
    else:
        with pytest.raises(ConfigError, match="has no adapter"):
            strategy.adapter_state(model)


def test_lora_metadata_records_resolved_settings() -> None:
    assert LoraStrategy(LoraSettings(rank=4, targets=["attention"])).adapter_metadata() == {
        "rank": 4,
        "alpha": 8.0,
        "dropout": 0.1,
        "targets": ["attention"],
    }
    assert all(_strategy(n).adapter_metadata() is None for n in NAMES if n != "lora")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: get_strategy("bogus"), "unknown strategy 'bogus'; choose one of frozen, lora, full"),
        (lambda: get_strategy(None), "unknown strategy None"),  # type: ignore[arg-type]
        (lambda: LoraSettings(rank=0), "LoRA rank must be an integer >= 1, got 0"),
        (lambda: LoraSettings(rank=-4), "LoRA rank must be an integer >= 1, got -4"),
        (lambda: LoraSettings(rank=2.5), "LoRA rank must be an integer >= 1, got 2.5"),  # type: ignore[arg-type]
        (lambda: LoraSettings(rank=True), "LoRA rank must be an integer >= 1, got True"),
        (lambda: LoraSettings(alpha=0), "LoRA alpha must be > 0"),
        (lambda: LoraSettings(dropout=1.0), r"LoRA dropout must be in \[0, 1\)"),
        (lambda: LoraSettings(targets=[]), "LoRA targets must be a non-empty list"),
        (lambda: LoraStrategy({"rank": 2}), "LoRA settings must be LoraSettings, got dict"),  # type: ignore[arg-type]
    ],
)
def test_bad_settings_fail_in_one_line(make, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        make()
    assert "\n" not in str(info.value)


def test_run_with_an_unknown_stored_strategy_is_refused(tmp_path: Path) -> None:
    from floodlora.models.factory import build_segmentor
    from floodlora.runs import BASE_FILE, load_run, save_run

    cfg = RunConfig()
    cfg.model.checkpoint, cfg.model.strategy, cfg.model.lora_rank = "random:test-micro", "lora", 2
    save_run(tmp_path, cfg, build_segmentor(cfg.model, list(VIEWS), ["vv", "vh"]))
    base = json.loads((tmp_path / BASE_FILE).read_text())
    (tmp_path / BASE_FILE).write_text(json.dumps(base | {"strategy": "bogus"}))
    with pytest.raises(CheckpointError, match=r"base\.json: unknown strategy 'bogus'"):
        load_run(tmp_path)
