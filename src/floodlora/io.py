"""Atomic file writes: a run directory never holds a half-written file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from floodlora.errors import FloodLoraError


class OutputError(FloodLoraError):
    """An output path cannot be written (read-only folder, a path under a regular file, /proc...)."""


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    The result gets the mode of any other new file (0666 less the umask), whatever the writer used
    (mkstemp and some libraries create 0600 files). A folder that cannot be written is a one-line
    :class:`OutputError`.
    """
    target = Path(path)
    tmp_path = scratch_file(target, ".tmp")
    try:
        yield tmp_path
        try:
            os.chmod(tmp_path, 0o666 & ~_umask())
            os.replace(tmp_path, target)
        except OSError as err:
            raise OutputError(f"{target}: cannot write ({_reason(err)})") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def scratch_file(target: str | Path, suffix: str) -> Path:
    """Create an empty hidden scratch file beside `target`: `.NAME.PID-RANDOM<suffix>`.

    Scratch files of the same target left by a process that no longer runs (killed with SIGKILL,
    a power cut) are removed first, so an output folder does not collect them.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_scratch(target)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}-", suffix=suffix, dir=target.parent)
    except OSError as err:
        raise OutputError(f"{target}: cannot write ({_reason(err)})") from None
    os.close(fd)
    return Path(tmp)


def scratch_dir(target: str | Path, suffix: str) -> Path:
    """Create a hidden scratch folder beside `target`: `.NAME.PID-RANDOM<suffix>`.

    For intermediate files too large for the system temp directory, where a killed process would
    leave them for good; here the next write of `target` sweeps them (:func:`remove_stale_scratch`).
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_scratch(target)
        made = tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}-", suffix=suffix, dir=target.parent)
        return Path(made)
    except OSError as err:
        raise OutputError(f"{target}: cannot write ({_reason(err)})") from None


def remove_stale_scratch(target: str | Path) -> list[Path]:
    """Delete `.NAME.PID-*` scratch files and folders of `target` whose process is gone; return them."""
    target = Path(target)
    prefix = f".{target.name}."
    removed = []
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not name.startswith(prefix):
            continue
        pid_text, dash, _ = name[len(prefix) :].partition("-")
        if not dash or not pid_text.isdigit() or _process_alive(int(pid_text)):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:
            pass
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _reason(err: OSError) -> str:
    return err.strerror or str(err) or err.__class__.__name__


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_write_with(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Call `writer(tmp_path)` and move the result into place atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


def replace_marked_section(path: str | Path, begin: str, end: str, section: str, title: str = "") -> None:
    """Put `section` (which starts with `begin` and ends with `end`) into a document atomically.

    The text between an existing begin/end pair is replaced and everything else is kept, so several
    generators (e.g. benchmarks) can each own one section of the same Markdown page.
    """
    p = Path(path)
    text = p.read_text() if p.is_file() else title
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    atomic_write_text(p, text)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
