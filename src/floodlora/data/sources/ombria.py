"""OMBRIA (OmbriaS1 and the "2021 flood events"): BEFORE/AFTER/MASK folders of 8-bit PNGs.

Two naming schemes share one layout: ``S1_before_0001.png`` / ``S1_after_0001.png`` /
``S1_mask_0001.png`` (OmbriaS1/train, OmbriaS1/test) and ``imbefore_1.png`` / ``imafter_1.png`` /
``gt_1.png`` (2021/<COUNTRY>/Sentinel1). One band (VV, per the dataset's notebook), already rescaled to
0..255 by the authors (units ``scaled-uint8``); masks are 0 (dry) / 255 (flooded); not georeferenced.
Pixels that are 255 in both the pre and the post image are nodata (fill strips at scene edges).
"""

from __future__ import annotations

import re
from pathlib import Path

from floodlora.data.sample import Sample, SampleMeta, check_sample
from floodlora.data.sources._common import ChipRef, binary_mask, read_png, walk

FORMAT = "ombria"
UNITS = "scaled-uint8"
# what a label marks: water the event brought (EMS rapid mapping, judged against the pre view)
LABELS = "flood"
_AFTER = re.compile(r"^(?:S1_after_|imafter_)(\d+)\.png$", re.IGNORECASE)
_SPLITS = {"train": "train", "test": "test", "val": "val", "valid": "val", "validation": "val"}


def _names(after_name: str, idx: str) -> tuple[str, str]:
    if after_name.lower().startswith("s1_"):
        return f"S1_before_{idx}.png", f"S1_mask_{idx}.png"
    return f"imbefore_{idx}.png", f"gt_{idx}.png"


def _chip_dirs(root: Path) -> list[Path]:
    """Folders that hold BEFORE/AFTER/MASK sub-folders."""
    out = []
    for path, dirnames, _ in walk(root):
        if {"AFTER", "BEFORE"} <= set(dirnames) and any(_AFTER.match(n) for n in _listdir(path / "AFTER")):
            out.append(path)
    return out


def _listdir(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else []


def detect(root: Path) -> bool:
    return bool(_chip_dirs(root))


def _event_and_split(chip_dir: Path) -> tuple[str, str | None]:
    """OmbriaS1/<split> -> 'ombria-OmbriaS1' + native split; 2021/FRANCE/Sentinel1 -> 'ombria-FRANCE'."""
    name = chip_dir.name
    if name.lower() in _SPLITS:
        return f"ombria-{chip_dir.parent.name}", _SPLITS[name.lower()]
    if name.lower() == "sentinel1":
        return f"ombria-{chip_dir.parent.name}", None
    return f"ombria-{name}", None


def discover(root: Path) -> list[ChipRef]:
    refs = []
    for chip_dir in _chip_dirs(Path(root)):
        event, split = _event_and_split(chip_dir)
        for after in _listdir(chip_dir / "AFTER"):
            m = _AFTER.match(after)
            if not m:
                continue
            idx = m.group(1)
            before, mask = _names(after, idx)
            files = {
                "pre": str(chip_dir / "BEFORE" / before),
                "post": str(chip_dir / "AFTER" / after),
                "mask": str(chip_dir / "MASK" / mask),
            }
            chip_id = f"{event}_{split}_{idx}" if split else f"{event}_{idx}"
            refs.append(ChipRef(chip_id, event, FORMAT, split, files, UNITS, labelled=True))
    return refs


def read(ref: ChipRef) -> Sample:
    views = {v: {"vv": read_png(ref.files[v]).astype("float32")} for v in ("pre", "post")}
    mask = binary_mask(read_png(ref.files["mask"]), ref.files["mask"], {0: 0, 255: 1})
    # Fill strips at scene edges are white (255) in both images (as in ETCI): nodata, not bright land.
    fill = (views["pre"]["vv"] == 255) & (views["post"]["vv"] == 255)
    if fill.any() and fill.shape == mask.shape:
        for v in ("pre", "post"):
            views[v]["vv"][fill] = float("nan")
        mask[fill] = 255
    meta = SampleMeta(chip_id=ref.chip_id, event=ref.event, source=FORMAT, units=UNITS, split=ref.split)
    return check_sample(Sample(views=views, mask=mask, meta=meta), ref.files["post"])
