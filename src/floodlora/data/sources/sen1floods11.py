"""Sen1Floods11 hand-labelled chips: ``<id>_S1Hand.tif`` (band 1 VV, band 2 VH, dB) + ``<id>_LabelHand.tif``.

The label is int16 with -1 = nodata, 0 = not water, 1 = water. The label sits either beside the image
(the repository's ``sample/`` folder) or in a sibling ``LabelHand`` folder (the full release:
``HandLabeled/S1Hand`` and ``HandLabeled/LabelHand``). NaN in the image is nodata. Georeferenced
(EPSG:4326 in the release). The event is the country prefix of the chip id (``Spain_7370579``).
"""

from __future__ import annotations

import re
from pathlib import Path

from floodlora.data.sample import MASK_NODATA, Sample, check_sample
from floodlora.data.sources._common import ChipRef, binary_mask, georeferenced_meta, read_tif, to_float, walk

FORMAT = "sen1floods11"
UNITS = "db"
# what a label marks: all open water in the post-event image, permanent water included
LABELS = "water"
_IMG = re.compile(r"^(.+)_S1Hand\.tif{1,2}$", re.IGNORECASE)


def _images(root: Path) -> list[tuple[Path, str]]:
    out = []
    for path, _, files in walk(root):
        for name in files:
            m = _IMG.match(name)
            if m:
                out.append((path / name, m.group(1)))
    return out


def detect(root: Path) -> bool:
    return bool(_images(root))


def _label_path(image: Path, chip: str) -> Path | None:
    for folder in (image.parent, image.parent.parent / "LabelHand"):
        for ext in (".tif", ".tiff"):
            cand = folder / f"{chip}_LabelHand{ext}"
            if cand.is_file():
                return cand
    return None


def discover(root: Path) -> list[ChipRef]:
    refs = []
    for image, chip in _images(Path(root)):
        label = _label_path(image, chip)
        files = {"image": str(image)}
        if label is not None:
            files["mask"] = str(label)
        event = f"sen1floods11-{chip.split('_')[0]}"
        refs.append(ChipRef(chip, event, FORMAT, None, files, UNITS, labelled=label is not None))
    return refs


def read(ref: ChipRef) -> Sample:
    img = read_tif(ref.files["image"], bands=2)
    vv = to_float(img.data[0], img.nodata)
    vh = to_float(img.data[1], img.nodata)
    mask = None
    if "mask" in ref.files:
        lab = read_tif(ref.files["mask"], bands=1)
        mask = binary_mask(lab.data[0], ref.files["mask"], {-1: MASK_NODATA, 0: 0, 1: 1})
    meta = georeferenced_meta(ref, FORMAT, UNITS, img.crs, img.transform, vv.shape)
    return check_sample(
        Sample(views={"post": {"vv": vv, "vh": vh}}, mask=mask, meta=meta), ref.files["image"]
    )
