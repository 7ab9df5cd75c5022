"""Bad input and faults through the CLI: each case is one line on stderr, exit code 2, no traceback."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from floodlora import cli
from inference_helpers import db_scene, make_run, write_scene


def _cli_error(args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """Run `floodlora ARGS` in process; assert exit code 2 and one line; return that line."""
    monkeypatch.setattr("sys.argv", ["floodlora", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "run")


@pytest.fixture()
def post(tmp_path: Path) -> Path:
    return write_scene(tmp_path / "post.tif", db_scene(40, 48, seed=2))


# ---- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--rank", "0"], "model.lora_rank: must be an integer >= 1, got 0"),
        (["--rank", "-4"], "model.lora_rank: must be an integer >= 1, got -4"),
        (["--set", "model.lora_rank=0"], "model.lora_rank: must be an integer >= 1, got 0"),
        (
            ["--strategy", "bogus"],
            "model.strategy: unknown strategy 'bogus'; choose one of frozen, lora, full",
        ),
    ],
)
def test_train_bad_rank_or_strategy(
    flags: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    line = _cli_error(
        ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), *flags], capsys, monkeypatch
    )
    assert expected in line
    assert not (tmp_path / "r").exists()


# ---- run directories and checkpoints ---------------------------------------------------------------


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_invalid_base_json(
    command: str, run_dir: Path, post: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    import shutil

    bad = tmp_path / "bad-run"
    shutil.copytree(run_dir, bad)
    (bad / "base.json").write_text('{"checkpoint": "random:test-micro", ')
    args = [command, str(bad)]
    if command == "predict":
        args += ["--view", f"post={post}", "--out", str(tmp_path / "m.tif"), "--no-progress"]
    line = _cli_error(args, capsys, monkeypatch)
    assert f"{bad / 'base.json'}: not valid JSON" in line.replace("\n", "")


@pytest.mark.parametrize("content", ["truncated", "foreign", "text"])
def test_resume_from_bad_last_ckpt(
    content: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    if content == "text":
        ckpt.write_text("not a checkpoint\n")
    else:
        torch.save({"state_dict": {"w": torch.zeros(64, 64)}, "epoch": 1}, ckpt)
        if content == "truncated":
            ckpt.write_bytes(ckpt.read_bytes()[:700])
        else:
            torch.save({"weights": torch.zeros(3)}, ckpt)
    line = _cli_error(["train", "--data", str(tmp_path), "--out", str(run), "--resume"], capsys, monkeypatch)
    expected = {
        "truncated": "truncated or corrupt checkpoint",
        "foreign": "not a Lightning training checkpoint",
        "text": "cannot read checkpoint, not a torch.save file",
    }[content]
    assert str(ckpt) in line and expected in line


# ---- outputs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["under-file", "proc"])
def test_out_in_unwritable_folder(
    where: str, run_dir: Path, post: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = blocker / "sub" / "m.tif" if where == "under-file" else Path("/proc/floodlora-test/m.tif")
    args = ["predict", str(run_dir), "--view", f"post={post}", "--out", str(out), "--no-progress"]
    line = _cli_error(args, capsys, monkeypatch)
    assert line.startswith(f"error: {out}: cannot write (")


@pytest.mark.parametrize("where", ["under-file", "proc"])
def test_synth_out_unwritable(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = blocker / "syn" if where == "under-file" else Path("/proc/floodlora-test")
    line = _cli_error(["synth", "--out", str(out), "--n", "2", "--size", "16"], capsys, monkeypatch)
    assert line.startswith(f"error: {out}") and ("Not a directory" in line or "No such file" in line)


@pytest.mark.parametrize("name", ["../../x", "/abs/x", "sub/x", "..", ".hidden", "x.safetensors"])
def test_export_adapter_must_be_a_bare_name(
    name: str, run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    out = tmp_path / "d"
    line = _cli_error(["export", str(run_dir), "--adapter", name, "--out", str(out)], capsys, monkeypatch)
    assert f"--adapter {name!r}: give a bare name" in line
    assert not out.exists() and not (tmp_path / "x.safetensors").exists()


def test_outputs_are_0644_like_other_files(run_dir: Path, tmp_path: Path) -> None:
    from floodlora.inference.export import export_run

    old = os.umask(0o022)
    try:
        export_run(run_dir, tmp_path / "d", adapter="ev1")
        fresh = tmp_path / "plain"
        fresh.write_text("x")
        expected = stat.S_IMODE(fresh.stat().st_mode)
    finally:
        os.umask(old)
    assert expected == 0o644
    assert stat.S_IMODE((run_dir / "weights.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d" / "ev1.safetensors").stat().st_mode) == 0o644


def test_predict_cleans_scratch_files_of_a_killed_run(run_dir: Path, post: Path, tmp_path: Path) -> None:
    """A SIGKILLed writer leaves hidden scratch files; the next write of the same output removes them."""
    from floodlora.inference.predict import PredictOptions, predict_run

    out = tmp_path / "flood.tif"
    code = (
        "import os, signal, sys\n"
        "from floodlora.io import scratch_file\n"
        f"scratch_file({str(out)!r}, '.tmp'); scratch_file({str(out)!r}, '.strips.tif')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    other = tmp_path / ".other.tif.1-x.tmp"  # another output's scratch file is left alone
    other.write_text("")
    stale = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".flood.tif."))
    assert len(stale) == 2 and any(s.endswith(".strips.tif") for s in stale)
    predict_run(run_dir, {"post": str(post)}, out, options=PredictOptions(progress=False))
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert left == [other.name] and out.is_file()


def test_legacy_checkpoint_cli_info(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    """A text file passed as a checkpoint is refused in one line (not an UnpicklingError)."""
    bad = tmp_path / "enc.ckpt"
    bad.write_bytes(np.arange(100, dtype=np.uint8).tobytes())
    line = _cli_error(["info", "--checkpoint", str(bad)], capsys, monkeypatch)
    assert str(bad) in line and "cannot read checkpoint" in line


# ---- inputs that run but give a wrong map: warned about --------------------------------------------


def _predict_output(args: list[str]) -> str:
    from typer.testing import CliRunner

    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    return result.output


def test_predict_warns_when_only_the_pre_event_view_is_given(run_dir: Path, tmp_path: Path) -> None:
    pre = write_scene(tmp_path / "pre.tif", db_scene(40, 48, seed=1))
    out = _predict_output(
        ["predict", str(run_dir), "--view", f"pre={pre}", "--out", str(tmp_path / "m.tif"), "--no-progress"]
    )
    warned = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 1 and "only pre-event view(s) given (pre)" in warned[0]


def test_predict_warns_about_uint8_read_as_db(run_dir: Path, post: Path, tmp_path: Path) -> None:
    raw = np.clip(db_scene(40, 48, seed=3) * -8, 0, 255).astype(np.uint8)
    import rasterio
    from rasterio.transform import from_origin

    byte = tmp_path / "byte.tif"
    with rasterio.open(byte, "w", driver="GTiff", width=48, height=40, count=2, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 5000000, 10, 10)) as ds:  # fmt: skip
        ds.write(raw)
    args = [
        "predict",
        str(run_dir),
        "--view",
        f"post={byte}",
        "--out",
        str(tmp_path / "m.tif"),
        "--no-progress",
    ]
    warned = [line for line in _predict_output(args).splitlines() if line.startswith("warning: ")]
    assert len(warned) == 1 and f"view post: {byte} is 8-bit (0-255) but is read as dB" in warned[0]
    quiet = [
        "predict",
        str(run_dir),
        "--view",
        f"post={post}",
        "--out",
        str(tmp_path / "n.tif"),
        "--no-progress",
    ]
    assert "warning:" not in _predict_output(quiet)


def test_predict_date_per_view(run_dir: Path, post: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """--date VIEW=ISO gives each view its own time code; a bad view name is a one-line error."""
    from floodlora.inference.commands import parse_dates
    from floodlora.inference.predict import PredictOptions, view_date

    assert parse_dates(["2021-05-01"]) == ("2021-05-01", {})
    post_date, dates = parse_dates(["post=2021-05-01", "pre=2021-04-19"])
    opts = PredictOptions(date=post_date, dates=dates)
    assert (view_date("pre", opts), view_date("post", opts)) == ("2021-04-19", "2021-05-01")
    assert view_date("pre", PredictOptions(date="2021-05-01")) is None  # pre never borrows the post date
    pre = write_scene(tmp_path / "pre.tif", db_scene(40, 48, seed=1))
    base = ["predict", str(run_dir), "--view", f"post={post}", "--view", f"pre={pre}", "--no-progress"]
    probs = {}
    for name, dates_args in (("same", ["--date", "2021-05-01"]),
                             ("own", ["--date", "post=2021-05-01", "--date", "pre=2021-01-10"])):  # fmt: skip
        import rasterio

        out = _predict_output([*base, "--out", str(tmp_path / f"{name}.tif"),
                               "--probabilities", str(tmp_path / f"{name}-p.tif"), *dates_args])  # fmt: skip
        assert "wrote" in out
        with rasterio.open(tmp_path / f"{name}-p.tif") as ds:
            probs[name] = ds.read(1)
    assert not np.allclose(probs["same"], probs["own"])  # the pre view's time code reached the model
    line = _cli_error(
        [*base, "--out", str(tmp_path / "x.tif"), "--date", "flood=2021-05-01"], capsys, monkeypatch
    )
    assert "--date for view(s) flood: not views of this model" in line
