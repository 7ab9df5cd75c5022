"""What a segmentor takes from a data batch: its declared views, the time and location codes.

Training, evaluation, analysis and benchmarks all call the model on DataModule batches; this is the
one conversion, free of Lightning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from floodlora.models.segmentor import FloodSegmentor


def model_inputs(
    model: FloodSegmentor, batch: Mapping[str, Any]
) -> tuple[dict[str, Tensor], Tensor | Mapping[str, Tensor] | None, Tensor | None]:
    """The batch's views the model declares (others dropped), with time / latlon when present.

    `time` is one code per view (`{view: [B, 4]}`, each view's own acquisition date) or one `[B, 4]`
    shared by the views.
    """
    views = {k: v for k, v in batch["views"].items() if k in model.views and v is not None}
    time = batch.get("time")
    latlon = batch.get("latlon")
    if isinstance(time, Mapping):
        time = {k: t for k, t in time.items() if k in views and isinstance(t, Tensor)}
    elif not isinstance(time, Tensor):
        time = None
    return views, time, latlon if isinstance(latlon, Tensor) else None
