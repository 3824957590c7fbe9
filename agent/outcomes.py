"""Acting on the success stream: each grasp's outcome steps the lifecycle and feeds the
watch (:class:`agent.watch.OutcomeWatch`); its verdicts become lifecycle events.

Contract (control thread only):

- **Calibration.** The detector calibrates on the active policy's own record in the
  current condition (:meth:`Outcomes.reset_detector`), read back from the grasp log, at
  the exploring ARL0 while a new condition is explored or trained.
- **Probation.** A policy swapped in on probation is judged against its parent's latest
  grasps in this condition (anywhere, if too few here), replaying its own grasps so far
  (a restart mid-probation).
- **Verdicts.** A detector alarm marks a new condition (``lifecycle.on_alarm = "mark"``)
  or only alerts, once per drop; a failed probation takes the policy out of service at
  once, even while the step cannot be committed (disk full).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

from agent import lifecycle as lc
from agent.config import AgentConfig
from agent.diskfull import is_disk_full
from agent.grasplog import GraspLog
from agent.journal import Journal
from agent.topics import Topic
from agent.watch import Judgement, OutcomeWatch

if TYPE_CHECKING:
    from agent.policies import PolicySlot


class Host(Protocol):
    """What the outcome judge asks of the daemon (control thread)."""

    @property
    def state(self) -> lc.State: ...
    @property
    def condition_id(self) -> int: ...
    def step(self, event: lc.Event, details: dict[str, Any] | None = None) -> lc.State: ...
    def try_step(self, event: lc.Event, details: dict[str, Any] | None = None) -> None: ...
    @property
    def journal(self) -> Journal: ...
    @property
    def slot(self) -> PolicySlot: ...


class Outcomes:
    """Turns outcomes and the watch's verdicts into lifecycle steps and events."""

    def __init__(self, host: Host, glog: GraspLog, cfg: AgentConfig) -> None:
        self.host = host
        self.log = glog
        self.cfg = cfg
        self.watch = OutcomeWatch(cfg.detector, cfg.probation)
        """The drop detector and the probation test of the active policy."""

    def grasped(self, success: bool, policy: str | None = None, grasp: int = 0) -> None:
        """One grasp under ``policy`` ended (and was recorded as row ``grasp``; 0: held)."""
        try:
            self.host.step(lc.GraspDone(success, policy, grasp))
        except Exception as exc:
            if not is_disk_full(exc):
                raise
        judged = self.watch.update(success)
        if judged is not None:
            self._judged(judged)

    def _judged(self, j: Judgement) -> None:
        """Act on a detector alarm or a probation verdict."""
        h = self.host
        if j.kind == "alarm":
            # while exploring or training the chart calibrated on the new condition itself at
            # detector.explore_arl0 (re-marking at the serving ARL0 restarted ~1 in 3
            # explorations on false alarms): its alarm is a second change of the world
            details = {**j.details, "action": self.cfg.lifecycle.on_alarm}
            auto = self.cfg.lifecycle.on_alarm == "mark"
            before = h.state.condition
            alarm = lc.Alarm(auto, self._auto_name(), self.level_before())
            h.try_step(alarm, details)
            if h.state.condition == before:  # alert only: one alarm per drop, not a storm
                self.reset_detector(fresh=True)
            return
        pid, parent = h.state.policy, h.state.probation_parent
        h.journal.emit(Topic.POLICY_PROBATION, {"policy": pid, "parent": parent, **j.details})
        if j.kind == "fail":
            try:
                h.step(lc.ProbationFailed(j.reason), j.details)
            except Exception as exc:  # e.g. disk full: out of service now, recorded later
                h.journal.error("lifecycle", exc)
                if pid is not None:
                    h.slot.out_of_service(pid, j.reason)
        else:
            h.try_step(lc.ProbationPassed())
        self.reset_detector()

    def level_before(self) -> float | None:
        """The serving policy's success rate before a change: the rate its chart was designed
        on, else its latest grasps in this condition (None: fewer than 20)."""
        design = self.watch.detector.design
        if design is not None:
            return float(design.p0)
        s = self.host.state
        recent = (
            []
            if s.policy is None
            else self.log.recent_outcomes(s.policy, self.host.condition_id, 200)
        )
        return sum(recent) / len(recent) if len(recent) >= 20 else None

    def resume(self) -> None:
        """At start-up: count the race grasps the log holds past the persisted race (a crash
        between a grasp and its step), then go on with the probation the lifecycle persisted,
        or calibrate."""
        s = self.host.state
        if s.race is not None and s.rounds is not None:
            for gid, policy, success in self.log.grasps_after(s.rounds.last_grasp):
                self.host.try_step(lc.GraspDone(bool(success), str(policy), int(gid)))
            s = self.host.state
        if s.probation_parent and s.policy:
            self.start_probation()
        elif s.policy:
            self.reset_detector()

    def swapped(self) -> None:
        """The active policy changed: probation if it has a parent to beat, else calibrate."""
        if self.host.state.probation_parent is not None:
            self.start_probation()
        else:
            self.reset_detector()

    def start_probation(self) -> None:
        """Judge the active policy against its probation parent under this condition: the
        parent's latest grasps here (anywhere, if too few here) against the child's."""
        s, cid = self.host.state, self.host.condition_id
        child, parent = s.policy, s.probation_parent
        if child is None or parent is None:
            self.reset_detector()
            return
        pc = self.cfg.probation
        hist = self.log.recent_outcomes(parent, cid, pc.reference_grasps)
        if len(hist) < pc.min_reference:
            hist = self.log.recent_outcomes_any(parent, pc.reference_grasps)
        own = self.log.recent_outcomes(child, cid, pc.max_grasps)
        judged = self.watch.start_probation(hist, own)
        if judged is not None:
            self._judged(judged)

    def reset_detector(self, fresh: bool = False) -> None:
        """The detector calibrates on the active policy's own record in this condition, or
        (``fresh``, after an alarm that changed nothing) on the grasps to come: the record
        then ends in the run of failures that raised the alarm, a reference biased low
        that made the chart 2x slower to alarm again after a false alarm."""
        s = self.host.state
        n = self.cfg.detector.reference_grasps
        history: list[bool] | None = None
        if s.policy is not None:
            history = [] if fresh else self.log.recent_outcomes(s.policy, self.host.condition_id, n)
        self.watch.reset(history, exploring=s.phase is not lc.Phase.SERVING)

    def _auto_name(self) -> str:
        base = f"auto-{time.strftime('%Y%m%d-%H%M%S')}"
        name, i = base, 1
        while self.log.condition(name) is not None or name == self.host.state.condition:
            i += 1
            name = f"{base}-{i}"
        return name
