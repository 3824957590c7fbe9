"""The lifecycle of conditions and policies as a pure state machine (no I/O).

::

    SERVING(c, p) --alarm(mark) | mark-condition--> EXPLORING(c', p)   collect N grasps
    EXPLORING --N grasps | finetune-->  TRAINING(c', p)                job submitted; p serves
    TRAINING --policy ready-->          SERVING(c', p')  on probation against p
    SERVING on probation --alarm-->     SERVING(c', p)   rolled back, alarm raised
    any --promote ID / rollback ID-->   SERVING(c, ID)

:func:`step` takes a state and an event and returns the next state and the
effects the daemon must carry out (submit a job, swap or roll back the policy,
publish an alarm). Illegal events raise :class:`LifecycleError`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


class Phase(StrEnum):
    SERVING = "serving"
    EXPLORING = "exploring"
    TRAINING = "training"


class LifecycleError(ValueError):
    """An event is not allowed in the current state."""


@dataclass(frozen=True)
class State:
    """Where the agent is in its lifecycle."""

    phase: Phase
    """SERVING, EXPLORING or TRAINING."""
    condition: str
    """Current condition name."""
    policy: str | None
    """Active policy id (None: nothing to serve)."""
    explored: int = 0
    """Grasps collected in the current exploration."""
    explore_target: int = 200
    """Grasps to collect before submitting a job."""
    job: int | None = None
    """Fine-tune job in flight (TRAINING)."""
    probation_parent: str | None = None
    """Parent of a freshly trained policy, restored if the new one is worse."""

    def to_dict(self) -> dict[str, object]:
        return {
            "phase": self.phase.value,
            "condition": self.condition,
            "policy": self.policy,
            "explored": self.explored,
            "explore_target": self.explore_target,
            "job": self.job,
            "probation_parent": self.probation_parent,
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> State:
        job = d.get("job")
        return cls(
            phase=Phase(str(d["phase"])),
            condition=str(d["condition"]),
            policy=None if d.get("policy") is None else str(d["policy"]),
            explored=int(str(d.get("explored", 0))),
            explore_target=int(str(d.get("explore_target", 200))),
            job=None if job is None else int(str(job)),
            probation_parent=None
            if d.get("probation_parent") is None
            else str(d["probation_parent"]),
        )


# -- events ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class MarkCondition:
    """The world changed (operator or alarm): explore the new condition."""

    name: str
    note: str = ""
    source: str = "operator"


@dataclass(frozen=True)
class GraspDone:
    """A grasp finished."""

    success: bool


@dataclass(frozen=True)
class Alarm:
    """The detector fired; ``auto_mark`` says whether to mark a new condition."""

    auto_mark: bool
    new_condition: str = ""


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
    """A trained policy passed its checks and was loaded."""

    policy: str
    job: int | None = None


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
    """The new policy's own reference is established; it is no longer on probation."""


Event = (
    MarkCondition
    | GraspDone
    | Alarm
    | Finetune
    | JobSubmitted
    | JobFailed
    | PolicyReady
    | Promote
    | Rollback
    | ProbationPassed
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
    """Publish an alarm."""

    reason: str


@dataclass(frozen=True)
class CancelJob:
    """The job in flight is abandoned."""

    job: int


Effect = SubmitJob | SwapPolicy | NewCondition | RaiseAlarm | CancelJob


def step(s: State, e: Event) -> tuple[State, list[Effect]]:
    """Apply one event; returns the next state and the effects to carry out."""
    if isinstance(e, MarkCondition):
        if not e.name:
            raise LifecycleError("a condition needs a name")
        if e.name == s.condition:
            raise LifecycleError(f"already in condition {e.name!r}")
        effects: list[Effect] = [NewCondition(e.name, e.note, e.source)]
        if s.job is not None:
            effects.append(CancelJob(s.job))
        return (
            replace(
                s,
                phase=Phase.EXPLORING,
                condition=e.name,
                explored=0,
                job=None,
                probation_parent=None,
            ),
            effects,
        )
    if isinstance(e, GraspDone):
        if s.phase is not Phase.EXPLORING:
            return s, []
        n = s.explored + 1
        if n >= s.explore_target and s.policy is not None:
            return replace(s, explored=n, phase=Phase.TRAINING), [SubmitJob(s.condition, s.policy)]
        return replace(s, explored=n), []
    if isinstance(e, Alarm):
        if s.probation_parent is not None and s.phase is Phase.SERVING:
            parent = s.probation_parent
            return replace(s, policy=parent, probation_parent=None), [
                SwapPolicy(parent, "rollback: new policy worse than its parent"),
                RaiseAlarm(f"policy {s.policy} worse than parent {parent}; rolled back"),
            ]
        if e.auto_mark and s.phase is Phase.SERVING:
            s2, eff = step(s, MarkCondition(e.new_condition, "marked by the detector", "alarm"))
            return s2, [RaiseAlarm("success rate dropped; new condition marked"), *eff]
        return s, [RaiseAlarm("success rate dropped")]
    if isinstance(e, Finetune):
        if s.phase is Phase.TRAINING:
            raise LifecycleError(f"a fine-tune job ({s.job}) is already in flight")
        if s.policy is None:
            raise LifecycleError("no active policy to fine-tune")
        return replace(s, phase=Phase.TRAINING), [SubmitJob(s.condition, s.policy)]
    if isinstance(e, JobSubmitted):
        if s.phase is not Phase.TRAINING:
            raise LifecycleError("no job was requested")
        return replace(s, job=e.job), []
    if isinstance(e, JobFailed):
        if s.job != e.job:
            return s, []
        return replace(s, phase=Phase.EXPLORING, job=None), [
            RaiseAlarm(f"job {e.job} failed: {e.reason}")
        ]
    if isinstance(e, PolicyReady):
        if s.phase is not Phase.TRAINING or (e.job is not None and e.job != s.job):
            raise LifecycleError("no fine-tune job is waiting for this policy")
        return replace(
            s,
            phase=Phase.SERVING,
            policy=e.policy,
            job=None,
            explored=0,
            probation_parent=s.policy,
        ), [SwapPolicy(e.policy, f"trained in condition {s.condition}")]
    if isinstance(e, Promote | Rollback):
        if e.policy == s.policy:
            raise LifecycleError(f"policy {e.policy} is already active")
        effects = [SwapPolicy(e.policy, "rollback" if isinstance(e, Rollback) else "promote")]
        if s.job is not None:
            effects.append(CancelJob(s.job))
        return replace(
            s, phase=Phase.SERVING, policy=e.policy, job=None, explored=0, probation_parent=None
        ), effects
    if isinstance(e, ProbationPassed):
        return replace(s, probation_parent=None), []
    raise LifecycleError(f"unknown event {e!r}")
