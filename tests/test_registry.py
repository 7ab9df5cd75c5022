"""Named checkpoints: Hugging Face cache lookup, offline errors, random presets, the embedded model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from floodlora.errors import CheckpointError
from floodlora.models import registry
from floodlora.models.registry import CHECKPOINTS, load_encoder, resolve_checkpoint


def test_hub_name_resolves_from_local_cache(tmp_path: Path, clay_fixtures: Path, monkeypatch) -> None:
    """A Clay checkpoint already in the Hugging Face cache loads by name, without network."""
    import huggingface_hub.constants as hf_constants

    spec = CHECKPOINTS["clay-v1-base"]
    repo_dir = tmp_path / f"models--{spec.repo_id.replace('/', '--')}" / "snapshots" / spec.revision
    target = repo_dir / spec.filename
    target.parent.mkdir(parents=True)
    shutil.copy(clay_fixtures / "clay_tiny.ckpt", target)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(registry, "_hub_reachable", lambda timeout=3.0: pytest.fail("network was tried"))
    assert resolve_checkpoint("clay-v1-base") == target
    assert load_encoder("clay-v1-base").config.dim == 64


def test_offline_hub_name_says_how_to_pass_a_file(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(registry, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(
        CheckpointError, match=r"clay-v1\.5: .*cannot be reached.*--checkpoint /path/to/clay-v1\.5\.ckpt"
    ):
        resolve_checkpoint("clay-v1.5")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE is set"):
        resolve_checkpoint("clay-v1-base")


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(CheckpointError, match=r"no such checkpoint file or name.*embedded.*random:<preset>"):
        resolve_checkpoint("clay-v9")
    with pytest.raises(CheckpointError, match="unknown encoder preset"):
        load_encoder("random:huge")


def test_random_presets_are_deterministic_and_leave_global_rng_alone() -> None:
    import torch

    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = load_encoder("random:test-micro")
    after = torch.rand(1)
    b = load_encoder("random:test-micro")
    assert torch.equal(after, expected_next)
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
