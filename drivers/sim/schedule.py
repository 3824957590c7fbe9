"""A condition schedule: the sim world changes by itself at given grasp counts (pure).

``schedule = [[0, "baseline"], [300, "harsh_lighting"]]`` means grasps 0-299 run
under baseline and grasp 300 onwards under harsh lighting. Counts are grasp
attempts since the cell started; the agent is never told (it has to notice).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from drivers.sim.conditions import CONDITION_NAMES


@dataclass(frozen=True)
class Schedule:
    """Condition changes ordered by grasp count; counts strictly increase."""

    entries: tuple[tuple[int, str], ...] = ()
    """(grasp count, condition name) pairs."""

    def index_at(self, grasps: int) -> int:
        """Index of the entry in force after ``grasps`` attempts; -1 before the first one."""
        idx = -1
        for i, (count, _) in enumerate(self.entries):
            if count <= grasps:
                idx = i
        return idx

    def condition_at(self, grasps: int) -> str | None:
        """Name of the scheduled condition after ``grasps`` attempts (None before any entry)."""
        i = self.index_at(grasps)
        return self.entries[i][1] if i >= 0 else None


def parse_schedule(raw: Sequence[Any], key: str = "schedule") -> Schedule:
    """Validate ``[[count, name], ...]``; ValueError names the bad entry and the allowed values."""
    entries: list[tuple[int, str]] = []
    for i, item in enumerate(raw):
        where = f"{key}[{i}]"
        if not isinstance(item, list | tuple) or len(item) != 2:
            raise ValueError(f"{where} = {item!r}: must be [grasp_count, condition_name]")
        count, name = item
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"{where}: grasp count {count!r} must be an integer >= 0")
        if name not in CONDITION_NAMES:
            raise ValueError(
                f"{where}: unknown condition {name!r}; allowed: {', '.join(CONDITION_NAMES)}"
            )
        if entries and count <= entries[-1][0]:
            raise ValueError(f"{where}: grasp counts must strictly increase ({count!r})")
        entries.append((count, str(name)))
    return Schedule(tuple(entries))
