"""What one run of ``bench/continual.py`` did after the world changed, from the agent's grasp
log (pure: grasps, events and job rows in, figures out; the reads are in bench/continual.py).

- **Served policy** at a checkpoint: the active policy once ``change + c`` grasps were
  finished, i.e. the ``policy`` of the last ``agent.policy.swapped`` or
  ``agent.policy.rolled_back`` event placed at or before that grasp (events are placed at the
  number of grasps finished when they were recorded, :func:`trainer.demo.timeline.place`).
  A race that serves its arms in turn changes no active policy until its winner is swapped in.
- **Rounds**: fine-tune jobs created after the change (job rows' ``created_at`` after the
  last grasp before the change finished).
- **Race cost**: grasps served under arms that ended eliminated, as the agent reports it: the
  ``cost`` field of the final event of each race (events whose topic contains ``race``; a
  race is identified by its ``race`` or ``parent`` field). None when the log has no race
  events (one-shot runs, and every run before the agent races).
- **Recovery**: (served - base under the challenge) / (base on baseline - base under the
  challenge), its 95% interval by a parametric bootstrap over all three measured rates (each
  drawn from its Jeffreys posterior), so the uncertainty of the base levels counts too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainer.demo.timeline import Event, Grasp, place

ACTIVE_TOPICS = ("agent.policy.swapped", "agent.policy.rolled_back")
"""Events whose ``policy`` becomes the active (served) policy."""
STANDARD_CHECKPOINTS = (400, 800, 1600, 3200)
"""Grasps since the change at which recovery is reported (issue 16)."""


def checkpoints_for(after: int, standard: Sequence[int] = STANDARD_CHECKPOINTS) -> list[int]:
    """The checkpoints of a run with ``after`` grasps after the change: the standard ones it
    reaches; when fewer than two fit (a short run), the standard ones scaled so the last is
    ``after`` (e.g. 160 -> 20, 40, 80, 160)."""
    if after < 1:
        raise ValueError(f"after must be >= 1, got {after}")
    reached = [c for c in standard if c <= after]
    if len(reached) >= 2:
        return reached
    scaled = sorted({max(1, round(c * after / standard[-1])) for c in standard})
    return scaled


def served_at(
    grasps: Sequence[Grasp], events: Sequence[Event], index: int, initial: str
) -> str | None:
    """The active policy once ``index`` grasps were finished (``initial`` before any swap);
    None when the log holds fewer than ``index`` grasps (the run stopped early)."""
    if index > len(grasps):
        return None
    active = initial
    for at, e in place(events, grasps):
        if at > index:
            break
        if e.topic in ACTIVE_TOPICS and e.data.get("policy"):
            active = str(e.data["policy"])
    return active


def first_child(
    grasps: Sequence[Grasp], events: Sequence[Event], change: int, initial: str
) -> str | None:
    """The first trained child after the change: the first race's challenger, or (without
    the race) the first trained policy swapped in on probation (None: there was none)."""
    for at, e in place(events, grasps):
        if at < change:
            continue
        pol = ""
        if e.topic == "agent.race" and e.data.get("event") == "started":
            pol = str((e.data.get("candidates") or [""])[0])
        elif e.topic == "agent.policy.swapped" and str(e.data.get("reason", "")).startswith(
            "trained"
        ):
            pol = str(e.data.get("policy") or "")
        if pol and pol != initial:
            return pol
    return None


def alarms_before(grasps: Sequence[Grasp], events: Sequence[Event], change: int) -> int:
    """Success-drop alarms placed before the change: false alarms, after which the agent
    explores (and may train) on the unchanged world, in the run's measurement."""
    return sum(
        1
        for at, e in place(events, grasps)
        if at < change and e.topic == "agent.alarm" and e.data.get("kind") == "success_drop"
    )


def rounds(jobs: Sequence[Mapping[str, Any]], grasps: Sequence[Grasp], change: int) -> list[str]:
    """Statuses of the fine-tune jobs created after the change, oldest first (``jobs``: rows
    with ``created_at`` and ``status``)."""
    t_change = grasps[change - 1].t_end if 0 < change <= len(grasps) else float("-inf")
    after = [j for j in jobs if float(j["created_at"]) > t_change]
    return [str(j["status"]) for j in sorted(after, key=lambda j: float(j["created_at"]))]


@dataclass(frozen=True)
class RaceCost:
    """The races of a run, as the agent's events report them."""

    events: int
    """Events whose topic contains ``race``."""
    races: int
    """Races with a reported cost."""
    cost: int | None
    """Grasps under arms that ended eliminated, summed over the races (None: no race events)."""


def race_cost(events: Sequence[Event]) -> RaceCost:
    """Sum the ``cost`` of every decided race (``agent.race`` ``decided``: the grasps served
    under the arms that ended eliminated); an abandoned race reports none."""
    racing = [e for e in events if e.topic == "agent.race"]
    if not racing:
        return RaceCost(0, 0, None)
    costs = [
        int(e.data["cost"])
        for e in racing
        if e.data.get("event") == "decided" and isinstance(e.data.get("cost"), int)
    ]
    return RaceCost(len(racing), len(costs), sum(costs))


@dataclass(frozen=True)
class Rate:
    """A measured success rate (policy_eval's figures)."""

    wins: int
    n: int

    @classmethod
    def of(cls, result: Mapping[str, Any]) -> Rate:
        """From a :func:`bench.policy_eval.evaluate` result."""
        seeds = result["seeds"]
        return cls(sum(int(s["wins"]) for s in seeds), sum(int(s["n"]) for s in seeds))

    @property
    def p(self) -> float:
        return self.wins / self.n if self.n else float("nan")


def recovery(
    served: Rate, base_challenge: Rate, base_baseline: Rate, draws: int = 4000, seed: int = 0
) -> tuple[float | None, tuple[float, float] | None]:
    """The share of the drop recovered and its 95% bootstrap interval; (None, None) when the
    measured drop is not positive (nothing to recover: the ratio means nothing)."""
    drop = base_baseline.p - base_challenge.p
    if not drop > 0:
        return None, None
    point = (served.p - base_challenge.p) / drop
    rng = np.random.default_rng(seed)

    def draw(r: Rate) -> np.ndarray:
        return rng.beta(r.wins + 0.5, r.n - r.wins + 0.5, draws)

    s, c, b = draw(served), draw(base_challenge), draw(base_baseline)
    d = b - c
    ok = d > 1e-9  # a draw without a drop has no ratio: leave it out
    ratios = (s[ok] - c[ok]) / d[ok]
    if ratios.size < draws // 2:
        return point, None
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return point, (float(lo), float(hi))
