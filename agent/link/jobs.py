"""One fine-tune job as the trainer link sees it, as a pure state machine (no I/O).

::

    UPLOAD  --trainer queued or training it-->       WAIT   (export removed)
    UPLOAD | WAIT --trainer has a verdict-->         FETCH  (export removed)
    FETCH   --not ready after all-->                 WAIT
    FETCH   --result: improved, bundle staged-->     DELIVER
    FETCH   --result: no improvement, failed, or a result refused-->  ACK
    DELIVER --handed to the daemon-->                ACK
    ACK     --trainer acknowledged-->                DONE
    UPLOAD  --trainer forgot the job-->              UPLOAD (submitted again)
    WAIT | FETCH | DELIVER --trainer forgot the job-->  FAILED (the export is gone)
    ACK     --trainer forgot the job-->              DONE   (its verdict was handed on)
    UPLOAD | WAIT --export or parent unusable, trainer refused the submit-->  FAILED
    UPLOAD | WAIT | FETCH | DELIVER --daemon cancelled-->  CANCEL
    ACK --daemon cancelled-->                        RELEASE
    CANCEL  --trainer stopped it (or never had it)-->  CANCELLED
    CANCEL  --it had finished first-->               RELEASE
    RELEASE --trainer acknowledged-->                CANCELLED

:class:`LinkJob` is what the link persists: transport facts only (where the data
is, the trainer's key, the export's manifest, the result's id, offers and download
tries, the staged copy's release, the export's removal). Once the trainer holds the whole
dataset (it says ``queued`` or ``training``, or has a verdict; it never takes data back)
the export is of no more use on the robot: :class:`DropExport` removes it, right after
the record says so. The job's status is the daemon's
(:mod:`agent.jobs`): the link reports what the trainer says through
:class:`Report` effects and follows the daemon's ``Cancel`` and ``Release``.
:func:`step` returns the next record and the effects the session carries out; an
event that does not apply in a phase changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from agent.jobwire import JobState
from agent.link.effects import ClearUpload as ClearUpload
from agent.link.effects import Download as Download
from agent.link.effects import DropExport as DropExport
from agent.link.effects import DropStaging as DropStaging
from agent.link.effects import Effect as Effect
from agent.link.effects import ForgetLive as ForgetLive
from agent.link.effects import Hold as Hold
from agent.link.effects import Offer as Offer
from agent.link.effects import Report as Report
from agent.link.effects import Save as Save
from agent.link.effects import Settle as Settle
from agent.link.effects import Upload as Upload
from agent.link.records import ABANDONED as ABANDONED
from agent.link.records import FINAL as FINAL
from agent.link.records import LinkJob as LinkJob
from agent.link.records import Phase as Phase

MAX_OFFERS = 3
"""How often one result bundle is handed to the daemon (again at a start if not imported):
a bundle that brings the agent down while it is validated is given up on, not retried
for ever."""
FINISHED = frozenset(
    {
        JobState.DONE,
        JobState.NO_IMPROVEMENT,
        JobState.FAILED,
        JobState.DELIVERED,
        JobState.ACKNOWLEDGED,
    }
)
"""The trainer's states of a job with a verdict."""


# -- events ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Started:
    """The link started on this record; ``in_store``: the result is in the daemon's store,
    ``staged``: its staged copy is on disk, ``exported``: the export is on disk."""

    in_store: bool
    staged: bool
    exported: bool = False


@dataclass(frozen=True)
class Cancel:
    """The daemon abandoned the job."""


@dataclass(frozen=True)
class Release:
    """The daemon imported or refused the result: the staged copy is of no more use."""


@dataclass(frozen=True)
class Unusable:
    """The export or the parent cannot be sent (missing, unreadable)."""

    why: str


@dataclass(frozen=True)
class Accepted:
    """The trainer took the submit; ``state`` is its state of the job, ``need`` the chunks
    it lacks, ``credit`` how many may be in flight."""

    key: str
    state: str
    need: dict[str, Any]
    credit: int


@dataclass(frozen=True)
class TrainerState:
    """The trainer's state of the job (a push, a status reply, a pong, a chunk reply)."""

    state: str
    detail: str = ""


@dataclass(frozen=True)
class Progress:
    """A training progress push."""

    info: dict[str, Any]


@dataclass(frozen=True)
class Result:
    """The result's header: ``outcome`` with ``bundle_id`` (improved) or the reason;
    ``error``: why an improved result's header is unusable; ``staged``: the bundle is
    already complete in staging."""

    outcome: str
    detail: str = ""
    bundle_id: str = ""
    error: str = ""
    staged: bool = False
    manifest: Any = None
    """The bundle's checked manifest (an :class:`agent.jobwire.Manifest`)."""


@dataclass(frozen=True)
class Downloaded:
    """The whole result bundle is staged (every chunk and file checked)."""


@dataclass(frozen=True)
class FetchFailed:
    """A download round went wrong; ``retries``: how many rounds may go wrong."""

    why: str
    retries: int
    backoff_s: float
    """The pause after the first failed round (doubling after each)."""
    max_backoff_s: float


@dataclass(frozen=True)
class Deliver:
    """The session is ready to hand the staged result to the daemon."""


@dataclass(frozen=True)
class Acked:
    """The trainer confirmed the acknowledgement; ``state``: its state of the job."""

    state: str


@dataclass(frozen=True)
class CancelReply:
    """The trainer's answer to ``cancel``."""

    cancelled: bool
    state: str


@dataclass(frozen=True)
class TrainerError:
    """An error reply: ``code``, to request ``re``."""

    code: str
    re: str
    message: str = ""


@dataclass(frozen=True)
class Away:
    """The trainer does not answer; ``retry_in_s``: when the link tries again."""

    why: str
    retry_in_s: float


Event = (
    Started
    | Cancel
    | Release
    | Unusable
    | Accepted
    | TrainerState
    | Progress
    | Result
    | Downloaded
    | FetchFailed
    | Deliver
    | Acked
    | CancelReply
    | TrainerError
    | Away
)


def step(rec: LinkJob, event: Event) -> tuple[LinkJob, list[Effect]]:
    """Apply ``event`` to ``rec``; returns the next record and the effects, in order."""
    p = rec.phase
    if p in FINAL and not isinstance(event, Release | Started):
        return rec, []
    match event:
        case Started():
            return _started(rec, event)
        case Cancel():
            if p in ABANDONED or p in FINAL:
                return rec, []
            nxt = replace(rec, phase=Phase.RELEASE if p is Phase.ACK else Phase.CANCEL)
            return nxt, [Save(), ForgetLive()]
        case Release():
            if rec.released:
                return rec, []
            return replace(rec, released=True), [Save(), DropStaging()]
        case Unusable(why=why):
            return _failed(rec, why)
        case Away(why=why, retry_in_s=delay):
            if p in ABANDONED or p is Phase.ACK:  # its verdict was told already
                return rec, []
            return rec, [Report("waiting", {"reason": why, "retry_in_s": round(delay, 2)})]
    if p in ABANDONED:
        return _abandoned(rec, event)
    match event:
        case Accepted(key=key, state=state, need=need, credit=credit):
            nxt = replace(rec, key=key)
            eff: list[Effect] = [Settle()]
            if key != rec.key:
                eff.append(Save())
            if state != JobState.RECEIVING:
                nxt, more = _trainer_state(nxt, state, "")
                return nxt, eff + more
            return nxt, [*eff, Report("receiving", {}, once=True), Upload(need, credit)]
        case TrainerState(state=state, detail=detail):
            return _trainer_state(rec, state, detail)
        case Progress(info=info):
            return rec, [Report("training", info)]
        case Result():
            return _result(rec, event)
        case Downloaded():
            if p is not Phase.FETCH:
                return rec, []
            return replace(rec, phase=Phase.DELIVER), [Save()]
        case Deliver():
            if p is not Phase.DELIVER:
                return rec, []
            return replace(rec, phase=Phase.ACK, offers=rec.offers + 1), [Save(), Offer()]
        case FetchFailed(why=why, retries=retries, backoff_s=first, max_backoff_s=most):
            if p is not Phase.FETCH:
                return rec, []
            n = rec.fetch_failures + 1
            if n > retries:
                msg = f"result {rec.bundle_id} refused after {n} tries: {why}"
                nxt = replace(rec, fetch_failures=n, phase=Phase.ACK, refused=msg)
                return nxt, [Save(), ForgetLive(), DropStaging(), Report("failed", {"error": msg})]
            delay = min(first * 2 ** min(n - 1, 30), most)
            return replace(rec, fetch_failures=n), [Save(), Hold(delay)]
        case Acked():
            if p is Phase.ACK:
                return replace(rec, phase=Phase.DONE), [Save(), Settle()]
            return rec, []
        case TrainerError(code=code, re=re_, message=message):
            if code == "unknown_job":  # the trainer forgot it: submit it again, if it can be
                if not rec.export_removed:
                    return replace(rec, key="", phase=Phase.UPLOAD), [Save(), ForgetLive()]
                if p is Phase.ACK:  # its verdict was handed on: nothing left to acknowledge
                    return replace(rec, phase=Phase.DONE), [Save(), ForgetLive()]
                return _failed(rec, "the trainer lost the job after the export was removed")
            if code == "not_ready":
                if p is Phase.FETCH:
                    return replace(rec, phase=Phase.WAIT), [Save(), Settle()]
                return rec, [Settle()]
            if re_ == "submit" and code in ("too_large", "bad_request", "parent_missing"):
                return _failed(rec, message)
            return rec, [Settle(later=True)]
    return rec, []


def _started(rec: LinkJob, s: Started) -> tuple[LinkJob, list[Effect]]:
    rec, eff = _export_at_start(rec, s.exported)
    nxt, more = _offer_again(rec, s.in_store, s.staged)
    return nxt, eff + more


def _offer_again(rec: LinkJob, in_store: bool, staged: bool) -> tuple[LinkJob, list[Effect]]:
    """At start: a result handed on that never reached the store (the agent went down
    before importing it) is handed on again, at most MAX_OFFERS times; then the job
    failed (the daemon would wait for it for ever)."""
    offered = rec.bundle_id and rec.phase in (Phase.ACK, Phase.DONE) and rec.offers > 0
    if not offered or rec.released or in_store:
        return rec, ([DropStaging()] if rec.phase in FINAL else [])
    if staged and rec.offers < MAX_OFFERS:
        return replace(rec, offers=rec.offers + 1), [Save(), Offer()]
    why = f"result {rec.bundle_id} was never imported (offered {rec.offers} times)"
    nxt = replace(rec, released=True)
    return nxt, [Save(), DropStaging(), Report("failed", {"error": why})]


HELD = frozenset({Phase.WAIT, Phase.FETCH, Phase.DELIVER, Phase.ACK, Phase.DONE})
"""Phases in which the trainer holds the whole dataset (or held it: a verdict came)."""


def _held(rec: LinkJob, phase: Phase, *effects: Effect) -> tuple[LinkJob, list[Effect]]:
    """``rec`` moves to ``phase`` (one of :data:`HELD`): the record is saved, then the
    export removed (a crash in between leaves an export on disk, never a record that
    would upload from a missing one)."""
    nxt = replace(rec, phase=phase, export_removed=True)
    drop: list[Effect] = [] if rec.export_removed else [DropExport()]
    return nxt, [Save(), *drop, *effects]


def _export_at_start(rec: LinkJob, exported: bool) -> tuple[LinkJob, list[Effect]]:
    """A record of a phase in which the trainer holds the dataset whose export is still on
    disk (written by an earlier version, or the agent went down before removing it)."""
    if rec.phase in HELD and not rec.export_removed:
        return replace(rec, export_removed=True), [Save(), DropExport()]
    if rec.export_removed and exported:
        return rec, [DropExport()]
    return rec, []


def _failed(rec: LinkJob, why: str) -> tuple[LinkJob, list[Effect]]:
    return replace(rec, phase=Phase.FAILED), [
        Save(),
        ForgetLive(),
        Report("failed", {"error": why}),
    ]


def _trainer_state(rec: LinkJob, state: str, detail: str) -> tuple[LinkJob, list[Effect]]:
    p = rec.phase
    eff: list[Effect] = []
    if state in (JobState.RECEIVING, JobState.QUEUED, JobState.TRAINING):
        eff.append(Report(state, {"detail": detail}, once=True))
    if state == JobState.RECEIVING and p is not Phase.UPLOAD:
        return rec, []  # stale: a trainer never takes data back (a lost job is unknown_job)
    if state in (JobState.QUEUED, JobState.TRAINING) and p is Phase.UPLOAD:
        nxt, more = _held(rec, Phase.WAIT, ClearUpload())
        return nxt, eff + more
    if state == JobState.CANCELLED:  # not by this link (its records were lost): it ended
        return _failed(rec, "the trainer says the job was cancelled")
    if state in FINISHED and p in (Phase.UPLOAD, Phase.WAIT):
        nxt, more = _held(rec, Phase.FETCH, Settle())
        return nxt, eff + more
    if state == JobState.ACKNOWLEDGED and p is Phase.ACK:
        return replace(rec, phase=Phase.DONE), [*eff, Save()]
    return rec, eff


def _result(rec: LinkJob, r: Result) -> tuple[LinkJob, list[Effect]]:
    if rec.phase is not Phase.FETCH:
        return rec, [Settle()]
    if r.outcome == "improved" and (r.bundle_id or r.error):
        if r.error:  # unusable: say why, and let the trainer forget it
            why = f"result refused: {r.error}"
            nxt = replace(rec, phase=Phase.ACK)
            return nxt, [Settle(), Save(), Report("failed", {"error": why})]
        nxt = replace(rec, bundle_id=r.bundle_id)
        if r.staged:
            return replace(nxt, phase=Phase.DELIVER), [Settle(), Save()]
        return nxt, [Settle(), Save(), Download(r.manifest)]
    outcome = r.outcome if r.outcome in ("no_improvement", "failed") else "failed"
    key = "error" if outcome == "failed" else "reason"
    return replace(rec, phase=Phase.ACK), [Settle(), Save(), Report(outcome, {key: r.detail})]


def _abandoned(rec: LinkJob, event: Event) -> tuple[LinkJob, list[Effect]]:
    """A cancelled job: only the replies to ``cancel`` and ``ack`` matter; its results,
    progress and state pushes are dropped."""
    p = rec.phase
    match event:
        case CancelReply(cancelled=cancelled, state=state) if p is Phase.CANCEL:
            if cancelled or state in (JobState.ACKNOWLEDGED, JobState.CANCELLED):
                return _end_cancel(rec, state)
            if state in FINISHED:  # it ended before the cancel: release its result
                return replace(rec, phase=Phase.RELEASE), [Settle(), Save()]
            return rec, [Settle(later=True)]
        case Acked(state=state) if p is Phase.RELEASE:
            return _end_cancel(rec, state)
        case TrainerError(code=code, re=re_) if re_ in ("cancel", "ack"):
            if code == "unknown_job":  # the trainer never had it (or forgot it)
                return _end_cancel(rec, "unknown")
            if re_ == "ack":  # a result it cannot take back: nothing to release
                return _end_cancel(rec, code)
            return rec, [Settle(later=True)]
    return rec, []


def _end_cancel(rec: LinkJob, trainer_state: str) -> tuple[LinkJob, list[Effect]]:
    eff: list[Effect] = [Settle(), Save(), ForgetLive()]
    if rec.offers == 0:  # never handed on: a partial download is of no use
        eff.append(DropStaging())
    eff.append(Report("cancelled", {"trainer_state": trainer_state}))
    return replace(rec, phase=Phase.CANCELLED), eff
