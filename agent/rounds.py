"""Learning in rounds under one condition, and the race of a round's children (pure, no I/O).

After a change the agent explores, trains a child and races it against its parent on the
robot (:mod:`agent.race`). While the policy that serves stays below the level from before
the change by more than ``margin`` (judged on its race grasps), the agent keeps learning:
the grasps served during and after the race are new on-policy data (collected as the first
exploration is: the serving policy's own CEM choices, logged as ``explore``), and after
``round_grasps`` more grasps the next round's job goes out, its parent the race's winner.
The rounds stop when

- the level is back within ``margin`` (``recovered``): the lower bound of the winner's race
  rate at one-sided ``confidence`` (Wilson) is at least the level before minus ``margin``
  (a parent that won 18 of 20 lucky race grasps at a true 61% is not "back at 92%"),
- ``plateau`` rounds in a row left the parent serving (a race it won, or a job without a
  child): ``plateau``,
- ``max_rounds`` jobs went out under the condition (``rounds``) or ``max_grasps`` grasps
  were served since the change (``grasps``),
- rounds are off (``one-shot``: today's behaviour, one job per change) or there is no
  trainer to train the next one (``no trainer``),

and the agent then serves and monitors as before. :class:`Rounds` is the per-condition
record the lifecycle keeps (:mod:`agent.lifecycle`); the functions here decide what a
finished race or job means for it. Nothing here knows about sockets, threads or time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import Any

from agent import race as rc
from agent.race_view import wilson


@dataclass(frozen=True)
class RoundsConfig:
    """``[rounds]``: when the agent keeps learning under a condition, and how."""

    enabled: bool = True
    """Keep learning in rounds until the drop is recovered (false: one job per change)."""
    race: bool = True
    """Trained children race their parent on the robot's grasps (false: probation)."""
    margin: float = 0.05
    """The rounds stop once the served policy is within this of the level before the change."""
    round_grasps: int = 200
    """Grasps after a race (or a job without a child) before the next round's job goes out."""
    max_rounds: int = 6
    """Fine-tune jobs under one condition at most (the first exploration's included)."""
    plateau: int = 2
    """Rounds in a row that left the parent serving after which the rounds stop."""
    max_grasps: int = 3200
    """Grasps since the change after which no new round starts."""
    confidence: float = 0.9
    """One-sided confidence that the level is back before the rounds stop as recovered (0:
    the race rate itself decides)."""

    def __post_init__(self) -> None:
        if not 0 <= self.margin < 1:
            raise ValueError(f"rounds.margin must be in [0, 1): {self.margin}")
        if self.round_grasps < 1:
            raise ValueError(f"rounds.round_grasps must be >= 1: {self.round_grasps}")
        if self.max_rounds < 1 or self.plateau < 1 or self.max_grasps < 1:
            raise ValueError("rounds.max_rounds, rounds.plateau and rounds.max_grasps: >= 1")
        if not 0 <= self.confidence < 1:
            raise ValueError(f"rounds.confidence must be in [0, 1): {self.confidence}")


@dataclass(frozen=True)
class Rounds:
    """What the lifecycle remembers of learning under the current condition."""

    level_before: float | None = None
    """Success rate of the policy that served before the change (None: unknown)."""
    round: int = 0
    """Fine-tune jobs submitted under this condition."""
    plateau: int = 0
    """Rounds in a row that left the parent serving."""
    grasps: int = 0
    """Grasps served since the change."""
    level: float | None = None
    """Success rate of the serving policy on its latest race grasps (None: no race yet)."""
    level_grasps: int = 0
    """The race grasps ``level`` was measured on (0: unknown, the rate is taken as exact)."""
    races: int = 0
    """Races decided under this condition."""
    cost: int = 0
    """Grasps served under arms that ended eliminated, over those races."""
    stopped: str = ""
    """Why the rounds ended ("" while they go on)."""
    race: rc.State | None = None
    """The race in progress (RACING), persisted after every grasp."""
    last_grasp: int = 0
    """Id of the latest grasp the race counted (a restart counts the logged ones after it)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "level_before": self.level_before,
            "round": self.round,
            "plateau": self.plateau,
            "grasps": self.grasps,
            "level": self.level,
            "level_grasps": self.level_grasps,
            "races": self.races,
            "cost": self.cost,
            "stopped": self.stopped,
            "race": None if self.race is None else self.race.to_dict(),
            "last_grasp": self.last_grasp,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rounds:
        race = d.get("race")
        return cls(
            level_before=_opt_float(d.get("level_before")),
            round=int(d.get("round", 0)),
            plateau=int(d.get("plateau", 0)),
            grasps=int(d.get("grasps", 0)),
            level=_opt_float(d.get("level")),
            level_grasps=int(d.get("level_grasps", 0)),
            races=int(d.get("races", 0)),
            cost=int(d.get("cost", 0)),
            stopped=str(d.get("stopped", "")),
            race=rc.State.from_dict(race) if isinstance(race, dict) else None,
            last_grasp=int(d.get("last_grasp", 0)),
        )


def _opt_float(v: object) -> float | None:
    return None if v is None else float(str(v))


def stop_reason(cfg: RoundsConfig, r: Rounds, winner_is_parent: bool) -> str:
    """Why no further round starts after a race (or a job without a child), "" to go on.

    ``r`` is the record after that race: its ``level``, ``plateau``, ``round`` and ``grasps``."""
    if not cfg.enabled:
        return "one-shot"
    if (
        r.level_before is not None
        and r.level is not None
        and lower_bound(r.level, r.level_grasps, cfg.confidence) >= r.level_before - cfg.margin
    ):
        return "recovered"
    if winner_is_parent and r.plateau >= cfg.plateau:
        return "plateau"
    if r.round >= cfg.max_rounds:
        return "rounds"
    if r.grasps >= cfg.max_grasps:
        return "grasps"
    return ""


def after_round(cfg: RoundsConfig, r: Rounds, winner_is_parent: bool) -> Rounds:
    """The record once a round ended with the parent (``winner_is_parent``) or a child
    serving: the plateau count and the stop reason updated."""
    r = replace(r, plateau=r.plateau + 1 if winner_is_parent else 0, race=None)
    return replace(r, stopped=stop_reason(cfg, r, winner_is_parent))


def lower_bound(rate: float, n: int, confidence: float) -> float:
    """The Wilson score lower bound of a success rate measured on ``n`` grasps at one-sided
    ``confidence`` (``rate`` itself when ``n`` is 0 or ``confidence`` is 0)."""
    if n <= 0 or confidence <= 0:
        return rate
    return wilson(round(rate * n), n, NormalDist().inv_cdf(confidence))[0]


def race_level(state: rc.State) -> float | None:
    """The winner's success rate on its race grasps (None before a verdict or without any)."""
    if state.winner is None or state.grasps[state.winner] == 0:
        return None
    return state.successes[state.winner] / state.grasps[state.winner]


def withdraw(state: rc.State, arm: int, reason: str) -> rc.State:
    """Take ``arm`` out of a running race (its policy faulted): its grasp in the current cycle
    is dropped; the race goes on without it, or ends when one arm is left. The parent (arm 0)
    cannot be withdrawn: a faulted parent ends the race (the lifecycle's business)."""
    if arm == 0 or state.winner is not None or arm in state.out:
        return state
    e = rc.Elimination(arm=arm, by=0, grasp=state.total, reason=reason)
    state = replace(
        state,
        eliminated=(*state.eliminated, e),
        pending=tuple((a, s) for a, s in state.pending if a != arm),
    )
    if len(state.survivors) == 1:
        return replace(state, winner=state.survivors[0], pending=())
    if state.pending and len(state.pending) >= len(state.survivors):
        # the withdrawn arm was the last of this cycle: close it for those that played
        return rc.close_cycle(state)
    return state
