"""The lifecycle of conditions and policies as a pure state machine (no I/O).

::

    SERVING(c, p) --alarm(mark) | mark-condition--> EXPLORING(c', p)   collect N grasps
    EXPLORING(c', p) --alarm(mark)-->   EXPLORING(c'', p)  the world changed again: explore afresh
    EXPLORING --N grasps | finetune-->  TRAINING(c', p)                job submitted; p serves
    TRAINING --policy ready-->          RACING(c', p | p')  p' races p on the robot's grasps
    RACING --p' wins-->                 EXPLORING(c', p') the next round, or SERVING(c', p')
    RACING --p wins-->                  EXPLORING(c', p)  the next round, or SERVING(c', p)
    TRAINING --no improvement-->        EXPLORING(c', p)  the next round, or SERVING(c', p)
    TRAINING --export kept-->           SERVING(c', p)   no trainer: the export waits on disk
    TRAINING --policy ready, no race--> SERVING(c', p')  on probation against p
    on probation --passed-->            p' joins the good policies (last good = p')
    on probation --failed-->            SERVING(c', last good)  p' rejected, alarm
    any --policy fault (p)-->           last good other than p; p rejected, alarm
    any --promote ID-->                 SERVING(c, ID)  on probation against the old policy
    any --rollback ID-->                SERVING(c, ID)  trusted: joins the good policies

Rounds (:mod:`agent.rounds`): after a change, a race (or a job without a child) is followed
by another round (collect ``rounds.round_grasps`` grasps, train, race) until the serving
policy's race level is back within a margin of the level before the change, or on a
plateau or a budget; then the agent serves. A race (:mod:`agent.race`) serves the parent and
the child on alternate grasps (:attr:`State.serving`) and decides by a sequential paired
test: the winner serves and joins the good policies, a losing child is rejected.

The state is the one owner of "which policy is active" (``policy``; during a race, the
parent: :attr:`State.serving` names the arm of the next grasp) and of the persisted "last
good" pointer (the last of ``good``: policies that passed probation, won a race or that an
operator rolled back to, most recent last). The daemon never swaps a policy in unless an
event here says so.

:func:`step` takes a state and an event and returns the next state and the effects the daemon
must carry out (submit a job, swap or roll back the policy, reject a policy, publish an alarm
or a race's news). Illegal events raise :class:`LifecycleError`. The events and effects are
declared in :mod:`agent.lifecycle_events` (re-exported here).
"""

from __future__ import annotations

from dataclasses import replace

from agent import rounds as rd
from agent.lifecycle_events import Alarm as Alarm
from agent.lifecycle_events import CancelJob as CancelJob
from agent.lifecycle_events import Effect as Effect
from agent.lifecycle_events import Event as Event
from agent.lifecycle_events import Finetune as Finetune
from agent.lifecycle_events import GraspDone as GraspDone
from agent.lifecycle_events import JobFailed as JobFailed
from agent.lifecycle_events import JobKept as JobKept
from agent.lifecycle_events import JobNoImprovement as JobNoImprovement
from agent.lifecycle_events import JobSubmitted as JobSubmitted
from agent.lifecycle_events import MarkCondition as MarkCondition
from agent.lifecycle_events import NewCondition as NewCondition
from agent.lifecycle_events import PolicyFault as PolicyFault
from agent.lifecycle_events import PolicyReady as PolicyReady
from agent.lifecycle_events import ProbationFailed as ProbationFailed
from agent.lifecycle_events import ProbationPassed as ProbationPassed
from agent.lifecycle_events import Promote as Promote
from agent.lifecycle_events import RaiseAlarm as RaiseAlarm
from agent.lifecycle_events import RejectPolicy as RejectPolicy
from agent.lifecycle_events import Report as Report
from agent.lifecycle_events import Rollback as Rollback
from agent.lifecycle_events import SubmitJob as SubmitJob
from agent.lifecycle_events import SwapPolicy as SwapPolicy
from agent.lifecycle_events import report
from agent.lifecycle_race import (
    abandon_race,
    race_grasp,
    round_over,
    start_race,
    stop,
    withdraw,
)
from agent.lifecycle_state import MAX_GOOD as MAX_GOOD
from agent.lifecycle_state import Phase as Phase
from agent.lifecycle_state import State as State
from agent.lifecycle_state import with_good
from plumbing.names import SAFE_NAME_RULE, is_safe_name


def check_condition_name(name: str) -> None:
    """Raise ValueError unless ``name`` is a safe name without '..' (plumbing.names): condition
    names become directory names under data_dir."""
    if not is_safe_name(name, allow_dotdot=False):
        raise ValueError(f"bad condition name {name!r}: use {SAFE_NAME_RULE}, without '..'")


class LifecycleError(ValueError):
    """An event is not allowed in the current state."""


def _level_before(s: State, level: float | None) -> float | None:
    """The level a new condition's rounds aim back at: ``level`` (the serving policy's rate
    before this change), except while the agent is still adapting to an earlier change
    (exploring, training or racing with its level known): then that change's level, since
    the rate just before this one was measured on a world already changed (a false alarm
    just before a real change otherwise made 74% the target of a drop from 89%)."""
    adapting = s.phase is not Phase.SERVING or s.probation_parent is not None
    if adapting and s.rounds is not None and s.rounds.level_before is not None:
        return s.rounds.level_before
    return level


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
        effects += abandon_race(s, f"condition {e.name} marked")
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
                rounds=rd.Rounds(level_before=_level_before(s, e.level)),
            ),
            effects,
        )
    if isinstance(e, GraspDone):
        return _grasp_done(s, e)
    if isinstance(e, Alarm):
        serving = s.phase is Phase.SERVING and s.probation_parent is None
        if e.auto_mark and (serving or s.phase in (Phase.EXPLORING, Phase.RACING)):
            again = s.phase is not Phase.SERVING
            note = "marked by the detector" + (
                f" (a second drop while {s.phase.value} in {s.condition})" if again else ""
            )
            s2, eff = step(s, MarkCondition(e.new_condition, note, "alarm", e.level))
            what = (
                f"success rate dropped again while {s.phase.value}"
                if again
                else "success rate dropped"
            )
            return s2, [RaiseAlarm("success_drop", f"{what}; new condition marked"), *eff]
        if s.phase is Phase.TRAINING:
            return s, [
                RaiseAlarm("success_drop", "success rate dropped while training; the job goes on")
            ]
        return s, [RaiseAlarm("success_drop", "success rate dropped")]
    if isinstance(e, Finetune):
        if s.phase is Phase.TRAINING:
            raise LifecycleError(f"a fine-tune job ({s.job}) is already in flight")
        if s.phase is Phase.RACING:
            raise LifecycleError("a race is running: its verdict comes first")
        if s.policy is None:
            raise LifecycleError("no active policy to fine-tune")
        return _submit(s)
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
    if isinstance(e, JobNoImprovement):
        if s.job != e.job:
            return s, []
        return round_over(replace(s, job=None), True, [])
    if isinstance(e, JobKept):
        if s.job != e.job:
            return s, []
        r = s.rounds if s.rounds is None else replace(s.rounds, stopped="no trainer")
        return replace(s, phase=Phase.SERVING, job=None, explored=0, rounds=r), []
    if isinstance(e, PolicyReady):
        if s.phase is not Phase.TRAINING or (e.job is not None and e.job != s.job):
            raise LifecycleError("no fine-tune job is waiting for this policy")
        if s.rounds_cfg.race and s.policy is not None and e.policy != s.policy:
            return start_race(s, e)
        return replace(
            s,
            phase=Phase.SERVING,
            policy=e.policy,
            job=None,
            explored=0,
            probation_parent=s.policy,
        ), [SwapPolicy(e.policy, f"trained in condition {s.condition}")]
    if isinstance(e, Promote | Rollback):
        if e.policy == s.policy and s.phase is not Phase.RACING:
            raise LifecycleError(f"policy {e.policy} is already active")
        rollback = isinstance(e, Rollback)
        effects = [SwapPolicy(e.policy, "rollback" if rollback else "promote")]
        effects += abandon_race(s, "rollback" if rollback else "promote")
        if s.job is not None:
            effects.append(CancelJob(s.job))
        trusted = rollback or s.policy is None or e.policy == s.policy
        r = s.rounds if s.rounds is None else replace(s.rounds, race=None, stopped="operator")
        return replace(
            s,
            phase=Phase.SERVING,
            policy=e.policy,
            job=None,
            explored=0,
            probation_parent=None if trusted else s.policy,
            good=with_good(s.good, e.policy) if trusted else s.good,
            rounds=r,
        ), effects
    if isinstance(e, ProbationPassed):
        if s.probation_parent is None or s.policy is None:
            return s, []
        return replace(s, probation_parent=None, good=with_good(s.good, s.policy)), []
    if isinstance(e, ProbationFailed):
        if s.probation_parent is None or s.policy is None:
            return s, []
        return _take_out(s, s.policy, "probation_failed", e.reason)
    if isinstance(e, PolicyFault):
        race = s.race
        if race is not None and e.policy in race.policies[1:] and e.policy != s.policy:
            return withdraw(s, race, e)
        if e.policy != s.policy:
            return replace(s, good=tuple(p for p in s.good if p != e.policy)), [
                RejectPolicy(e.policy, e.reason)
            ]
        s2, effects = _take_out(s, e.policy, "policy_fault", e.reason)
        if race is None:
            return s2, effects
        r = s.rounds if s.rounds is None else replace(s.rounds, race=None, stopped="parent faulted")
        ended = abandon_race(s, "the parent faulted")
        return replace(s2, phase=Phase.SERVING, explored=0, rounds=r), [*effects, *ended]
    raise LifecycleError(f"unknown event {e!r}")


def _submit(s: State) -> tuple[State, list[Effect]]:
    """TRAINING: a job for the condition with the active policy as its parent."""
    assert s.policy is not None
    r = s.rounds
    effects: list[Effect] = [SubmitJob(s.condition, s.policy)]
    if r is not None:
        r = replace(r, round=r.round + 1)
        effects.append(report("round", event="started", round=r.round, parent=s.policy))
    return replace(s, phase=Phase.TRAINING, rounds=r), effects


def _grasp_done(s: State, e: GraspDone) -> tuple[State, list[Effect]]:
    if s.phase is Phase.RACING:
        return race_grasp(s, e)
    r = s.rounds
    if r is not None and not r.stopped and s.phase is not Phase.SERVING:
        r = replace(r, grasps=r.grasps + 1)
    if s.phase is Phase.TRAINING:
        return replace(s, rounds=r), []
    if s.phase is not Phase.EXPLORING:
        return s, []
    n = s.explored + 1
    s = replace(s, explored=n, rounds=r)
    if n < s.target or s.policy is None:
        return s, []
    if r is not None and r.round >= s.rounds_cfg.max_rounds:
        return stop(s, replace(r, stopped="rounds"), [])
    return _submit(s)


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
