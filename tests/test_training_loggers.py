"""train.logger: the CSV log always, plus TensorBoard event files or an MLflow file-store run."""

from __future__ import annotations

from pathlib import Path

import pytest

from floodlora.config import RunConfig, load_config
from floodlora.errors import ConfigError
from floodlora.training.engine import train_run


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from floodlora.data.synthetic import write_folder_dataset

    root = tmp_path_factory.mktemp("data") / "syn"
    write_folder_dataset(root, 6, 32, splits={"train": 0.5, "val": 0.5})
    return root


def _config(data: Path, logger: str) -> RunConfig:
    cfg = load_config(None, {"train.logger": logger})
    cfg.data.roots = [str(data)]
    cfg.data.crop_size = 32
    cfg.data.batch_size = 2
    cfg.model.checkpoint = "random:test-micro"
    cfg.model.strategy = "lora"
    cfg.model.lora_rank = 2
    cfg.train.max_epochs = 2
    cfg.train.early_stopping_patience = 5
    return cfg


def test_unknown_logger_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"train\.logger: 'wandb' is not one of csv, tensorboard, mlflow"):
        load_config(None, {"train.logger": "wandb"})


def test_tensorboard_event_file(tiny_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train_run(_config(tiny_data, "tensorboard"), run)
    assert (run / "logs" / "metrics.csv").is_file()
    events = list((run / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train_loss_step", "val_loss", "val_f1"} <= tags
    assert [e.step for e in acc.Scalars("val_loss")] == sorted({e.step for e in acc.Scalars("val_loss")})
    assert len(acc.Scalars("val_loss")) == 2  # one per epoch
    assert (run / "logs" / "tensorboard" / "hparams.yaml").is_file()


def test_mlflow_file_store_run(tiny_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run = tmp_path / "run"
    train_run(_config(tiny_data, "mlflow"), run)
    client = MlflowClient(tracking_uri=(run / "mlruns").as_uri())
    exp = client.get_experiment_by_name("floodlora")
    assert exp is not None
    (found,) = client.search_runs([exp.experiment_id])
    assert found.info.run_name == "run" and found.info.status == "FINISHED"
    params = found.data.params
    assert params["model.strategy"] == "lora" and params["model.lora_rank"] == "2"
    assert params["train.logger"] == "mlflow"
    assert {"train_loss_step", "val_loss", "val_f1"} <= set(found.data.metrics)
    history = client.get_metric_history(found.info.run_id, "val_loss")
    assert len(history) == 2 and all(h.value > 0 for h in history)
