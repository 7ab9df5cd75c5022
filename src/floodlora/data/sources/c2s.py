"""C2S-MS Floods (DrivenData "STAC Overflow"): ``<chip>_vv.tif``, ``<chip>_vh.tif`` and label ``<chip>.tif``.

Post-event float32 dB GeoTIFFs at 10 m UTM; 0.0 in the imagery is missing data (the files declare
nodata = 0); the uint8 label holds 0 = no water, 1 = water, 255 = missing. The label sits beside the
imagery or in a sibling folder whose name contains ``label`` (the competition's ``train_labels``).
The event is the flood id, the letters of the chip id (``jja10`` -> ``c2s-jja``).
"""

from __future__ import annotations

import re
from pathlib import Path

from floodlora.data.sample import Sample, check_sample
from floodlora.data.sources._common import ChipRef, binary_mask, georeferenced_meta, read_tif, to_float, walk
from floodlora.errors import DataError, size_text

FORMAT = "c2s"
UNITS = "db"
# what a label marks: all open water in the post-event image, permanent water included
LABELS = "water"
_VV = re.compile(r"^(.+)_vv\.tif{1,2}$", re.IGNORECASE)
_FLOOD_ID = re.compile(r"^([A-Za-z]+)\d*$")


def _chips(root: Path) -> list[tuple[Path, str, str]]:
    """(folder, chip id, vv file name) for each ``*_vv.tif`` that has a ``*_vh.tif`` partner."""
    out = []
    for path, _, files in walk(root):
        names = set(files)
        for name in files:
            m = _VV.match(name)
            if m and (f"{m.group(1)}_vh.tif" in names or f"{m.group(1)}_vh.tiff" in names):
                out.append((path, m.group(1), name))
    return out


def detect(root: Path) -> bool:
    return bool(_chips(root))


def _label_path(folder: Path, chip: str) -> Path | None:
    candidates = [folder]
    if folder.parent.is_dir():
        candidates += sorted(p for p in folder.parent.iterdir() if p.is_dir() and "label" in p.name.lower())
    for cand_dir in candidates:
        for ext in (".tif", ".tiff"):
            cand = cand_dir / f"{chip}{ext}"
            if cand.is_file():
                return cand
    return None


def discover(root: Path) -> list[ChipRef]:
    refs = []
    for folder, chip, vv_name in _chips(Path(root)):
        vh = folder / re.sub(r"_vv(\.tiff?)$", r"_vh\1", vv_name, flags=re.IGNORECASE)
        files = {"vv": str(folder / vv_name), "vh": str(vh)}
        label = _label_path(folder, chip)
        if label is not None:
            files["mask"] = str(label)
        m = _FLOOD_ID.match(chip)
        event = f"c2s-{m.group(1).lower() if m else chip}"
        refs.append(ChipRef(chip, event, FORMAT, None, files, UNITS, labelled=label is not None))
    return refs


def read(ref: ChipRef) -> Sample:
    vv_r = read_tif(ref.files["vv"], bands=1)
    vh_r = read_tif(ref.files["vh"], bands=1)
    vv = to_float(vv_r.data[0], vv_r.nodata, zero_is_nodata=True)
    vh = to_float(vh_r.data[0], vh_r.nodata, zero_is_nodata=True)
    if vh.shape != vv.shape:  # name the file that differs, not the chip's first file
        raise DataError(
            f"{ref.files['vh']}: views have different shapes (vh is {size_text(*vh.shape)}, "
            f"vv is {size_text(*vv.shape)})"
        )
    mask = None
    if "mask" in ref.files:
        lab = read_tif(ref.files["mask"], bands=1)
        mask = binary_mask(lab.data[0], ref.files["mask"], {0: 0, 1: 1, 255: 255})
    meta = georeferenced_meta(ref, FORMAT, UNITS, vv_r.crs, vv_r.transform, vv.shape)
    return check_sample(Sample(views={"post": {"vv": vv, "vh": vh}}, mask=mask, meta=meta), ref.files["vv"])
