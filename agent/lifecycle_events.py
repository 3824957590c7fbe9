"""The lifecycle's events (what happened) and effects (what the daemon must do), as frozen
dataclasses; :mod:`agent.lifecycle` steps a state with the first and returns the second."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


# -- events ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class MarkCondition:
    """The world changed (operator or alarm): explore the new condition; ``level`` is the
    serving policy's success rate before the change (the daemon fills it in; rounds stop
    once the level is back)."""

    name: str
    note: str = ""
    source: str = "operator"
    level: float | None = None


@dataclass(frozen=True)
class GraspDone:
    """A grasp finished under ``policy`` (None: the one the state says serves); ``grasp`` is
    its row id in the grasp log (0: not committed yet)."""

    success: bool
    policy: str | None = None
    grasp: int = 0


@dataclass(frozen=True)
class Alarm:
    """The detector fired; ``auto_mark`` says whether to mark a new condition."""

    auto_mark: bool
    new_condition: str = ""
    level: float | None = None


@dataclass(frozen=True)
class Finetune:
    """Submit a fine-tune job now."""


@dataclass(frozen=True)
class JobSubmitted:
    """The daemon created job ``job``."""

    job: int


@dataclass(frozen=True)
class JobFailed:
    """The job in flight failed."""

    job: int
    reason: str = ""


@dataclass(frozen=True)
class PolicyReady:
    """A trained policy passed its checks and was loaded; ``grasp`` is the latest grasp row in
    the log then (a race counts only the grasps after it)."""

    policy: str
    job: int | None = None
    grasp: int = 0


@dataclass(frozen=True)
class Promote:
    """Operator: serve this policy now."""

    policy: str


@dataclass(frozen=True)
class Rollback:
    """Operator: go back to this earlier policy."""

    policy: str


@dataclass(frozen=True)
class ProbationPassed:
    """The probation test accepted the active policy: it becomes the last good one."""


@dataclass(frozen=True)
class ProbationFailed:
    """The probation test found the active policy worse than the policy it replaced."""

    reason: str


@dataclass(frozen=True)
class PolicyFault:
    """``policy`` misbehaved at run time (or could not be loaded): take it out of service."""

    policy: str
    reason: str


@dataclass(frozen=True)
class JobNoImprovement:
    """The trainer found no candidate better than the parent: the parent serves on."""

    job: int
    detail: str = ""


@dataclass(frozen=True)
class JobKept:
    """The job's export is written and there is no trainer to send it to: the exploration is
    kept on disk (for ``robot-trainer finetune``) and the parent serves on."""

    job: int


Event = (
    MarkCondition
    | GraspDone
    | Alarm
    | Finetune
    | JobSubmitted
    | JobFailed
    | JobKept
    | PolicyReady
    | Promote
    | Rollback
    | ProbationPassed
    | ProbationFailed
    | PolicyFault
    | JobNoImprovement
)


# -- effects --------------------------------------------------------------------------------
@dataclass(frozen=True)
class SubmitJob:
    """Export the condition's data and submit a fine-tune of ``parent``."""

    condition: str
    parent: str


@dataclass(frozen=True)
class SwapPolicy:
    """Serve ``policy`` from the next grasp on."""

    policy: str
    reason: str


@dataclass(frozen=True)
class NewCondition:
    """Record a new condition and reset the detector."""

    name: str
    note: str
    source: str


@dataclass(frozen=True)
class RaiseAlarm:
    """Publish one alarm: ``kind`` is a stable code, ``reason`` a sentence."""

    kind: str
    reason: str


@dataclass(frozen=True)
class RejectPolicy:
    """Mark ``policy`` rejected with ``reason``; it is never served again."""

    policy: str
    reason: str


@dataclass(frozen=True)
class CancelJob:
    """The job in flight is abandoned."""

    job: int


@dataclass(frozen=True)
class Report:
    """Publish what a race or a round did: ``subject`` "race" or "round", ``data`` its news
    (``event``: started, eliminated, decided, ended...)."""

    subject: str
    data: tuple[tuple[str, Any], ...]

    @property
    def payload(self) -> dict[str, Any]:
        return dict(self.data)


def report(subject: str, **data: Any) -> Report:
    """A :class:`Report` from keyword arguments (kept hashable as a tuple of items)."""
    return Report(subject, tuple(data.items()))


Effect = SubmitJob | SwapPolicy | NewCondition | RaiseAlarm | CancelJob | RejectPolicy | Report
