"""The trainer link's job records on disk: ``<state_dir>/jobs/job-<id>.json``, one
:class:`LinkJob` each (its :class:`Phase` and transport facts), written aside, fsynced
and renamed; and each job's staging directory ``<state_dir>/staging/job-<id>`` for its
result bundle.

The link's thread writes; :meth:`Records.phases` may be read from any thread.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class Phase(StrEnum):
    UPLOAD = "upload"
    """Sending the export (and the parent if the trainer lacks it)."""
    WAIT = "wait"
    """The trainer has the data: queued or training."""
    FETCH = "fetch"
    """The trainer has a verdict: fetching the result."""
    DELIVER = "deliver"
    """The result bundle is staged: hand it to the daemon."""
    ACK = "ack"
    """The verdict is handed on: acknowledge it, so the trainer may forget the job."""
    DONE = "done"
    FAILED = "failed"
    """Ended on the agent's side (an unusable export or parent, a refused submit)."""
    CANCEL = "cancel"
    """The daemon abandoned the job: tell the trainer."""
    RELEASE = "release"
    """Abandoned after its verdict: acknowledge the result unfetched (or unused)."""
    CANCELLED = "cancelled"


FINAL = frozenset({Phase.DONE, Phase.FAILED, Phase.CANCELLED})
"""Phases with nothing left to do."""
ABANDONED = frozenset({Phase.CANCEL, Phase.RELEASE, Phase.CANCELLED})
"""Phases of a job the daemon cancelled: nothing of it is handed on or reported but that."""


@dataclass(frozen=True)
class LinkJob:
    """What the link persists about one job (``<state_dir>/jobs/job-<id>.json``)."""

    job: int
    """The agent's job id."""
    export: str
    """Export directory (robot-agent-dataset v1)."""
    parent_id: str
    """Bundle id of the policy to fine-tune (in the agent's store)."""
    condition: str
    """Condition of the export."""
    phase: Phase = Phase.UPLOAD
    key: str = ""
    """The trainer's id of the job (once accepted)."""
    manifest: dict[str, Any] | None = None
    """The export's manifest (computed once; the export never changes)."""
    bundle_id: str = ""
    """Result bundle id (the trainer's verdict was "improved")."""
    offers: int = 0
    """Times the result bundle was handed to the daemon."""
    fetch_failures: int = 0
    """Download rounds of the result that went wrong."""
    refused: str = ""
    """Why the link gave the result up (sent with the ``ack``, so the trainer knows)."""
    released: bool = False
    """The daemon is done with the result: its staged copy is gone, never offered again."""
    export_removed: bool = False
    """The trainer held the whole dataset, so the export was removed from the robot."""

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LinkJob:
        """A record as saved (also by earlier versions, which kept a ``cancelled`` flag and
        the trainer's ``outcome`` and ``detail``: the flag becomes the phase)."""
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        phase = Phase(str(kw.get("phase", "upload")))
        if d.get("cancelled") is True and phase is Phase.ACK:
            phase = Phase.RELEASE
        kw["phase"] = phase
        return cls(**kw)


class Records:
    """Every job the link knows, by the agent's job id."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._by_job: dict[int, LinkJob] = {}

    def load(self) -> None:
        """Read every record (an unreadable one is skipped and logged)."""
        (self.root / "jobs").mkdir(parents=True, exist_ok=True)
        (self.root / "staging").mkdir(parents=True, exist_ok=True)
        for f in sorted((self.root / "jobs").glob("job-*.json")):
            try:
                rec = LinkJob.from_json(json.loads(f.read_text()))
            except (OSError, ValueError, TypeError) as exc:
                log.error("%s: unreadable job record, skipped: %s", f, exc)
                continue
            self.put(rec)

    def put(self, rec: LinkJob) -> None:
        """Keep ``rec`` in memory (:meth:`save` writes it)."""
        with self._lock:
            self._by_job[rec.job] = rec

    def save(self, rec: LinkJob) -> None:
        path = self.root / "jobs" / f"job-{rec.job}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(rec.to_json(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self.put(rec)

    def get(self, job: int) -> LinkJob | None:
        with self._lock:
            return self._by_job.get(job)

    def all(self) -> list[LinkJob]:
        with self._lock:
            return list(self._by_job.values())

    def active(self) -> list[LinkJob]:
        """Records with something left to do."""
        return [r for r in self.all() if r.phase not in FINAL]

    def phases(self) -> dict[int, str]:
        with self._lock:
            return {j: r.phase.value for j, r in self._by_job.items()}

    def find(self, h: dict[str, Any]) -> LinkJob | None:
        """The record a trainer message names: by its key, else by the agent's job id."""
        key, job = h.get("key"), h.get("job")
        with self._lock:
            for rec in self._by_job.values():
                if key and rec.key == key:
                    return rec
            rec_ = self._by_job.get(job) if isinstance(job, int) else None
        if rec_ is not None and rec_.key in ("", key):
            return rec_
        return None

    def staging(self, job: int) -> Path:
        return self.root / "staging" / f"job-{job}"
