"""Resource accounting: what adapting a model costs, recorded by a Lightning callback.

Reported per run (accounting.json, and a column in every table): peak memory (CUDA max allocated on
GPU, peak process RSS on CPU), trainable / total parameters, seconds per epoch, training samples per
second, and time to the best validation F1 - the "rapid" in rapid adaptation.

Memory caps. `TrainConfig.memory_cap_gb` simulates a smaller accelerator. On CUDA it becomes the
process's memory fraction, so the allocator raises a real out-of-memory error. On CPU there is no
accelerator to cap, so the callback keeps the figure a GPU would need, *tensor memory*: weights +
gradients + Adam moments (exact, from the parameter counts) + the activations autograd saves for
backward (measured every step with saved-tensor hooks). Crossing the cap raises
:class:`OutOfMemoryError`, which a sweep shows as "OOM", as the paper does for full fine-tuning.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from floodlora.errors import FloodLoraError
from floodlora.models.strategies import count_parameters

GB = 1024**3
FP32_BYTES = 4
ADAM_MOMENTS = 2


class OutOfMemoryError(FloodLoraError):
    """A run needed more memory than the accelerator, or the configured memory cap, allows."""


def is_out_of_memory(err: BaseException) -> bool:
    """True for our cap error, torch's CUDA OOM, and CPU allocation failures."""
    if isinstance(err, OutOfMemoryError | torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def current_rss_bytes() -> int:
    import psutil

    return int(psutil.Process(os.getpid()).memory_info().rss)


class _RssSampler:
    """Samples the process RSS in a daemon thread: the peak *during* this fit, not since start-up."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.peak = current_rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="floodlora-rss", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, current_rss_bytes())

    def start(self) -> _RssSampler:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)
        self.peak = max(self.peak, current_rss_bytes())
        return self.peak


class _SavedActivations:
    """Counts the bytes autograd saves for backward in one forward pass (storages counted once)."""

    def __init__(self) -> None:
        self.bytes = 0
        self._seen: set[int] = set()
        self._ctx: Any = None

    def _pack(self, t: Tensor) -> Tensor:
        try:
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key not in self._seen:
                self._seen.add(key)
                self.bytes += storage.nbytes()
        except (RuntimeError, NotImplementedError):  # pragma: no cover - sparse or meta tensors
            pass
        return t

    def __enter__(self) -> _SavedActivations:
        self.bytes, self._seen = 0, set()
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = None


class ResourceAccounting(pl.Callback):
    """Measures memory, parameters, throughput and time-to-best-F1; enforces `memory_cap_gb`."""

    def __init__(self, memory_cap_gb: float | None = None, monitor: str = "val_f1") -> None:
        super().__init__()
        self.memory_cap_gb = memory_cap_gb
        self.monitor = monitor
        self.epoch_seconds: list[float] = []
        self.train_samples = 0
        self.train_seconds = 0.0
        self.best_f1: float | None = None
        self.best_epoch: int | None = None
        self.time_to_best_s: float | None = None
        self.elapsed_before_s = 0.0  # training time of earlier sessions of a resumed run
        self.params: dict[str, int] = {}
        self.state_bytes = 0
        self.activation_peak_bytes = 0
        self.peak_rss_bytes = 0
        self.cuda_peak_bytes: int | None = None
        self._t_fit = 0.0
        self._t_epoch = 0.0
        self._epoch_samples = 0
        self._t_val: float | None = None
        self._sampler: _RssSampler | None = None
        self._activations = _SavedActivations()
        self._tracking = False
        self.device_type = "cpu"

    # -- lifecycle --------------------------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = getattr(pl_module, "model", pl_module)
        counts = count_parameters(model)  # type: ignore[arg-type]
        self.params = counts.as_dict()
        # fp32 master weights, a gradient and two Adam moments per trainable parameter.
        self.state_bytes = FP32_BYTES * (counts.total + (1 + ADAM_MOMENTS) * counts.trainable)
        self.device_type = pl_module.device.type
        if self.device_type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
            if self.memory_cap_gb:
                total = torch.cuda.get_device_properties(pl_module.device).total_memory
                torch.cuda.set_per_process_memory_fraction(min(1.0, self.memory_cap_gb * GB / total))
        self._check_cap(self.state_bytes, "weights, gradients and optimiser state")
        self._sampler = _RssSampler().start()
        self._t_fit = time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t_epoch = time.perf_counter()
        self._t_val: float | None = None
        self._epoch_samples = 0

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.device_type != "cuda":
            self._activations.__enter__()
            self._tracking = True

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        if self._tracking:
            self._activations.__exit__()
            self._tracking = False
            self.activation_peak_bytes = max(self.activation_peak_bytes, self._activations.bytes)
            self._check_cap(self.tensor_bytes, "tensor memory (weights, gradients, optimiser, activations)")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._tracking:  # the step was skipped before backward
            self._activations.__exit__()
            self._tracking = False
        self._epoch_samples += _batch_size(batch)
        if self.device_type == "cuda":
            self.cuda_peak_bytes = int(torch.cuda.max_memory_allocated(pl_module.device))
            self._check_cap(self.cuda_peak_bytes, "CUDA memory")

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._t_val = time.perf_counter()  # the training part of this epoch ends here

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Lightning validates before this hook: the epoch time includes validation, throughput not."""
        now = time.perf_counter()
        self.epoch_seconds.append(now - self._t_epoch)
        self.train_seconds += (self._t_val or now) - self._t_epoch
        self.train_samples += self._epoch_samples * max(1, trainer.world_size)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After the module's epoch-end hook has logged `val_f1` (callbacks' epoch-end hooks run first)."""
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        f1 = float(value)
        if self.best_f1 is None or f1 > self.best_f1:
            self.best_f1 = f1
            self.best_epoch = trainer.current_epoch
            self.time_to_best_s = self.elapsed_before_s + time.perf_counter() - self._t_fit

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self._tracking:
            self._activations.__exit__()
            self._tracking = False
        self._finish()

    def _finish(self) -> None:
        if self._sampler is not None:
            self.peak_rss_bytes = max(self.peak_rss_bytes, self._sampler.stop())
            self._sampler = None

    # -- checkpointing (so --resume keeps the clock and the best F1) ----------------------------

    def state_dict(self) -> dict[str, Any]:
        elapsed = self.elapsed_before_s + (time.perf_counter() - self._t_fit if self._t_fit else 0.0)
        return {
            "epoch_seconds": list(self.epoch_seconds),
            "train_samples": self.train_samples,
            "train_seconds": self.train_seconds,
            "best_f1": self.best_f1,
            "best_epoch": self.best_epoch,
            "time_to_best_s": self.time_to_best_s,
            "elapsed_s": elapsed,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epoch_seconds = list(state_dict.get("epoch_seconds", []))
        self.train_samples = int(state_dict.get("train_samples", 0))
        self.train_seconds = float(state_dict.get("train_seconds", 0.0))
        self.best_f1 = state_dict.get("best_f1")
        self.best_epoch = state_dict.get("best_epoch")
        self.time_to_best_s = state_dict.get("time_to_best_s")
        self.elapsed_before_s = float(state_dict.get("elapsed_s", 0.0))

    # -- results ----------------------------------------------------------------------------------

    @property
    def tensor_bytes(self) -> int:
        return self.state_bytes + self.activation_peak_bytes

    def _check_cap(self, used_bytes: int, what: str) -> None:
        if self.memory_cap_gb is not None and used_bytes > self.memory_cap_gb * GB:
            raise OutOfMemoryError(
                f"out of memory: {what} needs {used_bytes / GB:.3f} GB, above the "
                f"{self.memory_cap_gb:g} GB cap (train.memory_cap_gb)"
            )

    def summary(self) -> dict[str, Any]:
        """The accounting.json content; memory in GB (1024^3 bytes), times in seconds."""
        peak = self.cuda_peak_bytes if self.device_type == "cuda" else self.peak_rss_bytes
        epochs = len(self.epoch_seconds)
        return {
            "device": self.device_type,
            "peak_memory_gb": (peak or 0) / GB,
            "peak_memory_kind": "cuda_max_allocated" if self.device_type == "cuda" else "cpu_peak_rss",
            "peak_rss_gb": self.peak_rss_bytes / GB,
            "tensor_memory_gb": self.tensor_bytes / GB,
            "activation_memory_gb": self.activation_peak_bytes / GB,
            "memory_cap_gb": self.memory_cap_gb,
            "trainable_params": self.params.get("trainable", 0),
            "total_params": self.params.get("total", 0),
            "encoder_trainable_params": self.params.get("encoder_trainable", 0),
            "decoder_params": self.params.get("decoder", 0),
            "epochs": epochs,
            "seconds_per_epoch": sum(self.epoch_seconds) / epochs if epochs else None,
            "train_seconds": self.train_seconds,
            "samples_per_second": self.train_samples / self.train_seconds if self.train_seconds else None,
            "best_val_f1": self.best_f1,
            "best_val_f1_epoch": self.best_epoch,
            "time_to_best_val_f1_s": self.time_to_best_s,
        }


def _batch_size(batch: Any) -> int:
    if isinstance(batch, dict) and isinstance(batch.get("mask"), Tensor):
        return int(batch["mask"].shape[0])
    return 0
