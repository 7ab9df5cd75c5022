"""The LightningModule of the reference recipe: BCE + Dice, Adam, ReduceLROnPlateau on val loss.

Validation logs `val_loss` (drives the LR schedule and early stopping) and the paper metrics at
threshold 0.5 (`val_f1`, `val_iou`, ...) plus the F1-optimal threshold, all synchronised across DDP
ranks by torchmetrics. The test loop fills a per-chip :class:`ChipConfusion` that evaluation turns
into overall / per-event / per-chip reports. Lightning checkpoints leave out frozen base weights
(they come from the base checkpoint), so `last.ckpt` of a LoRA run stays small.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch import Tensor

from floodlora.config import TrainConfig
from floodlora.metrics import ChipConfusion, FloodConfusion, best_f1_threshold
from floodlora.models.inputs import model_inputs
from floodlora.models.segmentor import FloodSegmentor
from floodlora.models.strategies import strategy_of
from floodlora.training.losses import bce_dice_loss


class FloodSegmentationTask(pl.LightningModule):
    """Trains a :class:`FloodSegmentor` with the reference loss, optimiser and schedule."""

    def __init__(self, model: FloodSegmentor, train: TrainConfig | None = None) -> None:
        super().__init__()
        self.model = model
        self.train_cfg = train or TrainConfig()
        self.val_metric = FloodConfusion()
        self.test_chips = ChipConfusion()
        self.missing_views: set[str] = set()  # declared views absent from evaluated data
        self.strict_loading = False  # checkpoints omit frozen base weights

    def forward(self, batch: Mapping[str, Any]) -> Tensor:
        """Logits `[B, 1, H, W]`: for each chip, the output of its own label kind (flood or water)."""
        if "features" in batch:  # feature-cache batches (frozen encoder): the decoder only
            logits = self.model.decode(batch["features"], batch.get("views"))
            present = list(batch["features"])
        else:
            views, time, latlon = model_inputs(self.model, batch)
            logits = self.model.forward_all(views, time, latlon)
            present = list(views)
        return self.model.select_outputs(logits, batch.get("label_kind"), present)

    def _loss(self, logits: Tensor, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        return bce_dice_loss(
            logits, batch["mask"], batch.get("valid"), self.train_cfg.bce_weight, self.train_cfg.dice_weight
        )

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        logits = self(batch)
        loss, parts = self._loss(logits, batch)
        n = int(batch["mask"].shape[0])
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=n, sync_dist=True)
        self.log_dict(
            {f"train_{k}": v for k, v in parts.items()}, on_epoch=True, batch_size=n, sync_dist=True
        )
        return loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        logits = self(batch)
        loss, _ = self._loss(logits, batch)
        self.log(
            "val_loss",
            loss,
            prog_bar=True,
            on_epoch=True,
            batch_size=int(batch["mask"].shape[0]),
            sync_dist=True,
        )
        self.val_metric.update(torch.sigmoid(logits.float()), batch["mask"], batch.get("valid"))

    def on_validation_epoch_end(self) -> None:
        scores = self.val_metric.compute()  # synced across ranks
        with self.val_metric.sync_context():
            threshold, best_f1 = best_f1_threshold(self.val_metric.hist.cpu())
        for k, v in scores.items():
            self.log(f"val_{k}", v.to(self.device), prog_bar=k == "f1")
        self.log("val_best_threshold", threshold)
        self.log("val_best_f1", best_f1)
        self.val_metric.reset()

    def on_test_epoch_start(self) -> None:
        self.test_chips = ChipConfusion()

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        probs = torch.sigmoid(self(batch).float())
        self.missing_views.update(self.model.last_missing_views)
        ids = batch.get("chip_id") or [f"{batch_idx}:{i}" for i in range(probs.shape[0])]
        events = batch.get("event") or ["unknown"] * probs.shape[0]
        keys = batch.get("chip_key") or ids
        kinds = batch.get("label_kind")
        self.test_chips.update(probs, batch["mask"], batch.get("valid"), ids, events, keys, kinds)

    def on_test_epoch_end(self) -> None:
        """Gather every rank's chips so that each rank holds the full, de-duplicated split."""
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            gathered: list[ChipConfusion | None] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, self.test_chips)
            merged = ChipConfusion(self.test_chips.nbins)
            self.test_chips = merged.merge(g for g in gathered if g is not None)

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.train_cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss", "interval": "epoch"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep what the strategy stores: frozen base weights stay in the base checkpoint."""
        strategy = strategy_of(self.model)
        for key in ("state_dict", "current_model_state"):  # the latter: the last step's, with averaging
            if key in checkpoint:
                checkpoint[key] = strategy.checkpoint_filter(checkpoint[key], prefix="model.")


class StoredWeightAveraging(WeightAveraging):
    """Lightning's uniform weight averaging (SWA over every optimiser step), resumable from this
    project's checkpoints, which leave out the frozen base weights: a frozen weight's average is
    its own value, so it is taken from the model on resume."""

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._average_model is None or "averaging_state" not in checkpoint:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
            return
        average = {f"module.{k}": v for k, v in pl_module.state_dict().items()}
        average |= {f"module.{k}": v for k, v in checkpoint["state_dict"].items()}
        self._average_model.load_state_dict(average | checkpoint["averaging_state"])
        pl_module.load_state_dict(checkpoint["current_model_state"], strict=False)
