"""Per-job transfer state of the trainer link: the upload's credit window, the bundle download.

No sockets: :class:`agent.link.TrainerLink` sends what these hand out and feeds
them the trainer's replies. The download writes only under its own staging directory.
"""

from __future__ import annotations

import os
import shutil
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent.jobwire import Manifest, PartFile, chunk_sha, from_ranges

Chunk = tuple[str, str, int]
"""(blob, file, index) of an upload chunk."""


class UploadWindow:
    """Chunks still to send and the credit the trainer granted (one credit per chunk)."""

    def __init__(self) -> None:
        self.pending: deque[Chunk] = deque()
        self.credit = 0
        self.inflight = 0
        self.last_ok = 0.0
        self.sent_bytes = 0

    def reset(
        self, need: Mapping[str, Any], credit: int, chunks_of: Callable[[str], int], now: float
    ) -> None:
        """Start over from an ``accepted`` reply: its ``need`` ranges and ``credit``.

        ``chunks_of(file)`` bounds the export's indices; the parent's are bounded by the
        trainer's own manifest check.
        """
        self.pending.clear()
        self.credit = max(1, credit)
        self.inflight = 0
        self.last_ok = now
        for blob in ("parent", "export"):
            for file, ranges in dict(need.get(blob, {})).items():
                upper = chunks_of(str(file)) if blob == "export" else 1 << 30
                self.pending.extend((blob, str(file), i) for i in from_ranges(ranges, upper))

    def clear(self) -> None:
        self.pending.clear()
        self.inflight = 0

    @property
    def drained(self) -> bool:
        """Nothing left to send and nothing in flight."""
        return not self.pending and not self.inflight

    def stalled(self, now: float, timeout_s: float) -> bool:
        """Chunks in flight but no reply for ``timeout_s``."""
        return self.inflight > 0 and now - self.last_ok > timeout_s

    def take(self, now: float) -> Chunk | None:
        """The next chunk to send if credit allows (counted in flight), else None."""
        if self.credit <= 0 or not self.pending:
            return None
        item = self.pending.popleft()
        self.credit -= 1
        self.inflight += 1
        if self.inflight == 1:
            self.last_ok = now
        return item

    def unsent(self, item: Chunk) -> None:
        """``item`` could not be sent (the socket's queue is full): it goes first next time."""
        self.pending.appendleft(item)
        self.credit += 1
        self.inflight -= 1

    def acked(self, credit: int, now: float) -> None:
        """A ``chunk_ok``: one chunk less in flight, ``credit`` back."""
        self.inflight = max(0, self.inflight - 1)
        self.credit += credit
        self.last_ok = now

    def rejected(self, item: Chunk | None) -> None:
        """A ``checksum`` error (``item`` is sent again first) or ``whole_checksum`` (None)."""
        self.inflight = max(0, self.inflight - 1)
        self.credit += 1
        if item is not None:
            self.pending.appendleft(item)


class BundleDownload:
    """A result bundle fetched chunk by chunk into ``<partial>``, then renamed to ``final``."""

    def __init__(self, manifest: Manifest, partial: Path, final: Path) -> None:
        self.manifest = manifest
        self.partial = partial
        self.final = final
        self.pending: deque[tuple[str, int]] = deque(
            (f.name, i) for f in manifest.files for i in range(manifest.chunks(f.name))
        )
        self.got: dict[str, set[int]] = {}
        self.inflight = 0
        self.last_ok = 0.0
        self.rejected = 0

    def start(self) -> None:
        """Begin from an empty partial directory."""
        shutil.rmtree(self.partial, ignore_errors=True)
        self.partial.mkdir(parents=True)

    def take(self, window: int, now: float) -> tuple[str, int] | None:
        """The next chunk to request if fewer than ``window`` are outstanding."""
        if self.inflight >= window or not self.pending:
            return None
        item = self.pending.popleft()
        self.inflight += 1
        if self.inflight == 1:
            self.last_ok = now
        return item

    def unsent(self, item: tuple[str, int]) -> None:
        self.pending.appendleft(item)
        self.inflight -= 1

    def recover_stall(self, now: float, timeout_s: float) -> bool:
        """Requests (or their replies) lost: ask again for everything not held; True if so."""
        if not self.inflight or now - self.last_ok <= timeout_s:
            return False
        queued = set(self.pending)
        for f in self.manifest.files:
            for i in range(self.manifest.chunks(f.name)):
                if i not in self.got.get(f.name, set()) and (f.name, i) not in queued:
                    self.pending.append((f.name, i))
        self.inflight = 0
        return True

    def on_data(self, file: str, index: int, data: bytes, sha: Any, now: float) -> bool:
        """Take one ``data`` reply; True once the whole bundle is in place at ``final``.

        A chunk whose size or sha256 is wrong is asked for again; a file whose whole
        sha256 is wrong is fetched again entirely.
        """
        self.inflight = max(0, self.inflight - 1)
        self.last_ok = now
        m = self.manifest
        if file not in {f.name for f in m.files} or not 0 <= index < m.chunks(file):
            return False
        got = self.got.setdefault(file, set())
        if index in got:
            return False
        if len(data) != m.chunk_size(file, index) or chunk_sha(data) != sha:
            self.rejected += 1
            self.pending.appendleft((file, index))
            return False
        pf = PartFile(self.partial / file, m.entry(file), m.chunk_bytes)
        pf.write(index, data, sync=False)
        got.add(index)
        if len(got) == m.chunks(file) and not pf.finish():
            self.rejected += 1
            got.clear()
            self.pending.extend((file, i) for i in range(m.chunks(file)))
            return False
        if all(len(self.got.get(f.name, ())) == m.chunks(f.name) for f in m.files):
            os.replace(self.partial, self.final)
            return True
        return False
