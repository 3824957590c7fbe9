"""Recording a lifecycle step: its state, the rows its effects imply and its events, in one
transaction of the grasp log.

:func:`record_step` writes everything a step changes (conditions, jobs, policy statuses,
the ``lifecycle`` state with the active and last-good pointers, and the step's events)
so that a crash leaves the log before or after the step, never between. It returns what
the control thread must do once committed (publish the events, drop sessions, start an
export, start probation). No sockets, no threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent import lifecycle as lc
from agent.grasplog import GraspLog
from agent.jobs import held_until
from agent.policy import Policy
from agent.topics import Topic

Event = tuple[str, dict[str, Any], float]
"""(topic, data, time) of one event."""

BACK_REASONS = ("rollback", "probation_failed", "policy_fault")
"""Swap reasons published as ``agent.policy.rolled_back`` (others: ``swapped``)."""


@dataclass
class Recorded:
    """What one committed step asks of the control thread."""

    state: lc.State
    """The new state (with a created job folded in)."""
    events: list[Event] = field(default_factory=list)
    """Recorded events, to publish in this order."""
    condition_id: int | None = None
    """The id of a condition the step created."""
    export: tuple[int, str, int] | None = None
    """(job, condition, after) whose dataset must be exported: the condition's grasps after
    row ``after`` (the earlier ones are with the trainer already)."""
    rejected: list[str] = field(default_factory=list)
    """Policies taken out of service (drop their sessions)."""
    cancelled: list[int] = field(default_factory=list)
    """Jobs abandoned by this step (the trainer is told to stop them)."""
    swapped: bool = False
    """The active policy changed."""


def record_step(
    log: GraspLog,
    old: lc.State,
    new: lc.State,
    effects: list[lc.Effect],
    details: dict[str, Any],
    warm: Callable[[str], Policy | None],
    condition_id: int,
) -> Recorded:
    """Write a step (one transaction) and return its follow-ups; raises what SQLite raises
    (nothing is written then). ``details`` are merged into the step's alarm payloads."""
    rec = Recorded(new)
    now = time.time()
    with log.write():
        for eff in effects:
            _record(log, eff, old, rec, details, warm, condition_id, now)
        log.set_kv("lifecycle", rec.state.to_dict())
        for topic, data, t in rec.events:
            log.add_event(topic, data, t)
    return rec


def _record(
    log: GraspLog,
    eff: lc.Effect,
    old: lc.State,
    rec: Recorded,
    details: dict[str, Any],
    warm: Callable[[str], Policy | None],
    condition_id: int,
    now: float,
) -> None:
    new = rec.state
    if isinstance(eff, lc.NewCondition):
        rec.condition_id = log.add_condition(eff.name, eff.note, eff.source, old.policy)
        data = {"condition": eff.name, "note": eff.note, "source": eff.source}
        rec.events.append((Topic.CONDITION, {**data, "previous": old.condition}, now))
    elif isinstance(eff, lc.SubmitJob):
        cond = log.condition(eff.condition)
        job = log.add_job(int(cond["id"]) if cond else condition_id, eff.parent, "")
        rec.state, _ = lc.step(new, lc.JobSubmitted(job))
        job_data: dict[str, Any] = {"job": job, "status": "exporting"}
        job_data |= {"condition": eff.condition, "parent": eff.parent}
        rec.events.append((Topic.JOB, job_data, now))
        rec.export = (
            job,
            eff.condition,
            held_until(log, int(cond["id"]) if cond else condition_id),
        )
    elif isinstance(eff, lc.CancelJob):
        log.update_job(eff.job, "cancelled")
        rec.cancelled.append(eff.job)
        rec.events.append((Topic.JOB, {"job": eff.job, "status": "cancelled"}, now))
    elif isinstance(eff, lc.RaiseAlarm):
        data = {"kind": eff.kind, "reason": eff.reason}
        where = {"condition": old.condition, "policy": old.policy}
        rec.events.append((Topic.ALARM, {**data, **where, **details}, now))
    elif isinstance(eff, lc.RejectPolicy):
        log.upsert_policy(eff.policy, "", "rejected", reason=eff.reason[:500])
        data = {"policy": eff.policy, "reason": eff.reason}
        rec.events.append((Topic.POLICY_REJECTED, data, now))
        rec.rejected.append(eff.policy)
    elif isinstance(eff, lc.Report):
        topic = Topic.RACE if eff.subject == "race" else Topic.ROUND
        # the condition the news is about (a race abandoned for a new condition names its own)
        rec.events.append((topic, {"condition": new.condition, **eff.payload}, now))
    elif isinstance(eff, lc.SwapPolicy):
        log.activate_policy(eff.policy, eff.reason)
        back = eff.reason in BACK_REASONS
        topic = Topic.POLICY_ROLLED_BACK if back else Topic.POLICY_SWAPPED
        swap: dict[str, Any] = {
            "policy": eff.policy,
            "previous": old.policy,
            "reason": eff.reason,
            "probation_parent": new.probation_parent,
            "condition": new.condition,
        }
        pol = warm(eff.policy)
        if pol is not None:
            swap["providers"] = pol.providers
            swap["split_trunk"] = pol.split
        rec.events.append((topic, swap, now))
        rec.swapped = True
