"""The embedded encoder shipped in the package: present, loadable, described by its model card."""

from __future__ import annotations

import re

import torch

from floodlora.models.clay import checkpoint_sha256, get_preset
from floodlora.models.registry import embedded_weights_path, load_encoder


def test_embedded_weights_match_model_card() -> None:
    path = embedded_weights_path()
    assert path.is_file(), f"{path} is missing"
    assert path.stat().st_size <= 21_000_000  # "at most ~20 MB"
    card = (path.parent / "MODEL_CARD.md").read_text()
    found = re.search(r"sha256 `([0-9a-f]{64})`", card)
    assert found, "MODEL_CARD.md does not state the weights' sha256"
    assert checkpoint_sha256(path) == found.group(1)


def test_embedded_encoder_loads_and_runs() -> None:
    encoder = load_encoder("embedded").eval()
    assert encoder.config == get_preset("floodlora-mini")
    with torch.no_grad():
        out = encoder(torch.zeros(1, 2, 32, 32), waves=torch.tensor([3.5, 4.0]))
    assert out.shape == (1, 17, 192)
    assert torch.isfinite(out).all()


def test_model_card_reports_probe_against_random_init() -> None:
    card = (embedded_weights_path().parent / "MODEL_CARD.md").read_text()
    rows = dict(re.findall(r"^\| (pretrained|random init) \| ([0-9.]+) \|", card, flags=re.M))
    assert set(rows) == {"pretrained", "random init"}
    assert float(rows["pretrained"]) > 50.0
