"""The adaptation budgets as small typed options, apart from the training code.

Why a module of its own: the command line reads its defaults from here, and importing it must not
pull in torch or Lightning (`floodlora --help` stays fast).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from floodlora.errors import ConfigError

DEFAULT_RECIPE = "cpu-small"  # the recipe a bare encoder starts from (LoRA r8, hires decoder, lr 1e-3)
WHOLE_CHIP_MAX = 256  # default training sample: whole chips up to this side (larger ones are cropped)
STEP_PIXELS = 8 * 128 * 128  # default pixels per batch: the CPU recipes' 8 crops of 128 px
CALIBRATE_TOLERANCE = 0.01  # calibration: move FROM's operating point only as far as the chips demand
AFTER_TUNING_TOLERANCE = 0.0  # after fine-tuning: the best F1 on the chips (AdaptOptions.tolerance_for)


#: How `adapt` uses the labels: ``auto`` calibrates a trained FROM and fine-tunes a bare encoder.
METHODS = ("auto", "calibrate", "fine-tune")


@dataclass
class AdaptOptions:
    """The few-label budget. The defaults finish in minutes on a 2-core CPU for ~10 chips of 256 px."""

    steps_per_epoch: int = 4  # batches per epoch (chips drawn with replacement)
    batch_size: int | None = None  # None: as many samples as hold STEP_PIXELS (2 of 256 px)
    crop_size: int | None = None  # None: whole chips, their smallest side up to WHOLE_CHIP_MAX
    max_epochs: int = 20
    patience: int = 4  # epochs without improvement of the monitored loss
    lr: float = 1e-3
    max_minutes: float = 3.5  # wall-clock cap on fitting (setup and scoring come on top)
    holdout_fraction: float = 0.25
    min_holdout_chips: int = 8  # with hold_back: below this many labelled chips nothing is held back
    #: True: with at least min_holdout_chips, a quarter is held back for early stopping and the
    #: threshold. False (default): every chip trains, early stopping on their own loss; on the few-shot
    #: benchmark two or three held-back chips stopped too early and set a poor threshold (docs/quality.md)
    hold_back: bool = False
    flood_sampling: float = 0.7
    seed: int = 0
    recipe: str = DEFAULT_RECIPE  # config a bare encoder starts from (model + data settings)
    lora_rank: int | None = None  # bare encoder only; None: the recipe's rank
    #: bare encoder only: keep (True) or leave out (False) the recipe's hand-feature prior; None: as
    #: the recipe has it. Self-adaptation leaves it out (SELF_ADAPT; docs/quality.md measures both).
    prior: bool | None = None
    method: str = "auto"  # auto | calibrate (no training: thresholds set on the chips) | fine-tune
    #: the operating-point rule: of the thresholds within this F1 of the best on the chips, the one
    #: nearest the model's own (0: the best). None: CALIBRATE_TOLERANCE to calibrate, AFTER_TUNING_TOLERANCE
    #: after fine-tuning (tolerance_for)
    calibrate_tolerance: float | None = None
    #: fine-tune: then set each output's operating point on every labelled chip (tolerance_for("fine-tune"))
    calibrate_after: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"adapt: unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if (
            self.steps_per_epoch < 1
            or self.max_epochs < 1
            or (self.batch_size is not None and self.batch_size < 1)
        ):
            raise ConfigError("adapt: steps per epoch, batch size and max epochs must be >= 1")
        if self.crop_size is not None:
            from floodlora.data.datamodule import check_crop_size

            check_crop_size(self.crop_size, "adapt: crop size")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ConfigError(f"adapt: holdout fraction must be in (0, 1), got {self.holdout_fraction}")
        for name, value in (("lr", self.lr), ("max minutes", self.max_minutes)):
            if not (math.isfinite(value) and value > 0):  # NaN passes every comparison
                raise ConfigError(f"adapt: {name} must be a finite number > 0, got {value}")
        if self.calibrate_tolerance is not None and not 0.0 <= self.calibrate_tolerance < 1.0:
            raise ConfigError(f"adapt: calibrate tolerance must be in [0, 1), got {self.calibrate_tolerance}")

    def tolerance_for(self, method: str) -> float:
        """The operating-point tolerance of `method` (calibrate | fine-tune), unless one was given.

        Calibration moves a threshold learned on other events, which carries over; a few chips give a
        flat F1 curve near its top, so it moves only as far as they demand. After fine-tuning the
        model has just learned these very chips and its own threshold (0.5, or two or three held-back
        chips') says nothing about the event: their best F1 is the most informed point.
        """
        if self.calibrate_tolerance is not None:
            return self.calibrate_tolerance
        return CALIBRATE_TOLERANCE if method == "calibrate" else AFTER_TUNING_TOLERANCE


#: Self-adaptation's budget: more steps than few-label fine-tuning (pseudo-labels are plentiful),
#: a wall-clock cap that leaves a 5-minute budget room for the teacher and the operating point, and
#: no hand-feature prior. The prior's tile statistics (Otsu level,
#: quantiles) hardly vary over one scene's chips, so the prior fitted on them learns to threshold
#: against them and breaks where a tile's statistics differ (a scene's edge tiles at prediction).
SELF_ADAPT = AdaptOptions(method="fine-tune", steps_per_epoch=8, max_epochs=12, max_minutes=3.0, prior=False)
