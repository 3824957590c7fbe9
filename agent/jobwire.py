"""The trainer job protocol (version 1), shared by the agent's link and the trainer service.

Messages ride the wire envelope of :mod:`agent.wire` (frame 0 a JSON header
with ``"v": 1``); this module adds what a job transfer needs on both ends, and
imports no torch (the agent uses it):

- :class:`JobState`: a job's states on the trainer, as the messages name them;
- :class:`Manifest`: the files of one transfer (name, size, sha256) and the
  chunk size; its :meth:`Manifest.digest` names the content.
- chunk helpers: read chunk ``i`` of a file from disk, the sha256 of a chunk,
  missing-chunk sets as compact ``[start, end)`` ranges;
- :class:`PartFile`: a receiver's file under construction, written chunk by
  chunk at its offset (fsynced), then checked against the whole-file sha256 and
  renamed into place.

The message types and fields are documented in ``docs/trainer-service.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from agent.wire import WireError
from plumbing.atomic import publish
from plumbing.digest import sha256_file
from plumbing.names import SAFE_NAME, is_safe_name, is_sha256_hex

PROTOCOL = 1
"""Job protocol version, negotiated in ``hello``."""
MAX_FILES = 64
"""Most files in one manifest."""
MAX_RANGES = 512
"""Most missing-chunk ranges listed in one reply (the rest is asked for again later)."""
DEFAULT_CHUNK_BYTES = 1 << 20
"""Chunk size the agent proposes."""

AGENT_TO_TRAINER = (
    "hello",
    "ping",
    "submit",
    "chunk",
    "status",
    "fetch",
    "get",
    "ack",
    "cancel",
    "jobs",
)
"""Request types a trainer accepts."""
TRAINER_TO_AGENT = (
    "welcome",
    "pong",
    "accepted",
    "chunk_ok",
    "job",
    "progress",
    "result",
    "data",
    "acked",
    "cancelled",
    "jobs",
    "error",
)
"""Message types a trainer sends."""


class JobState(StrEnum):
    """A job's state on the trainer (:mod:`trainer.jobs`), as its replies and pushes name it."""

    RECEIVING = "receiving"
    QUEUED = "queued"
    TRAINING = "training"
    DONE = "done"
    NO_IMPROVEMENT = "no_improvement"
    FAILED = "failed"
    DELIVERED = "delivered"
    ACKNOWLEDGED = "acknowledged"
    CANCELLED = "cancelled"


def check_name(key: str, value: Any) -> str:
    """``value`` if it is one safe path component (letters, digits, ``._-``); else WireError."""
    if not is_safe_name(value, allow_dotdot=False):
        raise WireError(
            "bad_request", f"{key} = {value!r}: must match {SAFE_NAME} and contain no '..'"
        )
    return value


def check_int(key: str, value: Any, lo: int = 0, hi: int = 1 << 62) -> int:
    """``value`` if it is an int (not bool) in [lo, hi], else WireError."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise WireError("bad_request", f"{key} = {value!r}: must be an integer in [{lo}, {hi}]")
    return value


def chunk_sha(data: bytes) -> str:
    """Hex sha256 of one chunk."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class FileEntry:
    """One file of a transfer."""

    name: str
    """File name (a single safe path component)."""
    size: int
    """Size in bytes."""
    sha256: str
    """Hex sha256 of the whole file."""


@dataclass(frozen=True)
class Manifest:
    """The files of one transfer and how they are cut into chunks."""

    files: tuple[FileEntry, ...]
    """Files in a fixed order (sorted by name)."""
    chunk_bytes: int
    """Size of every chunk but a file's last."""

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def entry(self, name: str) -> FileEntry:
        """The entry for ``name``; WireError ``bad_request`` if the manifest has no such file."""
        for f in self.files:
            if f.name == name:
                return f
        raise WireError("bad_request", f"file {name!r} is not in the manifest")

    def chunks(self, name: str) -> int:
        """Number of chunks of file ``name`` (an empty file has one empty chunk)."""
        size = self.entry(name).size
        return max(1, -(-size // self.chunk_bytes))

    def chunk_size(self, name: str, index: int) -> int:
        """Exact byte length chunk ``index`` of ``name`` must have."""
        size = self.entry(name).size
        return max(0, min(self.chunk_bytes, size - index * self.chunk_bytes))

    def total_chunks(self) -> int:
        return sum(self.chunks(f.name) for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "chunk_bytes": self.chunk_bytes,
            "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in self.files],
        }

    def digest(self) -> str:
        """Hex sha256 of the canonical JSON form: the content id of the whole transfer."""
        raw = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(raw).hexdigest()

    @classmethod
    def from_json(cls, obj: Any, *, max_chunk_bytes: int, max_total_bytes: int) -> Manifest:
        """Parse and check a manifest from a header; raises WireError naming the fault."""
        if not isinstance(obj, dict):
            raise WireError("bad_request", "manifest must be an object")
        chunk = check_int("manifest.chunk_bytes", obj.get("chunk_bytes"), 1024, max_chunk_bytes)
        raw_files = obj.get("files")
        if not isinstance(raw_files, list) or not 1 <= len(raw_files) <= MAX_FILES:
            raise WireError("bad_request", f"manifest.files must list 1..{MAX_FILES} files")
        files: list[FileEntry] = []
        for f in raw_files:
            if not isinstance(f, dict):
                raise WireError("bad_request", "manifest file entries must be objects")
            sha = f.get("sha256")
            if not is_sha256_hex(sha):
                raise WireError("bad_request", "manifest sha256 must be 64 lowercase hex digits")
            files.append(
                FileEntry(check_name("file", f.get("name")), check_int("size", f.get("size")), sha)
            )
        if len({f.name for f in files}) != len(files):
            raise WireError("bad_request", "manifest lists a file twice")
        m = cls(tuple(sorted(files, key=lambda f: f.name)), chunk)
        if m.total_bytes > max_total_bytes:
            raise WireError(
                "too_large", f"transfer of {m.total_bytes} bytes exceeds the cap {max_total_bytes}"
            )
        return m


def manifest_of_dir(
    path: Path, chunk_bytes: int = DEFAULT_CHUNK_BYTES, names: Iterable[str] | None = None
) -> Manifest:
    """The manifest of the regular files directly in ``path`` (all, or those ``names``)."""
    files = []
    paths = sorted(Path(path).iterdir()) if names is None else [Path(path) / n for n in names]
    for p in sorted(paths):
        if p.is_symlink() or not p.is_file():
            raise ValueError(f"{p}: a transfer holds regular files only")
        check_name("file", p.name)
        files.append(FileEntry(p.name, p.stat().st_size, sha256_file(p)))
    if not files:
        raise ValueError(f"{path}: nothing to send")
    return Manifest(tuple(files), chunk_bytes)


def read_chunk(path: Path, index: int, chunk_bytes: int) -> bytes:
    """Bytes of chunk ``index`` of the file at ``path``."""
    with open(path, "rb") as f:
        f.seek(index * chunk_bytes)
        return f.read(chunk_bytes)


def to_ranges(indices: Iterable[int], limit: int = MAX_RANGES) -> list[list[int]]:
    """Sorted indices as at most ``limit`` ``[start, end)`` ranges (later ones are dropped)."""
    out: list[list[int]] = []
    for i in sorted(set(indices)):
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        elif len(out) < limit:
            out.append([i, i + 1])
        else:
            break
    return out


def from_ranges(ranges: Any, upper: int) -> list[int]:
    """Indices of ``[start, end)`` ranges, each checked to lie in [0, upper)."""
    if not isinstance(ranges, list) or len(ranges) > MAX_RANGES:
        raise WireError("bad_request", f"ranges must be a list of at most {MAX_RANGES}")
    out: list[int] = []
    for r in ranges:
        if not isinstance(r, list) or len(r) != 2:
            raise WireError("bad_request", "a range is [start, end)")
        lo = check_int("range start", r[0], 0, upper)
        hi = check_int("range end", r[1], lo, upper)
        out.extend(range(lo, hi))
    return out


def need_of(manifest: Manifest, have: Mapping[str, Iterable[int]]) -> dict[str, list[list[int]]]:
    """Missing chunks per file (as ranges), given the indices held per file."""
    need: dict[str, list[list[int]]] = {}
    for f in manifest.files:
        held = set(have.get(f.name, ()))
        missing = [i for i in range(manifest.chunks(f.name)) if i not in held]
        if missing:
            need[f.name] = to_ranges(missing)
    return need


class PartFile:
    """A file being received: ``<final>.part`` written at chunk offsets, verified, renamed."""

    def __init__(self, final: Path, entry: FileEntry, chunk_bytes: int) -> None:
        self.final = Path(final)
        self.part = self.final.with_name(self.final.name + ".part")
        self.entry = entry
        self.chunk_bytes = chunk_bytes

    def write(self, index: int, data: bytes, *, sync: bool = True) -> None:
        """Write chunk ``index`` at its offset (fsynced when ``sync``: it is then durable)."""
        self.part.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.part, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, data, index * self.chunk_bytes)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def finish(self) -> bool:
        """Check size and whole sha256; on a match rename into place and return True.

        On a mismatch the part file is removed (every chunk must come again) and
        False is returned.
        """
        if not self.part.exists():
            self.part.parent.mkdir(parents=True, exist_ok=True)
            self.part.touch()
        ok = (
            self.part.stat().st_size == self.entry.size
            and sha256_file(self.part) == self.entry.sha256
        )
        if ok:
            publish(self.part, self.final)
        else:
            self.part.unlink(missing_ok=True)
        return ok
