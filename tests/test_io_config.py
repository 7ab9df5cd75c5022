"""Atomic writes, marked-section updates, and the typed config loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from floodlora.config import RunConfig, load_config, save_config
from floodlora.errors import ConfigError
from floodlora.io import atomic_path, atomic_write_json, replace_marked_section


def test_atomic_path_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"f1": 0.5})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("crash mid-write")
    assert target.read_text().strip() == '{\n  "f1": 0.5\n}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temp file left
    assert target.stat().st_mode & 0o044  # readable by others, unlike mkstemp's 0600


def test_replace_marked_section_keeps_other_sections(tmp_path: Path) -> None:
    doc = tmp_path / "perf.md"
    replace_marked_section(doc, "<!-- a -->", "<!-- /a -->", "<!-- a -->\nA1\n<!-- /a -->", title="# P\n")
    replace_marked_section(doc, "<!-- b -->", "<!-- /b -->", "<!-- b -->\nB1\n<!-- /b -->")
    replace_marked_section(doc, "<!-- a -->", "<!-- /a -->", "<!-- a -->\nA2\n<!-- /a -->")
    text = doc.read_text()
    assert text.startswith("# P") and "A2" in text and "A1" not in text and "B1" in text
    assert text.index("A2") < text.index("B1")


def test_config_round_trip_and_overrides(tmp_path: Path) -> None:
    cfg = RunConfig()
    cfg.model.lora_rank = 64
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml", {"train.lr": 0.01, "model.strategy": None})
    assert again.model.lora_rank == 64 and again.train.lr == 0.01 and again.model.strategy == "lora"


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("model:\n  lora_rnak: 8\n", r"unknown key\(s\) lora_rnak"),
        ("train:\n  max_epochs: many\n", r"train.max_epochs: expected an integer"),
        ("data:\n  views: post\n", r"data.views: expected a list"),
        ("- just\n- a list\n", r"top level must be a mapping"),
    ],
)
def test_config_errors_name_the_file_and_key(tmp_path: Path, yaml_text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)
