"""What the trainer link's per-job machine asks the session to do (:func:`agent.link.jobs.step`
returns these, in order; pure data, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Save:
    """Write the record (before anything that depends on it)."""


@dataclass(frozen=True)
class Report:
    """Tell the daemon the job's status; ``once``: not if it was the last one reported."""

    status: str
    detail: dict[str, Any]
    once: bool = False


@dataclass(frozen=True)
class Offer:
    """Hand the staged bundle to the daemon, then report ``improved``."""


@dataclass(frozen=True)
class DropStaging:
    """Remove the job's staging directory."""


@dataclass(frozen=True)
class DropExport:
    """Remove the job's export from the robot: the trainer holds the whole dataset."""


@dataclass(frozen=True)
class Upload:
    """Start the upload over from the trainer's ``need`` (its ``accepted`` reply)."""

    need: dict[str, Any]
    credit: int


@dataclass(frozen=True)
class Download:
    """Fetch the result bundle into staging."""

    manifest: Any


@dataclass(frozen=True)
class Settle:
    """The awaited reply came: the next request may go (``later``: not before a heartbeat)."""

    later: bool = False


@dataclass(frozen=True)
class ClearUpload:
    """The trainer has the data: nothing more to upload."""


@dataclass(frozen=True)
class ForgetLive:
    """Drop the connection's state of the job (its upload window, its download)."""


@dataclass(frozen=True)
class Hold:
    """No download request for ``seconds`` (backoff after a failed round)."""

    seconds: float


Effect = (
    Save
    | Report
    | Offer
    | DropStaging
    | DropExport
    | Upload
    | Download
    | Settle
    | ClearUpload
    | ForgetLive
    | Hold
)
