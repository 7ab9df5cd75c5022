"""ETCI 2021 Flood Detection: ``<region>/tiles/{vv,vh,flood_label,water_body_label}/`` PNG tiles.

Post-event only, VV and VH as separate 8-bit PNGs (RGB with three identical channels, rescaled to
0..255 by the organisers: units ``scaled-uint8``). Pixels where VV = VH = 255 are nodata (white tiles
at scene edges). The target is ``flood_label`` (0/255), which already contains most permanent water;
``water_body_label`` is kept as a file reference in ``ChipRef.files`` only. Not georeferenced; the
acquisition date/time is parsed from the region folder name (``nebraska_20170213t002121``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from floodlora.data.sample import MASK_NODATA, Sample, SampleMeta, check_sample
from floodlora.data.sources._common import ChipRef, binary_mask, read_png, walk
from floodlora.errors import DataError, size_text

FORMAT = "etci2021"
UNITS = "scaled-uint8"
# what a label marks: all open water in the post-event image, permanent water included
LABELS = "water"
_VV = re.compile(r"^(.+)_vv\.png$", re.IGNORECASE)
_STAMP = re.compile(r"(\d{4})(\d{2})(\d{2})t(\d{2})(\d{2})(\d{2})", re.IGNORECASE)


def _tile_dirs(root: Path) -> list[Path]:
    """Folders (normally named ``tiles``) with a ``vv`` sub-folder next to ``vh`` or ``flood_label``."""
    return [p for p, d, _ in walk(root) if "vv" in d and ({"vh", "flood_label"} & set(d))]


def detect(root: Path) -> bool:
    return bool(_tile_dirs(root))


def _region(tiles: Path) -> str:
    return tiles.parent.name if tiles.name.lower() == "tiles" else tiles.name


def _date(region: str) -> str | None:
    m = _STAMP.search(region)
    if not m:
        return None
    y, mo, d, h, mi, s = m.groups()
    return f"{y}-{mo}-{d}T{h}:{mi}:{s}"


def discover(root: Path) -> list[ChipRef]:
    refs = []
    for tiles in _tile_dirs(Path(root)):
        region = _region(tiles)
        event = f"etci2021-{region.split('_')[0]}"
        labelled = (tiles / "flood_label").is_dir()
        for name in sorted(p.name for p in (tiles / "vv").iterdir()):
            m = _VV.match(name)
            if not m:
                continue
            base = m.group(1)
            files = {
                "vv": str(tiles / "vv" / name),
                "vh": str(tiles / "vh" / f"{base}_vh.png"),
            }
            if labelled:
                files["mask"] = str(tiles / "flood_label" / f"{base}.png")
                files["water_body"] = str(tiles / "water_body_label" / f"{base}.png")
            refs.append(
                ChipRef(
                    base, event, FORMAT, None, files, UNITS, labelled=labelled, extra={"date": _date(region)}
                )
            )
    return refs


def read(ref: ChipRef) -> Sample:
    vv = read_png(ref.files["vv"]).astype(np.float32)
    vh = read_png(ref.files["vh"]).astype(np.float32)
    if vv.shape != vh.shape:
        raise DataError(
            f"{ref.files['vh']}: views have different shapes (vh is {size_text(*vh.shape)}, "
            f"vv is {size_text(*vv.shape)})"
        )
    nodata = (vv == 255) & (vh == 255)
    vv[nodata] = np.nan
    vh[nodata] = np.nan
    mask = None
    if "mask" in ref.files:
        mask = binary_mask(read_png(ref.files["mask"]), ref.files["mask"], {0: 0, 255: 1})
        if mask.shape == nodata.shape:
            mask[nodata] = MASK_NODATA
    meta = SampleMeta(
        chip_id=ref.chip_id,
        event=ref.event,
        source=FORMAT,
        units=UNITS,
        split=ref.split,
        date=ref.extra.get("date"),
    )
    return check_sample(Sample(views={"post": {"vv": vv, "vh": vh}}, mask=mask, meta=meta), ref.files["vv"])
