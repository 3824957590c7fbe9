"""One grasp: observe, decide under the decision guard, act, until the driver ends it.

Contract: returns the :class:`agent.grasplog.GraspRecord` of a grasp the driver ended
(nothing is written here). Raises :class:`agent.policy.PolicyFault` when a decision
hangs, fails or is not finite or Q is outside [0, 1] (that decision's action was not
executed), ``DriverUnavailable`` when the robot cannot be reached, and ``RuntimeError``
when the driver does not end the grasp within ``horizon`` steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from agent.decision_guard import DecisionGuard
from agent.driver import Driver
from agent.logrecords import GraspRecord, TransitionRecord
from agent.policy import Policy, PolicyFault


def grasp(
    driver: Driver,
    policy: Policy,
    guard: DecisionGuard,
    horizon: int,
    mode: str,
    condition_id: int,
    on_latency: Callable[[float], None],
) -> GraspRecord:
    """Run one grasp with ``policy``; ``on_latency(seconds)`` gets each decision's latency."""
    t_start = time.time()
    transitions: list[TransitionRecord] = []
    decide = execute = reward = 0.0
    first_q = float("nan")
    outcome = None
    for step in range(horizon):
        obs = driver.observe()
        with guard.deciding(policy):
            d = policy.act(obs.image)
        if not (math.isfinite(d.q) and 0.0 <= d.q <= 1.0) or not np.all(np.isfinite(d.action)):
            raise PolicyFault("bad_output", f"Q {d.q!r} or action {d.action!r}")
        on_latency(d.latency_s)
        decide += d.latency_s
        if step == 0:
            first_q = d.q
        t0 = time.perf_counter()
        r = driver.execute(d.action)
        execute += time.perf_counter() - t0
        reward += r.reward
        transitions.append(TransitionRecord(step, obs.image, d.action.tolist(), r.reward, r.done))
        if r.done:
            outcome = r.outcome
            break
    if outcome is None:
        raise RuntimeError(f"driver did not end the grasp within {horizon} steps")
    return GraspRecord(
        t_start=t_start,
        t_end=time.time(),
        condition_id=condition_id,
        policy_id=policy.id,
        mode=mode,
        success=outcome.success,
        reward=reward,
        q=first_q,
        decide_ms=decide * 1e3,
        execute_ms=execute * 1e3,
        sensed_by=outcome.sensed_by,
        detail=dict(outcome.detail),
        transitions=tuple(transitions),
    )


class Outage:
    """The driver's reachability: one report per outage, and a pause before the next try
    that doubles from ``min_s`` up to 2 s (an unreachable robot is not an error)."""

    def __init__(self, min_s: float) -> None:
        self.why = ""
        """Why the driver is unavailable; empty while it answers."""
        self.pause_s = 0.0
        self._min_s = min_s

    def down(self, exc: BaseException) -> bool:
        """The driver is unavailable; True for the first failure of an outage."""
        first = not self.why
        if first:
            self.why = str(exc) or type(exc).__name__
        self.pause_s = min(2.0, max(self._min_s, 2 * self.pause_s))
        return first

    def up(self) -> bool:
        """A grasp went through; True if it ends an outage."""
        ended = bool(self.why)
        self.why, self.pause_s = "", 0.0
        return ended
