"""The races and rounds of a demo run, from the agent's ``agent.race`` and ``agent.round``
events placed at grasp indices (pure: no files, no sockets; the payloads are
docs/agent.md's "Events").

A trained child races its parent on alternate grasps from ``agent.race`` ``started`` to
``decided`` (or ``abandoned``); the grasps under the arms that lost are the race's cost.
Each round's job goes out at an ``agent.round`` ``started`` event; ``ended`` says why the
rounds under a condition stopped. Everything is grouped by the agent's condition name (the
events carry it), in the order the conditions first appear.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from trainer.demo.timeline import Event, Grasp, place


@dataclass(frozen=True)
class Arm:
    """One policy of a race and how it did."""

    policy: str
    """The policy."""
    grasps: int
    """Race grasps it served."""
    successes: int
    """Of them successful."""

    def text(self) -> str:
        return f"{self.successes}/{self.grasps}"


@dataclass(frozen=True)
class Race:
    """One race of a trained child against its parent."""

    condition: str
    """The agent's condition it ran under."""
    round: int | None
    """The round whose job produced the child."""
    parent: str
    """The serving policy when the child arrived (arm 0)."""
    candidates: tuple[str, ...]
    """The children racing it."""
    job: int | None
    """The job the children came from."""
    started: int
    """Grasp index where it began."""
    ended: int | None = None
    """Grasp index of its decision or abandonment (None: still running at the log's end)."""
    outcome: str = "running"
    """decided, abandoned or running."""
    winner: str | None = None
    """The policy that won (decided races)."""
    reason: str = ""
    """Why it was decided (``parent beaten``, ``candidates eliminated``, ``cap``) or
    abandoned."""
    grasps: int = 0
    """Race grasps, all arms (decided or abandoned races)."""
    cost: int = 0
    """Grasps under the arms that lost (decided races)."""
    arms: tuple[Arm, ...] = ()
    """Each arm's grasps and successes (decided races), parent first."""

    @property
    def child_won(self) -> bool:
        """A child beat its parent (and was swapped in)."""
        return self.winner is not None and self.winner != self.parent

    def span(self, total: int) -> range:
        """Grasp indices it ran over (to ``total`` while still running)."""
        return range(self.started, total if self.ended is None else self.ended)

    def result(self) -> str:
        """A few words: who won, or why it ended without a winner."""
        if self.outcome == "decided":
            return "child won" if self.child_won else "parent kept"
        return "abandoned" if self.outcome == "abandoned" else "running"

    def story(self) -> str:
        """One line: where it ran, who won and why, each arm's figures, its cost."""
        where = f"{self.started}-{'...' if self.ended is None else self.ended}"
        head = f"race{'' if self.round is None else f' of round {self.round}'} at {where}"
        if self.outcome == "abandoned":
            return f"{head}: abandoned after {self.grasps} grasps ({self.reason})"
        if self.outcome != "decided":
            return f"{head}: still running when the log ended"
        figures = ", ".join(
            f"{'parent' if a.policy == self.parent else 'child'} {a.text()}" for a in self.arms
        )
        who = f"child {self.winner} won" if self.child_won else f"parent {self.parent} kept"
        return f"{head}: {who} ({self.reason}; {figures}), cost {self.cost} grasps"


@dataclass(frozen=True)
class RoundsEnd:
    """Why the rounds under a condition stopped (``agent.round`` ``ended``)."""

    at: int
    """Grasp index."""
    reason: str
    """recovered, plateau, rounds, grasps, one-shot or no trainer."""
    rounds: int
    """Rounds (jobs) taken under the condition."""
    level: float | None
    """The served policy's success on its race grasps."""
    level_before: float | None
    """The level before the change."""
    grasps: int
    """Grasps since the change."""
    cost: int
    """The races' cost, all rounds."""

    def text(self) -> str:
        levels = ""
        if self.level is not None:
            before = "" if self.level_before is None else f" vs {self.level_before:.0%} before"
            levels = f"; level {self.level:.0%}{before}"
        return (
            f"rounds ended at {self.at} after {self.rounds} round(s): {self.reason}"
            f"{levels}; {self.grasps} grasps since the change"
        )


@dataclass(frozen=True)
class Rounds:
    """The rounds under one agent condition."""

    condition: str
    """The agent's condition name."""
    starts: tuple[int, ...] = ()
    """Grasp index of each round's job submission, in order."""
    jobs: tuple[int | None, ...] = ()
    """Each round's job (None where the log does not say)."""
    results: tuple[str | None, ...] = ()
    """Each round's job result: improved, no_improvement, failed, cancelled (None: none
    yet)."""
    races: tuple[Race, ...] = ()
    """Its races, in order."""
    ended: RoundsEnd | None = None
    """Why they stopped (None: still going at the log's end)."""

    @property
    def taken(self) -> int:
        """Rounds begun (jobs sent)."""
        return len(self.starts)

    @property
    def cost(self) -> int:
        """Grasps under the arms that lost, over the decided races."""
        return sum(r.cost for r in self.races)

    def round_lines(self) -> list[str]:
        """One short text per round: its job, where it went out, its result."""
        out = []
        for i, at in enumerate(self.starts):
            job = self.jobs[i] if i < len(self.jobs) else None
            result = self.results[i] if i < len(self.results) else None
            what = f"job {job}" if job is not None else "its job"
            out.append(f"round {i + 1}: {what} at {at}, {result or 'no result yet'}")
        return out

    @property
    def first(self) -> int | None:
        """Grasp index of its first round or race event."""
        xs = [*self.starts, *(r.started for r in self.races)]
        if self.ended is not None:
            xs.append(self.ended.at)
        return min(xs) if xs else None


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _float(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _arms(raw: Any) -> tuple[Arm, ...]:
    out = []
    for a in raw if isinstance(raw, list) else []:
        if isinstance(a, dict):
            out.append(
                Arm(
                    str(a.get("policy", "")),
                    _int(a.get("grasps")) or 0,
                    _int(a.get("successes")) or 0,
                )
            )
    return tuple(out)


def rounds_of(events: Sequence[Event], grasps: Sequence[Grasp]) -> list[Rounds]:
    """The rounds and races of a run, one :class:`Rounds` per agent condition that has any."""
    acc: dict[str, dict[str, Any]] = {}

    def of(cond: str) -> dict[str, Any]:
        return acc.setdefault(cond, {"starts": [], "jobs": [], "races": [], "ended": None})

    sent: dict[str, int] = {}  # the latest job exported per condition
    verdicts: dict[int, str] = {}

    for idx, e in place(events, grasps):
        d = e.data
        cond = str(d.get("condition") or "")
        if e.topic == "agent.job":
            job, status = _int(d.get("job")), str(d.get("status", ""))
            if job is not None and status == "exporting" and cond:
                sent[cond] = job
            elif job is not None and status in _VERDICTS:
                verdicts.setdefault(job, status)
        elif e.topic == "agent.round":
            kind = d.get("event")
            if kind == "started":
                of(cond)["starts"].append(idx)
                of(cond)["jobs"].append(sent.pop(cond, None))
            elif kind == "ended":
                of(cond)["ended"] = RoundsEnd(
                    idx,
                    str(d.get("reason", "")),
                    _int(d.get("rounds")) or 0,
                    _float(d.get("level")),
                    _float(d.get("level_before")),
                    _int(d.get("grasps")) or 0,
                    _int(d.get("cost")) or 0,
                )
        elif e.topic == "agent.race":
            kind = d.get("event")
            races: list[Race] = of(cond)["races"]
            if kind == "started":
                cands = d.get("candidates")
                races.append(
                    Race(
                        condition=cond,
                        round=_int(d.get("round")),
                        parent=str(d.get("parent", "")),
                        candidates=tuple(str(c) for c in cands) if isinstance(cands, list) else (),
                        job=_int(d.get("job")),
                        started=idx,
                    )
                )
            elif kind in ("decided", "abandoned") and races and races[-1].outcome == "running":
                last = races[-1]
                races[-1] = replace(
                    last,
                    ended=idx,
                    outcome=str(kind),
                    winner=str(d["winner"]) if d.get("winner") else None,
                    reason=str(d.get("reason", "")),
                    grasps=_int(d.get("grasps")) or 0,
                    cost=_int(d.get("cost")) or 0,
                    arms=_arms(d.get("arms")),
                )
    return [
        Rounds(
            c,
            tuple(a["starts"]),
            tuple(a["jobs"]),
            tuple(None if j is None else verdicts.get(j) for j in a["jobs"]),
            tuple(a["races"]),
            a["ended"],
        )
        for c, a in acc.items()
    ]


_VERDICTS = ("improved", "no_improvement", "failed", "cancelled", "kept")
"""Job statuses that settle a round's job (the first one counts)."""
