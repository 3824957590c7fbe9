"""The lifecycle of conditions and policies as a pure state machine (no I/O).

::

    SERVING(c, p) --alarm(mark) | mark-condition--> EXPLORING(c', p)   collect N grasps
    EXPLORING(c', p) --alarm(mark)-->   EXPLORING(c'', p)  the world changed again: explore afresh
    EXPLORING --N grasps | finetune-->  TRAINING(c', p)                job submitted; p serves
    TRAINING --policy ready-->          SERVING(c', p')  on probation against p
    TRAINING --no improvement-->        SERVING(c', p)   the parent serves on
    TRAINING --export kept-->           SERVING(c', p)   no trainer: the export waits on disk
    on probation --passed-->            p' joins the good policies (last good = p')
    on probation --failed-->            SERVING(c', last good)  p' rejected, alarm
    any --policy fault (p)-->           last good other than p; p rejected, alarm
    any --promote ID-->                 SERVING(c, ID)  on probation against the old policy
    any --rollback ID-->                SERVING(c, ID)  trusted: joins the good policies

The state is the one owner of "which policy is active" (``policy``) and of
the persisted "last good" pointer (the last of ``good``: policies that passed
probation or that an operator rolled back to, most recent last). The daemon
never swaps a policy in unless an event here says so.

:func:`step` takes a state and an event and returns the next state and the
effects the daemon must carry out (submit a job, swap or roll back the policy,
reject a policy, publish an alarm). Illegal events raise :class:`LifecycleError`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from plumbing.names import SAFE_NAME_RULE, is_safe_name


def check_condition_name(name: str) -> None:
    """Raise ValueError unless ``name`` is a safe name without '..' (plumbing.names): condition
    names become directory names under data_dir."""
    if not is_safe_name(name, allow_dotdot=False):
        raise ValueError(f"bad condition name {name!r}: use {SAFE_NAME_RULE}, without '..'")


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
    """Policy the active one is on probation against (None: not on probation)."""
    good: tuple[str, ...] = ()
    """Policies that passed probation (or were rolled back to), most recent last (<= 8)."""

    @property
    def last_good(self) -> str | None:
        """The persisted "last good" pointer."""
        return self.good[-1] if self.good else None

    @property
    def fallback(self) -> str | None:
        """Where a fault or a failed probation lands: the latest good policy other than the
        active one (kept warm by the daemon)."""
        for p in reversed(self.good):
            if p != self.policy:
                return p
        return None

    def to_dict(self) -> dict[str, object]:
        return {
            "phase": self.phase.value,
            "condition": self.condition,
            "policy": self.policy,
            "explored": self.explored,
            "explore_target": self.explore_target,
            "job": self.job,
            "probation_parent": self.probation_parent,
            "good": list(self.good),
            "last_good": self.last_good,
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
            good=tuple(str(p) for p in _as_list(d.get("good"))),
        )


def _as_list(v: object) -> list[object]:
    return list(v) if isinstance(v, list | tuple) else []


MAX_GOOD = 8
"""How many good policies the state remembers."""


def _with_good(good: tuple[str, ...], policy: str) -> tuple[str, ...]:
    return (*(p for p in good if p != policy), policy)[-MAX_GOOD:]


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


Effect = SubmitJob | SwapPolicy | NewCondition | RaiseAlarm | CancelJob | RejectPolicy


def step(s: State, e: Event) -> tuple[State, list[Effect]]:
    """Apply one event; returns the next state and the effects to carry out."""
    if isinstance(e, MarkCondition):
        try:
            check_condition_name(e.name)
        except ValueError as exc:
            raise LifecycleError(str(exc)) from exc
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
        serving = s.phase is Phase.SERVING and s.probation_parent is None
        if e.auto_mark and (serving or s.phase is Phase.EXPLORING):
            again = s.phase is Phase.EXPLORING
            note = "marked by the detector" + (
                f" (a second drop while exploring {s.condition})" if again else ""
            )
            s2, eff = step(s, MarkCondition(e.new_condition, note, "alarm"))
            what = "success rate dropped again while exploring" if again else "success rate dropped"
            return s2, [RaiseAlarm("success_drop", f"{what}; new condition marked"), *eff]
        if s.phase is Phase.TRAINING:
            return s, [
                RaiseAlarm("success_drop", "success rate dropped while training; the job goes on")
            ]
        return s, [RaiseAlarm("success_drop", "success rate dropped")]
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
            RaiseAlarm("job_failed", f"job {e.job} failed: {e.reason}")
        ]
    if isinstance(e, JobNoImprovement | JobKept):
        if s.job != e.job:
            return s, []
        return replace(s, phase=Phase.SERVING, job=None, explored=0), []
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
        rollback = isinstance(e, Rollback)
        effects = [SwapPolicy(e.policy, "rollback" if rollback else "promote")]
        if s.job is not None:
            effects.append(CancelJob(s.job))
        trusted = rollback or s.policy is None
        return replace(
            s,
            phase=Phase.SERVING,
            policy=e.policy,
            job=None,
            explored=0,
            probation_parent=None if trusted else s.policy,
            good=_with_good(s.good, e.policy) if trusted else s.good,
        ), effects
    if isinstance(e, ProbationPassed):
        if s.probation_parent is None or s.policy is None:
            return s, []
        return replace(s, probation_parent=None, good=_with_good(s.good, s.policy)), []
    if isinstance(e, ProbationFailed):
        if s.probation_parent is None or s.policy is None:
            return s, []
        return _take_out(s, s.policy, "probation_failed", e.reason)
    if isinstance(e, PolicyFault):
        if e.policy != s.policy:
            return replace(s, good=tuple(p for p in s.good if p != e.policy)), [
                RejectPolicy(e.policy, e.reason)
            ]
        return _take_out(s, e.policy, "policy_fault", e.reason)
    raise LifecycleError(f"unknown event {e!r}")


def _take_out(s: State, bad: str, kind: str, reason: str) -> tuple[State, list[Effect]]:
    """Reject the active policy ``bad`` and land on the latest good policy (or none)."""
    good = tuple(p for p in s.good if p != bad)
    back = next(reversed(good), None)
    s2 = replace(s, policy=back, probation_parent=None, good=good)
    effects: list[Effect] = [RejectPolicy(bad, reason)]
    if back is not None:
        effects.append(SwapPolicy(back, kind))
        msg = f"policy {bad} taken out of service ({reason}); back to {back}"
    else:
        msg = f"policy {bad} taken out of service ({reason}); no good policy left, not actuating"
    effects.append(RaiseAlarm(kind, msg))
    return s2, effects
