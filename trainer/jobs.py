"""The lifecycle of one fine-tune job on the trainer, as a pure state machine (no I/O).

::

    RECEIVING --data complete (every chunk, every whole checksum)--> QUEUED   FIFO by seq
    QUEUED    --worker picks it-->                                   TRAINING
    TRAINING  --improved-->                DONE            result bundle kept
    TRAINING  --no improvement-->          NO_IMPROVEMENT  the parent stands
    TRAINING  --runner raised-->           FAILED
    TRAINING  --trainer restarted-->       QUEUED (same seq: first in line; resumes from its
                                           checkpoint) or FAILED after ``max_attempts`` starts
    TRAINING  --clean shutdown-->          QUEUED (the interrupted run is not counted)
    DONE | NO_IMPROVEMENT | FAILED --agent fetched the result--> DELIVERED
    DONE | NO_IMPROVEMENT | FAILED | DELIVERED --agent acknowledged--> ACKNOWLEDGED (final)
    RECEIVING | QUEUED | TRAINING --agent cancelled--> CANCELLED (final: its upload, run
                                           directory and lineage entry are removed)

:func:`step` returns the next job and the effects the service carries out
(persist before replying, tell the agent, start the worker, clean up).
Repeats that change nothing (a second fetch, a second acknowledgement) are
allowed and return no state change, and so is a late verdict of a run that was
cancelled while it ended; anything else out of order raises :class:`JobError`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from agent.jobwire import JobState as JobState  # the states travel on the wire

FINISHED = frozenset({JobState.DONE, JobState.NO_IMPROVEMENT, JobState.FAILED})
"""States holding a result the agent has not fetched yet."""
CANCELLABLE = frozenset({JobState.RECEIVING, JobState.QUEUED, JobState.TRAINING})
"""States a ``cancel`` request ends (later states have a verdict already)."""


class JobError(ValueError):
    """An event is not allowed in the job's current state."""


@dataclass(frozen=True)
class Job:
    """What the trainer knows about one job (the row of the job table)."""

    key: str
    """Trainer-wide job id: ``<agent>-<agent job>-<first 12 hex of the export digest>``."""
    agent: str
    """Agent id (one lineage per agent)."""
    agent_job: int
    """The agent's own job number."""
    condition: str
    """Condition the job's data was collected under."""
    parent_id: str
    """Bundle id of the policy to fine-tune."""
    state: JobState = JobState.RECEIVING
    """Where the job is."""
    seq: int | None = None
    """Position in the FIFO queue, set when the data is complete."""
    attempts: int = 0
    """Training runs started (a restart mid-training starts another)."""
    outcome: str = ""
    """"improved", "no_improvement", "failed" once training ended, or "cancelled"."""
    bundle_id: str = ""
    """Result bundle id (outcome "improved")."""
    detail: str = ""
    """Human-readable reason or summary."""


# -- events --------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataComplete:
    """Every file arrived and matched its whole sha256; ``seq`` is the next queue position."""

    seq: int


@dataclass(frozen=True)
class Started:
    """The worker started (or resumed) training the job."""


@dataclass(frozen=True)
class Finished:
    """Training ended with a verdict: ``improved`` (with the bundle) or ``no_improvement``."""

    outcome: str
    bundle_id: str = ""
    detail: str = ""


@dataclass(frozen=True)
class Failed:
    """Training (or preparing its data) raised; ``detail`` says why."""

    detail: str


@dataclass(frozen=True)
class Restarted:
    """The trainer came back up; ``max_attempts`` bounds how often a job may crash it."""

    max_attempts: int


@dataclass(frozen=True)
class Interrupted:
    """A clean shutdown stopped training (checkpointed): queued again, not counted as a crash."""


@dataclass(frozen=True)
class Fetched:
    """The agent asked for the result."""


@dataclass(frozen=True)
class Acknowledged:
    """The agent confirmed it holds the result."""


@dataclass(frozen=True)
class Cancelled:
    """The agent abandoned the job: nothing more is trained or kept for it."""

    detail: str = "cancelled by the agent"


Event = (
    DataComplete
    | Started
    | Finished
    | Failed
    | Restarted
    | Interrupted
    | Fetched
    | Acknowledged
    | Cancelled
)


# -- effects -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Persist:
    """Write the job row (before any reply that depends on it)."""


@dataclass(frozen=True)
class NotifyAgent:
    """Tell the agent the job's new state."""


@dataclass(frozen=True)
class Schedule:
    """A job became runnable or the worker became free: start the next queued job."""


@dataclass(frozen=True)
class DropIncoming:
    """The job's uploaded files are no longer needed."""


Effect = Persist | NotifyAgent | Schedule | DropIncoming


def step(job: Job, event: Event) -> tuple[Job, list[Effect]]:
    """Apply ``event`` to ``job``; returns the next job and the effects to carry out."""
    s = job.state
    changed: list[Effect] = [Persist(), NotifyAgent()]
    if s is JobState.CANCELLED and isinstance(event, Finished | Failed | Acknowledged | Cancelled):
        return job, []  # the run's late verdict, or a repeated cancel or acknowledgement
    match event:
        case DataComplete(seq=seq):
            if s is JobState.RECEIVING:
                return replace(job, state=JobState.QUEUED, seq=seq), [*changed, Schedule()]
            return job, []  # already complete (a duplicate last chunk)
        case Started():
            if s is JobState.QUEUED:
                return replace(job, state=JobState.TRAINING, attempts=job.attempts + 1), changed
        case Finished(outcome=outcome, bundle_id=bid, detail=detail):
            if s is JobState.TRAINING:
                if outcome == "improved" and bid:
                    state = JobState.DONE
                elif outcome == "no_improvement":
                    state, bid = JobState.NO_IMPROVEMENT, ""
                else:
                    raise JobError(f"bad outcome {outcome!r} (bundle {bid!r})")
                nxt = replace(job, state=state, outcome=outcome, bundle_id=bid, detail=detail)
                return nxt, [*changed, DropIncoming(), Schedule()]
        case Failed(detail=detail):
            if s in (JobState.TRAINING, JobState.QUEUED, JobState.RECEIVING):
                nxt = replace(job, state=JobState.FAILED, outcome="failed", detail=detail)
                return nxt, [*changed, DropIncoming(), Schedule()]
        case Restarted(max_attempts=max_attempts):
            if s is JobState.TRAINING:
                if job.attempts >= max_attempts:
                    detail = f"the trainer went down during {job.attempts} training runs"
                    nxt = replace(job, state=JobState.FAILED, outcome="failed", detail=detail)
                    return nxt, [Persist(), DropIncoming()]
                return replace(job, state=JobState.QUEUED), [Persist()]
            return job, []
        case Interrupted():
            if s is JobState.TRAINING:
                return replace(job, state=JobState.QUEUED, attempts=job.attempts - 1), [Persist()]
        case Fetched():
            if s in FINISHED:
                return replace(job, state=JobState.DELIVERED), [Persist()]
            if s in (JobState.DELIVERED, JobState.ACKNOWLEDGED):
                return job, []
        case Acknowledged():
            if s in FINISHED or s is JobState.DELIVERED:
                return replace(job, state=JobState.ACKNOWLEDGED), [Persist()]
            if s is JobState.ACKNOWLEDGED:
                return job, []
        case Cancelled(detail=detail):
            if s in CANCELLABLE:
                nxt = replace(job, state=JobState.CANCELLED, outcome="cancelled", detail=detail)
                return nxt, [*changed, DropIncoming(), Schedule()]
            return job, []  # it has a verdict already: left as it is
    raise JobError(f"job {job.key}: {type(event).__name__} is not allowed in state {s.value}")
