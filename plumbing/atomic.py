"""Atomic writes: write aside, fsync, rename over the target, fsync the directory.

A reader (or a crash) sees the old file or the new one, never a torn one. Every file the
project replaces in place goes through here: :func:`write_bytes` / :func:`write_text` for
content in memory, :func:`replacing` for a file another library writes (numpy, safetensors,
torch) to the path it is given, :func:`replacing_dir` for a directory filled in place, and
:func:`publish` for a file or directory already complete beside its final name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def fsync_dir(path: Path | str) -> None:
    """Make a rename or creation inside directory ``path`` durable (best effort on platforms
    whose directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory: the rename is still atomic
    finally:
        os.close(fd)


def fsync_file(path: Path | str) -> None:
    """Flush a closed file's bytes to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def aside(path: Path | str) -> Path:
    """The temporary name beside ``path`` that a write goes to first (same directory, so the
    rename stays on one file system; the pid keeps two writers apart)."""
    p = Path(path)
    return p.with_name(f".{p.stem}.{os.getpid()}.tmp{p.suffix}")  # keeps .npz for numpy


def publish(tmp: Path | str, final: Path | str, *, sync: bool = True) -> None:
    """Rename the complete file or directory ``tmp`` over ``final`` (fsynced first when
    ``sync`` and a file; the directory is fsynced after)."""
    if sync and Path(tmp).is_file():
        fsync_file(tmp)
    os.replace(tmp, final)
    if sync:
        fsync_dir(Path(final).parent)


@contextlib.contextmanager
def replacing(final: Path | str, *, sync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; write it in the block, and on a clean exit it
    replaces ``final`` (:func:`publish`). On an error the temporary file is removed and
    ``final`` is left as it was."""
    tmp = aside(final)
    try:
        yield tmp
        publish(tmp, final, sync=sync)
    except BaseException:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def replacing_dir(final: Path | str, *, sync: bool = True, replace: bool = False) -> Iterator[Path]:
    """Yield a new empty directory beside ``final``; fill it in the block, and on a clean exit
    it is renamed to ``final``. A directory cannot be renamed over a non-empty one: an
    existing ``final`` makes the rename fail (OSError) unless ``replace``, which removes it
    just before. With ``sync`` every file in it is fsynced before the rename. On an error the
    temporary directory is removed and ``final`` is left as it was."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        if sync:
            for f in tmp.rglob("*"):
                if f.is_file():
                    fsync_file(f)
        if replace and final.exists():
            shutil.rmtree(final)
        publish(tmp, final, sync=sync)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes(path: Path | str, data: bytes, *, sync: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically."""
    with replacing(path, sync=sync) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: Path | str, text: str, *, sync: bool = True) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    write_bytes(path, text.encode("utf-8"), sync=sync)
