"""Bad input: each case is a one-line DataError naming the file and the problem; the CLI exits 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from floodlora.data.sample import Sample, SampleMeta
from floodlora.data.sources import discover, read_sample
from floodlora.data.sources.folder import write_dataset_yaml, write_sample
from floodlora.errors import DataError


def _folder(root: Path, shape_post: tuple[int, int] = (16, 16), mask_value: int = 1) -> Path:
    pre = np.full((16, 16), -10.0, np.float32)
    post = np.full(shape_post, -12.0, np.float32)
    s = Sample({"pre": {"vv": pre, "vh": pre}}, None, SampleMeta("c", "ev", "folder", "db"))
    write_sample(s, root / "train" / "c")
    s2 = Sample({"post": {"vv": post, "vh": post}}, np.full(shape_post, mask_value, np.uint8), s.meta)
    write_sample(s2, root / "train" / "c")
    write_dataset_yaml(root, "db", ["pre", "post"], ["vv", "vh"], "ev")
    return root / "train" / "c"


def _ombria(root: Path) -> Path:
    for sub, name in (("BEFORE", "S1_before_0001"), ("AFTER", "S1_after_0001"), ("MASK", "S1_mask_0001")):
        (root / "train" / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "train" / sub / f"{name}.png")
    return root / "train"


def _one_line_error(ref_root: Path) -> str:
    with pytest.raises(DataError) as info:
        for ref in discover([ref_root]):
            read_sample(ref)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_missing_file(tmp_path: Path) -> None:
    d = _ombria(tmp_path)
    (d / "MASK" / "S1_mask_0001.png").unlink()
    msg = _one_line_error(tmp_path)
    assert msg == f"{d / 'MASK' / 'S1_mask_0001.png'}: file not found"


def test_views_of_different_shapes(tmp_path: Path) -> None:
    chip = _folder(tmp_path, shape_post=(20, 16))
    msg = _one_line_error(tmp_path)
    assert (
        msg.startswith(str(chip))
        and "views have different shapes (post/vv is 16x20 px, expected 16x16 px)" in msg
    )


def test_wrong_band_count(tmp_path: Path) -> None:
    chip = _folder(tmp_path)
    with rasterio.open(
        chip / "pre.tif",
        "w",
        driver="GTiff",
        width=16,
        height=16,
        count=3,
        dtype="float32",
        transform=from_origin(0, 16, 1, 1),
    ) as ds:
        ds.write(np.zeros((3, 16, 16), np.float32))
    msg = _one_line_error(tmp_path)
    assert msg == f"{chip / 'pre.tif'}: wrong band count: expected 2, found 3"


def _c2s(root: Path, vv_shape: tuple[int, int], vh_shape: tuple[int, int]) -> tuple[Path, Path]:
    paths = []
    for band, shape in (("vv", vv_shape), ("vh", vh_shape)):
        path = root / f"abc01_{band}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=shape[1], height=shape[0], count=1,
                           dtype="float32", transform=from_origin(0, 16, 10, 10)) as ds:  # fmt: skip
            ds.write(np.full((1, *shape), -10.0, np.float32))
        paths.append(path)
    return paths[0], paths[1]


def test_c2s_bad_vh_shape_names_the_vh_file(tmp_path: Path) -> None:
    _, vh = _c2s(tmp_path, (16, 16), (16, 24))
    msg = _one_line_error(tmp_path)
    assert msg == f"{vh}: views have different shapes (vh is 24x16 px, vv is 16x16 px)"


def test_corrupt_geotiff(tmp_path: Path) -> None:
    chip = _folder(tmp_path)
    (chip / "post.tif").write_bytes(b"II*\x00 this is not a tiff")
    msg = _one_line_error(tmp_path)
    assert msg.startswith(f"{chip / 'post.tif'}: unreadable or corrupt image (")


def test_corrupt_png(tmp_path: Path) -> None:
    d = _ombria(tmp_path)
    (d / "AFTER" / "S1_after_0001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    msg = _one_line_error(tmp_path)
    assert msg.startswith(f"{d / 'AFTER' / 'S1_after_0001.png'}: unreadable or corrupt image")


def test_mask_values_outside_classes(tmp_path: Path) -> None:
    chip = _folder(tmp_path, mask_value=7)
    msg = _one_line_error(tmp_path)
    assert msg == f"{chip / 'mask.tif'}: mask values [7] outside the declared classes (0, 1, 255)"


def test_ombria_mask_with_grey_values(tmp_path: Path) -> None:
    d = _ombria(tmp_path)
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(d / "MASK" / "S1_mask_0001.png")
    msg = _one_line_error(tmp_path)
    assert (
        msg == f"{d / 'MASK' / 'S1_mask_0001.png'}: mask values [128] outside the declared classes (0, 255)"
    )


def test_empty_dataset(tmp_path: Path) -> None:
    write_dataset_yaml(tmp_path, "db", ["post"], ["vv"], "ev")
    with pytest.raises(DataError, match=r"empty dataset, no chips found"):
        discover([tmp_path])
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(DataError, match=r"nothing: no known dataset layout found"):
        discover([empty])
    with pytest.raises(DataError, match=r"data directory not found"):
        discover([tmp_path / "absent"])


def test_bad_dataset_yaml(tmp_path: Path) -> None:
    (tmp_path / "dataset.yaml").write_text("units: decibel\n")
    with pytest.raises(DataError, match=r"dataset.yaml: units must be one of db, linear, scaled-uint8"):
        discover([tmp_path])


def test_cli_one_line_no_traceback(tmp_path: Path) -> None:
    chip = _folder(tmp_path, mask_value=7)
    cmd = [sys.executable, "-c", "from floodlora.cli import main; main()", "stats", "--data", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.strip().splitlines() if line]
    assert (
        len(lines) == 1
        and "mask values [7]" in lines[0]
        and str(chip / "mask.tif") in res.stderr.replace("\n", "")
    )


def test_cli_synth_then_stats(tmp_path: Path) -> None:
    run = [sys.executable, "-c", "from floodlora.cli import main; main()"]
    out = tmp_path / "syn"
    res = subprocess.run([*run, "synth", "--out", str(out), "--n", "4", "--size", "32", "--seed", "2"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "wrote 4 synthetic in scenes of 32 px" in res.stdout
    res = subprocess.run([*run, "stats", "--data", str(out), "--out", str(tmp_path / "s.yaml")],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stderr
    import yaml

    stats = yaml.safe_load((tmp_path / "s.yaml").read_text())
    assert stats["n_chips"] == 4 and stats["units"] == "db" and -20 < stats["bands"]["vv"]["mean"] < -5
