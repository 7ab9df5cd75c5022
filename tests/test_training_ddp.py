"""Lightning DDP on CPU (gloo, 2 processes): metrics synchronised across ranks, one run directory."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from floodlora.training.engine import evaluate_run


@pytest.mark.slow
def test_two_process_ddp_run(tmp_path: Path) -> None:
    from floodlora.data.synthetic import write_folder_dataset

    data = tmp_path / "data"
    # 8 train, 4 val, 4 test: every rank gets 2 val and 2 test chips, no sampler padding.
    write_folder_dataset(data, 16, 64, splits={"train": 0.5, "val": 0.25, "test": 0.25})
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "floodlora.cli", "train", "--data", str(data), "--out", str(run),
           "--strategy", "lora", "--rank", "2", "--checkpoint", "random:test-micro", "--max-epochs", "1",
           "--devices", "2", "--accelerator", "cpu", "--set", "data.crop_size=32",
           "--set", "data.batch_size=2", "--set", "train.limit_train_batches=2"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    # One run directory, written once (rank 0), with the files of a normal run.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run"]
    logs = sorted(p.name for p in (run / "logs").iterdir())
    assert "metrics.csv" in logs and not any(n.startswith("version_") for n in logs)
    assert (run / "weights.safetensors").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    acc = json.loads((run / "accounting.json").read_text())
    assert acc["world_size"] == 2
    metrics = json.loads((run / "metrics.json").read_text())
    # Both ranks' halves were gathered: the reports cover every chip of the split.
    assert metrics["val"]["n_chips"] == 4 and metrics["test"]["n_chips"] == 4

    # The val F1 logged during training (torchmetrics state summed across ranks) equals the F1 over
    # all val chips; a rank-local value would only see half of them.
    with open(run / "logs" / "metrics.csv") as fh:
        logged = [float(r["val_f1"]) for r in csv.DictReader(fh) if r.get("val_f1")]
    assert len(logged) == 1
    assert logged[0] == pytest.approx(metrics["val"]["f1"], abs=1e-6)
    # And a single-process evaluation of the saved run reproduces the distributed one.
    single = evaluate_run(run, split="val", threshold=0.5)
    assert single["f1"] == pytest.approx(metrics["val"]["f1"], abs=1e-6)
    assert single["counts"] == metrics["val"]["counts"]
