"""The lifecycle's state: the phase, the condition, the active and good policies, the job in
flight and the rounds under the condition (:mod:`agent.lifecycle` steps it; pure data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from agent import race as rc
from agent import rounds as rd


class Phase(StrEnum):
    SERVING = "serving"
    EXPLORING = "exploring"
    TRAINING = "training"
    RACING = "racing"


@dataclass(frozen=True)
class State:
    """Where the agent is in its lifecycle."""

    phase: Phase
    """SERVING, EXPLORING, TRAINING or RACING."""
    condition: str
    """Current condition name."""
    policy: str | None
    """Active policy id (None: nothing to serve); during a race, the parent."""
    explored: int = 0
    """Grasps collected in the current exploration (or since the last round)."""
    explore_target: int = 200
    """Grasps to collect before submitting the first job of a condition."""
    job: int | None = None
    """Fine-tune job in flight (TRAINING)."""
    probation_parent: str | None = None
    """Policy the active one is on probation against (None: not on probation)."""
    good: tuple[str, ...] = ()
    """Policies that passed probation (or were rolled back to), most recent last (<= 8)."""
    rounds: rd.Rounds | None = None
    """Learning under the current condition since it was marked (None: no change yet)."""
    rounds_cfg: rd.RoundsConfig = field(default_factory=rd.RoundsConfig, compare=False)
    """The rounds' settings (from the config at start-up; not persisted)."""
    race_cfg: rc.RaceConfig = field(default_factory=rc.RaceConfig, compare=False)
    """The test a new race starts with (a running race keeps its own)."""

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

    @property
    def race(self) -> rc.State | None:
        """The race in progress (RACING), else None."""
        race = self.rounds.race if self.rounds is not None else None
        return race if self.phase is Phase.RACING and race is not None else None

    @property
    def serving(self) -> str | None:
        """The policy that serves the next grasp: the race's next arm while racing."""
        race = self.race
        if race is not None and race.winner is None:
            return race.policies[rc.next_arm(race)]
        return self.policy

    @property
    def racing(self) -> tuple[str, ...]:
        """The policies still in the race (kept warm), else ()."""
        race = self.race
        return () if race is None else tuple(race.policies[a] for a in race.survivors)

    @property
    def target(self) -> int:
        """Grasps to collect before the next job: the first exploration's, then a round's."""
        r = self.rounds
        return self.explore_target if r is None or r.round == 0 else self.rounds_cfg.round_grasps

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
            "rounds": None if self.rounds is None else self.rounds.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> State:
        job, rounds = d.get("job"), d.get("rounds")
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
            rounds=rd.Rounds.from_dict(rounds) if isinstance(rounds, dict) else None,
        )


def _as_list(v: object) -> list[object]:
    return list(v) if isinstance(v, list | tuple) else []


MAX_GOOD = 8
"""How many good policies the state remembers."""


def with_good(good: tuple[str, ...], policy: str) -> tuple[str, ...]:
    return (*(p for p in good if p != policy), policy)[-MAX_GOOD:]
