"""The agent's one owner of a fine-tune job's status: one row of the ``jobs`` table per job.

Contract (control thread only):

- A job's row is created by the lifecycle step that asks for it
  (:func:`agent.effects.record_step`, status ``queued``, in the step's transaction) and
  cancelled the same way (``cancelled``). Every later status is written here, and only
  here: the export (:meth:`Jobs.exported`), what the trainer link reports
  (:meth:`Jobs.reported`) and the fate of the result bundle (:meth:`Jobs.result_served`,
  :meth:`Jobs.result_late`, :meth:`Jobs.result_refused`).
- A verdict stands: once ``done``, ``failed``, ``no_improvement`` or ``cancelled``, a later
  report is published but does not change the status.
- The lifecycle follows the job's end (``JobFailed``, ``JobNoImprovement``, ``JobKept``);
  the link follows the job's effects through three hooks, each called on the control
  thread and each expected to return at once: ``export_hook(job, export_dir, parent_id)``
  (send it: every fact a submit needs is handed over, nothing is read back from the row),
  ``cancel_hook(job)`` (tell the trainer to stop it) and ``result_hook(job)``
  (the result was imported or refused: drop the staged copy).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agent import lifecycle as lc
from agent.bundle import is_bundle_id
from agent.exporter import ExportDone, Exporter
from agent.grasplog import GraspLog
from agent.journal import Journal
from agent.loads import Trained
from agent.policies import PolicySlot
from agent.topics import Topic

if TYPE_CHECKING:
    from agent.outcomes import Outcomes

log = logging.getLogger(__name__)


class JobStatus(StrEnum):
    """The status column of a job's row."""

    QUEUED = "queued"
    """Asked for; exported (once ``export_path`` is set) and waiting for the trainer."""
    WAITING = "waiting"
    """The trainer is unreachable; the export waits on disk."""
    UPLOADING = "uploading"
    RECEIVING = "receiving"
    """The trainer's states while it takes the data and trains."""
    TRAINING = "training"
    DOWNLOADING = "downloading"
    """The result bundle is being fetched."""
    IMPROVED = "improved"
    """The result bundle was handed to the daemon (being validated and loaded)."""
    DONE = "done"
    """The result was loaded (``result_policy_id``)."""
    NO_IMPROVEMENT = "no_improvement"
    """The trainer found no better policy; the parent serves on."""
    FAILED = "failed"
    KEPT = "kept"
    """No trainer configured: the export stays on disk, the parent serves on."""
    CANCELLED = "cancelled"
    """Abandoned by the daemon (a new condition, a promote or a rollback)."""


VERDICTS = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.NO_IMPROVEMENT})
"""Statuses a later report does not change (with CANCELLED)."""
EXPORT_NOT_NEEDED = VERDICTS | {JobStatus.CANCELLED, JobStatus.KEPT}
"""Statuses of an ended (or superseded) job: its export may go to keep the disk budget."""


HELD = (
    JobStatus.TRAINING,
    JobStatus.DOWNLOADING,
    JobStatus.IMPROVED,
    JobStatus.DONE,
    JobStatus.NO_IMPROVEMENT,
)
"""Statuses that say the trainer holds the job's whole dataset."""


def held_until(log: GraspLog, condition_id: int) -> int:
    """The last grasp of this condition that the trainer holds already (0: none): the largest
    ``until`` of the condition's earlier exports whose jobs reached the trainer. A round's job
    sends only the grasps after it; the trainer trains on the lineage's data of the condition."""
    marks = [log.get_kv(f"export_until:{job}") for job in log.jobs_of(condition_id, HELD)]
    return max((int(m) for m in marks if isinstance(m, int)), default=0)


@dataclass(frozen=True)
class JobRow:
    """One row of the ``jobs`` table."""

    id: int
    condition_id: int
    parent_policy_id: str
    status: JobStatus
    export_path: str
    result_policy_id: str
    detail: str
    """The latest detail, as JSON text."""

    def result_id(self) -> str:
        """The result's bundle id: ``result_policy_id``, or for a row written before that
        column was filled on ``improved``, the ``bundle_id`` of its detail."""
        if self.result_policy_id:
            return self.result_policy_id
        try:
            bid = json.loads(self.detail).get("bundle_id") if self.detail else None
        except (ValueError, AttributeError):
            return ""
        return bid if isinstance(bid, str) else ""

    @classmethod
    def from_db(cls, row: dict[str, Any]) -> JobRow:
        return cls(
            int(row["id"]),
            int(row["condition_id"]),
            str(row["parent_policy_id"] or ""),
            JobStatus(str(row["status"])),
            str(row["export_path"] or ""),
            str(row["result_policy_id"] or ""),
            str(row["detail"] or ""),
        )


ExportHook = Callable[[int, Path, str], None]
"""``(job, export_dir, parent_id)``: a job's dataset is ready to go to the trainer."""
JobHook = Callable[[int], None]


class Host(Protocol):
    """What the job owner asks of the daemon (control thread)."""

    @property
    def state(self) -> lc.State: ...
    def try_step(self, event: lc.Event, details: dict[str, Any] | None = None) -> None: ...
    @property
    def journal(self) -> Journal: ...
    @property
    def outcomes(self) -> Outcomes: ...
    @property
    def slot(self) -> PolicySlot: ...
    @property
    def exporter(self) -> Exporter: ...


class Jobs:
    """Reads and writes the ``jobs`` rows and calls the link's hooks."""

    def __init__(self, glog: GraspLog, host: Host, store: Path) -> None:
        self.log = glog
        self.host = host
        self.store = store
        self.export_hook: ExportHook | None = None
        self.cancel_hook: JobHook | None = None
        self.result_hook: JobHook | None = None

    def row(self, job: int) -> JobRow | None:
        row = self.log.job(job)
        return None if row is None else JobRow.from_db(row)

    def _set(self, job: int, status: JobStatus, **kw: Any) -> None:
        self.log.update_job(job, str(status), **kw)

    # -- start-up ---------------------------------------------------------------------------
    def resume(self) -> None:
        """Go on with the job the lifecycle waits for: export it, send it, load its result
        or end it, by where its row stands; and tell the link again which jobs are
        cancelled (a cancel handed to it just before a crash was never recorded there)."""
        for old in self.log.job_ids(JobStatus.CANCELLED.value):
            self.abandoned(old)
        job = self.host.state.job
        row = None if job is None else self.row(job)
        if job is None or row is None:
            return
        if not row.export_path:
            after = held_until(self.log, row.condition_id)
            self.host.exporter.submit(job, self.host.state.condition, after)
        elif row.status is JobStatus.QUEUED:
            self._export_hook(row, Path(row.export_path))
        elif row.status is JobStatus.IMPROVED and is_bundle_id(result := row.result_id()):
            # the result was handed on; if it reached the store the daemon stopped before
            # swapping it in: load it from there, with the hash checks only (it was validated
            # on import); the link offers only a staged copy again
            if (self.store / result).is_dir():
                log.warning("job %s: result %s is in the store; loading it", job, result)
                self.host.slot.load(self.store / result, Trained(job))
        elif row.status is JobStatus.FAILED:  # stopped before the step
            self.host.try_step(lc.JobFailed(job, (row.detail or "failed")[:500]))

    # -- the export ---------------------------------------------------------------------------
    def exported(self, done: ExportDone) -> None:
        """The exporter finished a job's dataset (or failed to)."""
        if done.dropped:
            self.host.journal.emit(
                Topic.STORAGE,
                {
                    "status": "exports_dropped",
                    "job": done.job,
                    "dropped": [
                        {"job": e.job, "export": str(e.path), "bytes": e.bytes}
                        for e in done.dropped
                    ],
                },
            )
        if done.path is None:
            self._set(done.job, JobStatus.FAILED, detail={"error": done.error})
            self.host.journal.emit(
                Topic.JOB, {"job": done.job, "status": "failed", "error": done.error}
            )
            self.host.try_step(lc.JobFailed(done.job, f"export failed: {done.error}"))
            return
        row = self.row(done.job)
        current = self.host.state.job == done.job
        status = JobStatus.QUEUED if current or row is None else row.status
        if row is not None and row.status not in (JobStatus.QUEUED, JobStatus.WAITING):
            # a report that came in while the dataset was being written (a result handed
            # over directly) is not set back to queued, and the job is not submitted again
            status, current = row.status, False
        self._set(done.job, status, export_path=str(done.path))
        self.log.set_kv(f"export_until:{done.job}", int(done.index.get("until", 0)))
        self.host.journal.emit(
            Topic.JOB,
            {
                "job": done.job,
                "status": str(status),
                "condition": done.condition,
                "export": str(done.path),
                "transitions": done.index.get("transitions", 0),
                "grasps": done.index.get("grasps", 0),
            },
        )
        if current and row is not None:
            self._export_hook(row, done.path)

    def _export_hook(self, row: JobRow, path: Path) -> None:
        if self.export_hook is not None:
            self._call("export_hook", self.export_hook, row.id, path, row.parent_policy_id)

    # -- the trainer's reports ------------------------------------------------------------------
    def reported(self, job: int, status: JobStatus, detail: dict[str, Any]) -> None:
        """A status from the trainer link; ``failed``, ``no_improvement`` and ``kept`` end the
        job in the lifecycle."""
        row = self.row(job)
        if row is not None and row.status is JobStatus.CANCELLED:
            # the link was told to stop it; the row stays cancelled and the event says so
            self._set(job, JobStatus.CANCELLED, detail={"trainer": str(status), **detail})
            self.host.journal.emit(
                Topic.JOB, {"job": job, "status": str(status), "detail": detail, "cancelled": True}
            )
            return
        if row is not None and row.status in VERDICTS:
            # a verdict stands: the link reports "improved" after handing the result on, when
            # the loader may have swapped it in or refused it already; later reports are news
            self.host.journal.emit(
                Topic.JOB, {"job": job, "status": str(row.status), "detail": detail}
            )
            return
        bid = detail.get("bundle_id") if status is JobStatus.IMPROVED else None
        result = bid if isinstance(bid, str) and is_bundle_id(bid) else None
        self._set(job, status, detail=detail, result_policy_id=result)
        self.host.journal.emit(Topic.JOB, {"job": job, "status": str(status), "detail": detail})
        if status is JobStatus.FAILED:
            self.host.try_step(lc.JobFailed(job, str(detail.get("error", "trainer failed"))))
        elif status is JobStatus.NO_IMPROVEMENT:
            self.host.try_step(lc.JobNoImprovement(job, str(detail.get("reason", ""))))
            self.host.outcomes.reset_detector()  # serving again: at the serving ARL0
        elif status is JobStatus.KEPT:  # no trainer: the export waits, the parent serves on
            self.host.try_step(lc.JobKept(job))
            self.host.outcomes.reset_detector()

    # -- the result -----------------------------------------------------------------------------
    def result_served(self, job: int, policy_id: str) -> None:
        """The job's result was swapped in (lineage: the job's result is this policy)."""
        self._set(job, JobStatus.DONE, result_policy_id=policy_id)
        self._result_hook(job)

    def result_late(self, job: int, policy_id: str) -> None:
        """The result arrived after its job ended: kept as a candidate, status unchanged."""
        row = self.row(job)
        if row is not None:
            self._set(job, row.status, result_policy_id=policy_id)
        self._result_hook(job)

    def result_refused(self, job: int, why: str) -> None:
        """The job's result was refused: the job failed (its row is not left "improved"),
        the parent serves on and the lifecycle leaves TRAINING."""
        row = self.row(job)
        if row is not None and row.status is not JobStatus.CANCELLED:
            self._set(job, JobStatus.FAILED, detail={"error": why})
        self.host.try_step(lc.JobFailed(job, why))
        self._result_hook(job)

    def abandoned(self, job: int) -> None:
        """The job was cancelled (its row says so already): the trainer is told."""
        if self.cancel_hook is not None:
            self._call("cancel_hook", self.cancel_hook, job)

    def _result_hook(self, job: int) -> None:
        if self.result_hook is not None:
            self._call("result_hook", self.result_hook, job)

    def _call(self, name: str, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:
            self.host.journal.error(name, exc)
