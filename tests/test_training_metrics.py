"""Paper metrics against hand-counted confusion matrices (nodata included), and the loss's masking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from floodlora.metrics import (
    ChipConfusion,
    FloodConfusion,
    best_f1_threshold,
    counts_at,
    operating_threshold,
    otsu_threshold,
    probability_histogram,
    scores_at,
    scores_from_counts,
)
from floodlora.training.losses import bce_dice_loss

# 2 chips x 2 x 3. Target: 1 flood, 0 dry, 255 nodata. Probabilities chosen around 0.5.
TARGET = np.array(
    [
        [[1, 1, 0], [0, 255, 1]],
        [[0, 0, 1], [255, 1, 0]],
    ],
    dtype=np.uint8,
)
PROBS = np.array(
    [
        [[0.9, 0.4, 0.6], [0.1, 0.99, 0.5]],
        [[0.2, 0.7, 0.8], [0.95, 0.3, 0.05]],
    ],
    dtype=np.float32,
)
VALID = np.ones_like(TARGET, dtype=bool)
VALID[1, 0, 0] = False  # an invalid pixel with a label: ignored too


def test_counts_at_half_by_hand() -> None:
    # chip 0 (nodata at [1,1]): tp (0.9, 0.5), fn (0.4), fp (0.6), tn (0.1)
    # chip 1 (nodata at [1,0], invalid [0,0]): tp (0.8), fn (0.3), fp (0.7), tn (0.05)
    hist = probability_histogram(PROBS, TARGET, VALID)
    assert counts_at(hist, 0.5) == {"tp": 3, "fp": 2, "fn": 2, "tn": 2}
    scores = scores_from_counts(3, 2, 2, 2)
    assert scores["accuracy"] == pytest.approx(5 / 9)
    assert scores["precision"] == pytest.approx(3 / 5)
    assert scores["recall"] == pytest.approx(3 / 5)
    assert scores["f1"] == pytest.approx(0.6) == scores["dice"]
    assert scores["iou"] == pytest.approx(3 / 7)
    # at 0.75 only 0.9 and 0.8 are flood: tp 2, fp 0, fn 3, tn 4
    assert counts_at(hist, 0.75) == {"tp": 2, "fp": 0, "fn": 3, "tn": 4}


def test_torchmetrics_state_matches_and_accepts_numpy_and_hard_masks() -> None:
    metric = FloodConfusion()
    metric.update(torch.from_numpy(PROBS[:1]), torch.from_numpy(TARGET[:1]), torch.from_numpy(VALID[:1]))
    metric.update(PROBS[1:], TARGET[1:], VALID[1:])  # numpy, as the baselines pass
    out = metric.compute()
    assert float(out["f1"]) == pytest.approx(0.6)
    assert float(out["iou"]) == pytest.approx(3 / 7)
    hard = FloodConfusion()
    hard.update((PROBS >= 0.5).astype(np.uint8), TARGET, VALID)
    assert hard.scores() == pytest.approx(metric.scores())


def test_best_threshold_and_zero_division() -> None:
    hist = probability_histogram(PROBS, TARGET, VALID)
    threshold, f1 = best_f1_threshold(hist)
    # positives .9 .4 .5 .8 .3, negatives .6 .1 .7 .05: any t in (0.1, 0.3] gives tp 5, fp 2, fn 0
    # -> F1 10/12, the best; ties resolve towards 0.5, so t = 0.3.
    assert f1 == pytest.approx(10 / 12)
    assert threshold == pytest.approx(0.3)
    # tolerance 0 is the F1-optimal threshold; a tolerance takes the highest threshold within it
    assert operating_threshold(hist, 0.0) == best_f1_threshold(hist)
    # t in (0.3, 0.4]: tp 4, fp 2, fn 1 -> F1 8/11 (0.106 below the best); (0.4, 0.5]: tp 3, fp 2 -> 6/10
    assert operating_threshold(hist, 0.11) == pytest.approx((0.4, 8 / 11))
    assert operating_threshold(hist, 0.05) == pytest.approx((0.3, 10 / 12))
    dry = probability_histogram(PROBS, np.zeros_like(TARGET), VALID)  # no flood: F1 0 everywhere
    assert operating_threshold(dry, 0.01) == best_f1_threshold(dry)
    # with an anchor: of the thresholds within the tolerance of the best, the one nearest the anchor
    assert operating_threshold(hist, 0.0, anchor=0.5) == best_f1_threshold(hist)
    assert operating_threshold(hist, 0.0, anchor=0.9) == pytest.approx((0.3, 10 / 12))
    assert operating_threshold(hist, 0.11, anchor=0.5) == pytest.approx((0.4, 8 / 11))
    assert operating_threshold(hist, 0.25, anchor=0.5) == pytest.approx((0.5, 6 / 10))
    assert operating_threshold(hist, 0.25, anchor=0.35)[0] == pytest.approx(0.35)
    assert operating_threshold(dry, 0.01, anchor=0.5) == best_f1_threshold(dry)
    # a dry chip predicted dry: F1 / IoU / Dice 1 (the one convention, shared with analysis.panels)
    assert scores_from_counts(0, 0, 0, 5) == {
        "accuracy": 1.0, "precision": 0.0, "recall": 0.0, "f1": 1.0, "iou": 1.0, "dice": 1.0,
    }  # fmt: skip
    assert scores_from_counts(0, 1, 0, 5)["f1"] == 0.0 and scores_from_counts(0, 0, 1, 5)["iou"] == 0.0


def test_dry_chip_f1_is_the_same_in_metrics_and_panels() -> None:
    from floodlora.analysis.panels import chip_f1
    from floodlora.data.sample import Sample, SampleMeta

    dry = np.zeros((4, 4), np.float32)
    s = Sample(
        {"post": {"vv": dry, "vh": dry}}, np.zeros((4, 4), np.uint8), SampleMeta("d", "e", "folder", "db")
    )
    chips = ChipConfusion()
    chips.update(np.zeros((1, 4, 4)), np.zeros((1, 4, 4), np.uint8), None, ["d"], ["e"])
    assert chip_f1(np.zeros((4, 4)), s) == chips.report()["per_chip"]["d"]["f1"] == 1.0
    assert chip_f1(np.ones((4, 4)), s) == 0.0


def test_equal_chip_ids_from_two_roots_are_two_chips() -> None:
    chips = ChipConfusion()
    chips.update(PROBS, TARGET, VALID, ["a", "a"], ["ev1", "ev2"], keys=["folder:/r1/a", "folder:/r2/a"])
    report = chips.report(0.5)
    assert report["n_chips"] == 2 and report["n_pixels"] == 9
    assert {v["chip_id"] for v in report["per_chip"].values()} == {"a"}
    assert set(report["per_chip"]) == {"folder:/r1/a", "folder:/r2/a"}


def test_per_chip_and_per_event_breakdown() -> None:
    chips = ChipConfusion()
    chips.update(PROBS, TARGET, VALID, ["a", "b"], ["ev1", "ev2"])
    chips.update(PROBS[:1], TARGET[:1], VALID[:1], ["a"], ["ev1"])  # a repeated chip counts once
    report = chips.report(0.5)
    assert report["n_chips"] == 2 and report["n_pixels"] == 9
    assert report["counts"] == {"tp": 3, "fp": 2, "fn": 2, "tn": 2}
    assert report["per_chip"]["a"]["precision"] == pytest.approx(2 / 3)  # tp 2, fp 1
    assert report["per_event"]["ev2"]["recall"] == pytest.approx(1 / 2)  # tp 1, fn 1
    assert set(report["per_event"]) == {"ev1", "ev2"}


def test_loss_ignores_nodata_and_invalid() -> None:
    logits = torch.tensor(np.log(PROBS / (1 - PROBS)))
    mask, valid = torch.from_numpy(TARGET), torch.from_numpy(VALID)
    loss, parts = bce_dice_loss(logits, mask, valid)
    # change the prediction only where no label counts: the loss must not move
    changed = logits.clone()
    changed[0, 1, 1] = -20.0
    changed[1, 1, 0] = 20.0
    changed[1, 0, 0] = 20.0
    loss2, _ = bce_dice_loss(changed, mask, valid)
    assert float(loss2) == pytest.approx(float(loss))
    keep = (TARGET != 255) & VALID
    t, p = (TARGET == 1)[keep].astype(np.float64), PROBS[keep].astype(np.float64)
    bce = -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))
    dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    assert float(parts["bce"]) == pytest.approx(bce, rel=1e-5)
    assert float(parts["dice"]) == pytest.approx(dice, rel=1e-5)
    assert float(loss) == pytest.approx(bce + dice, rel=1e-5)
    empty, _ = bce_dice_loss(logits, torch.full_like(mask, 255), valid)
    assert float(empty) == 0.0


def _spread(lo: float, hi: float, n: int) -> torch.Tensor:
    return torch.linspace(lo, hi, n)


def test_otsu_threshold_finds_the_valley_without_labels() -> None:
    probs = torch.cat([_spread(0.0, 0.3, 4000), _spread(0.7, 1.0, 1000)])
    labels = torch.cat([torch.zeros(4000), torch.ones(1000)])
    hist = probability_histogram(probs, labels)
    t = otsu_threshold(hist)
    assert 0.3 < t <= 0.7
    assert scores_at(hist, t)["f1"] == 1.0
    assert otsu_threshold(probability_histogram(probs, 1 - labels)) == t  # labels play no part
    assert otsu_threshold(probability_histogram(torch.full((10,), 0.3), torch.zeros(10))) == 0.5


def test_event_otsu_sets_each_events_own_operating_point() -> None:
    # Event a: dry 0-0.2, flood 0.3-0.4; event b: dry 0.5-0.7, flood 0.9-1. No one threshold
    # separates both (a's flood sits below b's dry land); a threshold per event does.
    chips = ChipConfusion()
    for event, (dry, flood) in {"a": ((0.0, 0.2), (0.3, 0.4)), "b": ((0.5, 0.7), (0.9, 1.0))}.items():
        probs = torch.cat([_spread(*dry, 3000), _spread(*flood, 1000)]).view(1, 1, -1)
        mask = torch.cat([torch.zeros(3000), torch.ones(1000)]).view(1, 1, -1)
        chips.update(probs, mask, None, [event], [event])
    report = chips.event_otsu_report()
    assert report["f1"] == 1.0 and report["recall"] == 1.0
    assert 0.2 < report["thresholds"]["a"] <= 0.3 and 0.7 < report["thresholds"]["b"] <= 0.9
    assert best_f1_threshold(chips.total())[1] < 0.95
