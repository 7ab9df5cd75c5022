"""Prediction panels and the Markdown report, on tiny synthetic folder datasets and micro models."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from floodlora.analysis.panels import chip_f1, error_map, prediction_panels, select_chips
from floodlora.data.synthetic import generate_scene

PNG = b"\x89PNG\r\n\x1a\n"


def test_error_map_codes() -> None:
    pred = np.array([[1, 1, 0, 0, 1]])
    mask = np.array([[1, 0, 1, 0, 255]], np.uint8)
    assert error_map(pred, mask).tolist() == [[1, 2, 3, 0, 4]]


def test_panels_and_chip_selection(tmp_path: Path) -> None:
    samples = [generate_scene(32, "in", s, nodata_edge_prob=0.0) for s in range(3)]
    for i, s in enumerate(samples):
        s.meta.chip_id = f"c{i}"
    perfect = {s.meta.chip_id: s.mask.astype(np.float32) for s in samples}
    noisy = {s.meta.chip_id: np.full(s.shape, 0.9, np.float32) for s in samples}
    noisy["c1"] = perfect["c1"]
    assert chip_f1(perfect["c0"], samples[0]) == pytest.approx(1.0)
    worst = select_chips(samples, noisy, k=1, how="worst")
    assert worst[0].meta.chip_id != "c1"
    assert select_chips(samples, noisy, k=1, how="best")[0].meta.chip_id == "c1"
    out = prediction_panels(samples[:2], {"frozen": noisy, "LoRA": perfect}, tmp_path / "p.png")
    assert out.read_bytes()[:8] == PNG


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A frozen and a LoRA run (untrained micro models, metrics from real predictions) and an OOM run."""
    from floodlora.analysis.baselines import select_refs
    from floodlora.analysis.panels import predict_refs
    from floodlora.config import RunConfig, save_config
    from floodlora.data.synthetic import write_folder_dataset
    from floodlora.io import atomic_write_json
    from floodlora.metrics import ChipConfusion
    from floodlora.models.factory import build_segmentor
    from floodlora.runs import save_run

    root = tmp_path_factory.mktemp("report")
    write_folder_dataset(root / "in", 10, 64, "in", seed=0, splits={"train": 0.5, "val": 0.2, "test": 0.3})
    write_folder_dataset(root / "ood", 2, 64, "ood", seed=1)
    out = []
    for strategy, rank in (("frozen", None), ("lora", 4)):
        cfg = RunConfig()
        cfg.data.roots = [str(root / "in"), str(root / "ood")]
        cfg.data.holdout_events = ["synthetic-ood-*"]
        cfg.model.checkpoint = "random:test-micro"
        cfg.model.strategy = strategy
        cfg.model.lora_rank = rank or 8
        model = build_segmentor(cfg.model, cfg.data.views, cfg.data.bands)
        run_dir = root / f"{strategy}"
        save_run(run_dir, cfg, model)
        metrics = {}
        for split in ("test", "ood"):
            refs = select_refs(cfg.data.roots, None, split, cfg.data)
            probs = predict_refs(model, refs, cfg.data)
            conf = ChipConfusion()
            from floodlora.data.sources import read_sample

            for r in refs:
                s = read_sample(r)
                conf.update(probs[r.chip_id][None], s.mask[None], s.valid[None], [r.chip_id], [r.event])
            metrics[split] = conf.report(0.5)
        atomic_write_json(run_dir / "metrics.json", metrics)
        acc = {"status": "ok", "peak_memory_gb": 0.5, "peak_memory_kind": "cpu_peak_rss"}
        atomic_write_json(run_dir / "accounting.json", {**acc, "trainable_params": 1000 * (1 + (rank or 0))})
        out.append(run_dir)
    oom = root / "full"
    cfg.model.strategy = "full"
    save_config(cfg, oom / "config.yaml")
    oom_acc = {"status": "oom", "memory_cap_gb": 1.0, "trainable_params": 99999}
    atomic_write_json(oom / "accounting.json", oom_acc)
    out.append(oom)
    return out


def test_report_has_every_table_and_figure(runs: list[Path], tmp_path: Path) -> None:
    from floodlora.analysis.report import build_report

    path = build_report(runs, tmp_path / "rep", baselines=True, figures=True, panel_chips=2, embed_chips=3)
    text = path.read_text()
    assert "Table 1" in text and "Table 2" in text
    for label in ("Frozen encoder", "LoRA r-4", "Full fine-tuning", "OOM (cap 1 GB)"):
        assert label in text, label
    assert "Otsu VV+VH (per chip)" in text and "Change (post-pre) VV+VH (per-chip Otsu)" in text
    assert "synthetic-ood-1" in text  # Table 2 has the held-out event
    assert "Linear probe" in text and "base encoder" in text
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert any("panels_test" in f for f in figures) and any("panels_ood" in f for f in figures)
    assert any("tsne_base" in f for f in figures) and any("tsne_adapted" in f for f in figures)
    for f in figures:
        assert (path.parent / f).read_bytes()[:8] == PNG
    # table 1 row of the LoRA run carries its metrics, memory and parameters
    row = next(line for line in text.splitlines() if line.startswith("| LoRA r-4 |"))
    assert "0.50 GB CPU RSS" in row and "5.0 k" in row


def test_report_tables_only_and_cli(runs: list[Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from floodlora.cli import app

    args = ["report", str(runs[0]), str(runs[1]), "--out", str(tmp_path), "--no-figures"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    text = (tmp_path / "report.md").read_text()
    assert "![" not in text and "| Frozen encoder |" in text and "## Baselines" not in text
    bad = CliRunner().invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0
