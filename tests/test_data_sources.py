"""Every reader on the real chips in ../shared/data/real (numbers checked against its MANIFEST.csv)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from floodlora.data.sources import detect_format, discover, read_sample


@pytest.fixture(scope="module")
def manifest(real_data: Path) -> dict[str, dict[str, str]]:
    with open(real_data / "MANIFEST.csv", newline="") as fh:
        return {row["chip_id"]: row for row in csv.DictReader(fh)}


@pytest.mark.parametrize(
    ("sub", "fmt", "n"),
    [
        ("ombria", "ombria", 782),
        ("ombria/2021/FRANCE/Sentinel1", "ombria", 88),
        ("etci2021", "etci2021", 554),
        ("etci2021/nebraska_20170213t002121", "etci2021", 198),
        ("sen1floods11", "sen1floods11", 1),
        ("c2s_ms_floods", "c2s", 3),
        ("unlabeled/c2s_ms_floods", "c2s", 1),
    ],
)
def test_detect_and_discover_counts(real_data: Path, sub: str, fmt: str, n: int) -> None:
    root = real_data / sub
    assert detect_format(root) == fmt
    refs = discover([root])
    assert len(refs) == n
    assert {r.format for r in refs} == {fmt}


def test_mixed_root_is_split_into_datasets(real_data: Path) -> None:
    refs = discover([real_data])
    assert len(refs) == 1341  # 1,340 labelled + 1 unlabelled
    assert sum(r.labelled for r in refs) == 1340
    events = {r.event for r in refs}
    assert events == {
        "ombria-OmbriaS1", "ombria-FRANCE", "etci2021-nebraska", "etci2021-northal",
        "c2s-jja", "c2s-pxs", "c2s-qxb", "c2s-ayt", "sen1floods11-Spain",
    }  # fmt: skip
    assert len({(r.format, r.chip_id) for r in refs}) == len(refs)


def test_several_roots_combine(real_data: Path) -> None:
    refs = discover([real_data / "c2s_ms_floods", real_data / "sen1floods11", real_data / "c2s_ms_floods"])
    assert [r.format for r in refs] == ["c2s"] * 3 + ["sen1floods11"]


def test_ombria_both_naming_schemes(real_data: Path, manifest: dict[str, dict[str, str]]) -> None:
    refs = {r.chip_id: r for r in discover([real_data / "ombria"])}
    s1 = read_sample(refs["ombria-OmbriaS1_train_0001"])
    assert s1.meta.split == "train" and s1.meta.units == "scaled-uint8" and s1.meta.event == "ombria-OmbriaS1"
    assert set(s1.views) == {"pre", "post"} and set(s1.views["post"]) == {"vv"}
    assert s1.views["pre"]["vv"].shape == (256, 256) and s1.views["pre"]["vv"].dtype == np.float32
    assert set(np.unique(s1.mask)) <= {0, 1, 255}  # 255: the fill strip (white in pre and post)
    assert (s1.mask == 1).mean() == pytest.approx(
        float(manifest["ombria_OmbriaS1_train_0001"]["flood_fraction"]), abs=1e-4
    )
    assert s1.meta.crs is None and s1.meta.transform is None
    fr = read_sample(refs["ombria-FRANCE_1"])
    assert fr.meta.event == "ombria-FRANCE" and fr.meta.split is None
    assert fr.views["post"]["vv"].shape == (256, 256)
    test_split = {r.split for r in refs.values() if r.event == "ombria-OmbriaS1"}
    assert test_split == {"train", "test"}


def test_etci_nodata_and_label(real_data: Path, manifest: dict[str, dict[str, str]]) -> None:
    refs = {r.chip_id: r for r in discover([real_data / "etci2021"])}
    cid = "nebraska_20170213t002121_x-10_y-10"
    s = read_sample(refs[cid])
    row = manifest[cid]
    assert set(s.views) == {"post"} and set(s.views["post"]) == {"vv", "vh"}
    assert (~s.valid).mean() == pytest.approx(float(row["nodata_fraction"]), abs=1e-5)
    assert (s.mask == 1).mean() == pytest.approx(float(row["flood_fraction"]), abs=1e-4)
    assert np.all(s.mask[~s.valid] == 255)
    assert s.meta.date == "2017-02-13T00:21:21"
    assert s.meta.event == "etci2021-nebraska"


@pytest.mark.parametrize("chip", ["jja10", "pxs10", "qxb32"])
def test_c2s_georeferenced_db(real_data: Path, manifest: dict[str, dict[str, str]], chip: str) -> None:
    refs = {r.chip_id: r for r in discover([real_data / "c2s_ms_floods"])}
    s = read_sample(refs[chip])
    assert s.meta.units == "db" and s.views["post"]["vv"].shape == (512, 512)
    assert s.meta.transform is not None and s.meta.transform[0] == 10.0 and "UTM" in s.meta.crs
    vv = s.views["post"]["vv"][s.valid]
    assert vv.min() > -46 and vv.max() < 13  # README: VV -45.2 .. +12.6 dB
    labelled = s.mask != 255
    assert (s.mask[labelled] == 1).sum() / s.mask.size == pytest.approx(
        float(manifest[chip]["flood_fraction"]), abs=1e-4
    )
    assert s.meta.event == f"c2s-{chip[:3]}"


def test_c2s_location_matches_readme(real_data: Path) -> None:
    s = read_sample(discover([real_data / "c2s_ms_floods" / "jja"])[0])
    assert s.meta.lat == pytest.approx(-24.9, abs=0.1) and s.meta.lon == pytest.approx(-57.0, abs=0.1)


def test_c2s_unlabelled(real_data: Path) -> None:
    (ref,) = discover([real_data / "unlabeled"])
    assert not ref.labelled
    s = read_sample(ref)
    assert s.mask is None and s.views["post"]["vh"].shape == (512, 512)


def test_sen1floods11(real_data: Path) -> None:
    (ref,) = discover([real_data / "sen1floods11"])
    s = read_sample(ref)
    assert ref.chip_id == "Spain_7370579" and s.meta.event == "sen1floods11-Spain"
    assert s.meta.units == "db"
    assert "WGS 84" in (s.meta.crs or "")
    assert (s.mask == 1).mean() == pytest.approx(0.267, abs=1e-3)  # README: 26.7 % water
    assert set(np.unique(s.mask)) <= {0, 1, 255}
    vv = s.views["post"]["vv"][s.valid]
    assert vv.min() == pytest.approx(-39.2, abs=0.1) and vv.max() == pytest.approx(25.6, abs=0.1)
    assert s.meta.lat == pytest.approx(38.106, abs=0.01)
