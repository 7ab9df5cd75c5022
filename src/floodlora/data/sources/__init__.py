"""Readers for the on-disk flood datasets, one module per format, plus discovery and auto-detection.

Each reader module exposes ``FORMAT``, ``detect(root) -> bool``, ``discover(root) -> list[ChipRef]``
and ``read(ref) -> Sample``. Users call :func:`discover` and :func:`read_sample` only.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from floodlora.data.sample import Sample
from floodlora.data.sources._common import ChipRef
from floodlora.errors import DataError

FORMATS: tuple[str, ...] = ("folder", "ombria", "etci2021", "sen1floods11", "c2s")

__all__ = ["FORMATS", "PSEUDO_MASK", "ChipRef", "detect_format", "discover", "get_reader", "read_sample"]


def get_reader(format: str) -> ModuleType:
    """The reader module for a format name (one of :data:`FORMATS`)."""
    if format not in FORMATS:
        raise DataError(f"unknown data format {format!r}; expected one of {', '.join(FORMATS)}")
    return importlib.import_module(f"floodlora.data.sources.{format}")


def _check_root(root: Path) -> None:
    if not root.exists():
        raise DataError(f"{root}: data directory not found")
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (pass the folder that holds the chips)")


def _matches(root: Path) -> list[str]:
    return [f for f in FORMATS if get_reader(f).detect(root)]


def detect_format(root: str | Path) -> str:
    """The one format whose layout `root` holds; a clear error when none or several match."""
    root = Path(root)
    _check_root(root)
    found = _matches(root)
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"{root}: no known dataset layout found (formats: {', '.join(FORMATS)})")
    raise DataError(
        f"{root}: ambiguous layout, matches {', '.join(found)}; pass --format or a narrower folder"
    )


def _discover_auto(root: Path, depth: int) -> list[ChipRef]:
    """Detect the format of `root`; a folder that mixes datasets is split into its sub-folders."""
    found = _matches(root)
    if len(found) == 1:
        return get_reader(found[0]).discover(root)
    refs: list[ChipRef] = []
    if depth < 3:  # several datasets side by side (or folder datasets one level down)
        for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if _matches(child) or any(_matches(g) for g in child.iterdir() if g.is_dir()):
                refs.extend(_discover_auto(child, depth + 1))
    if refs:
        return refs
    return get_reader(detect_format(root)).discover(root)  # raises the right message


def discover(roots: list[str | Path] | str | Path, format: str | None = None) -> list[ChipRef]:
    """All chips under one or several roots, in a deterministic order.

    `format=None` auto-detects per root; a root holding several datasets (e.g. a download folder with
    OMBRIA and ETCI side by side) is split into its sub-folders and each is detected on its own.
    """
    if isinstance(roots, str | Path):
        roots = [roots]
    if not roots:
        raise DataError("no data roots given (pass --data PATH)")
    refs: list[ChipRef] = []
    seen: set[tuple[str, ...]] = set()
    for raw in roots:
        root = Path(raw)
        _check_root(root)
        found = get_reader(format).discover(root) if format else _discover_auto(root, 0)
        for ref in found:
            key = tuple(sorted(ref.files.values()))
            if key not in seen:
                seen.add(key)
                refs.append(ref)
    if not refs:
        where = ", ".join(str(r) for r in roots)
        raise DataError(
            f"{where}: empty dataset, no chips found" + (f" for format {format}" if format else "")
        )
    return refs


#: ``ChipRef.extra`` key of a pseudo-label file (a uint8 ``.npy``) that replaces the chip's own mask
PSEUDO_MASK = "pseudo_mask"


def read_sample(ref: ChipRef) -> Sample:
    """Read one chip into a canonical :class:`~floodlora.data.sample.Sample`.

    A chip that carries pseudo-labels (``ref.extra[PSEUDO_MASK]``, written by self-adaptation) gets
    them as its mask in place of its own labels, if any, so that those cannot leak into training.
    """
    sample = ref.reader.read(ref)
    pseudo = ref.extra.get(PSEUDO_MASK)
    if pseudo is not None:
        import numpy as np

        mask = np.load(pseudo)
        if mask.shape != sample.shape:
            raise DataError(
                f"{pseudo}: pseudo-labels are {mask.shape}, the chip {ref.chip_id} is {sample.shape}"
            )
        sample.mask = mask.astype(np.uint8, copy=False)
    return sample
