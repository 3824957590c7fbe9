"""A condition schedule: the sim world changes by itself at given grasp counts (pure).

``schedule = [[0, "baseline"], [300, "harsh_lighting"]]`` means grasps 0-299 run
under baseline and grasp 300 onwards under harsh lighting. Counts are grasp
attempts since the cell started; the agent is never told (it has to notice).

A step may carry severity parameters for its condition as an optional third
element, ``[300, "harsh_lighting", {light_azimuth_deg = 200}]``; a step without
any runs its condition at the defaults. On the command line a step is
``COUNT:NAME`` followed by any number of ``:key=value`` segments
(``300:harsh_lighting:light_azimuth_deg=200:intensity=0.9``); steps are
separated by commas. The parameters are checked by
:func:`drivers.sim.conditions.make_condition`, so a bad key or value fails when
the schedule is parsed, not when the world reaches the step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from drivers.sim.conditions import CONDITION_NAMES, make_condition, parse_param_args


@dataclass(frozen=True)
class Step:
    """One scheduled change: from grasp ``count`` on, condition ``name`` with ``params``."""

    count: int
    """Grasp attempts since the cell started."""
    name: str
    """Condition name (see drivers.sim.conditions)."""
    params: tuple[tuple[str, float], ...] = ()
    """Severity overrides in the order given (empty: the condition's defaults)."""

    @property
    def params_dict(self) -> dict[str, float]:
        """The overrides as a dict (what ``make_condition`` takes)."""
        return dict(self.params)

    @property
    def label(self) -> str:
        """``name``, or ``name(key=value, ...)`` when the step sets parameters."""
        if not self.params:
            return self.name
        return f"{self.name}({', '.join(f'{k}={v:g}' for k, v in self.params)})"

    def entry(self) -> tuple[Any, ...]:
        """The config form: ``(count, name)`` or ``(count, name, {params})``."""
        if not self.params:
            return (self.count, self.name)
        return (self.count, self.name, self.params_dict)


@dataclass(frozen=True)
class Schedule:
    """Condition changes ordered by grasp count; counts strictly increase."""

    steps: tuple[Step, ...] = ()

    @property
    def entries(self) -> tuple[tuple[Any, ...], ...]:
        """The config form of every step (see :meth:`Step.entry`)."""
        return tuple(s.entry() for s in self.steps)

    def index_at(self, grasps: int) -> int:
        """Index of the step in force after ``grasps`` attempts; -1 before the first one."""
        idx = -1
        for i, step in enumerate(self.steps):
            if step.count <= grasps:
                idx = i
        return idx

    def condition_at(self, grasps: int) -> str | None:
        """Name of the scheduled condition after ``grasps`` attempts (None before any step)."""
        i = self.index_at(grasps)
        return self.steps[i].name if i >= 0 else None


def step_params(name: str, raw: Any, where: str) -> tuple[tuple[str, float], ...]:
    """Check ``raw`` (a table of overrides) against condition ``name``; ValueError names
    ``where``, the key and the allowed keys (the check is the conditions module's own)."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: parameters {raw!r} must be a table of key = number")
    try:
        cond = make_condition(name, dict(raw))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    return tuple((str(k), float(getattr(cond, k))) for k in raw)


def parse_schedule(raw: Sequence[Any], key: str = "schedule") -> Schedule:
    """Validate ``[[count, name], [count, name, {params}], ...]``; ValueError names the bad
    step and the allowed values."""
    steps: list[Step] = []
    for i, item in enumerate(raw):
        where = f"{key}[{i}]"
        if not isinstance(item, list | tuple) or len(item) not in (2, 3):
            raise ValueError(
                f"{where} = {item!r}: must be [grasp_count, condition_name] "
                "or [grasp_count, condition_name, {parameters}]"
            )
        count, name = item[0], item[1]
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"{where}: grasp count {count!r} must be an integer >= 0")
        if name not in CONDITION_NAMES:
            raise ValueError(
                f"{where}: unknown condition {name!r}; allowed: {', '.join(CONDITION_NAMES)}"
            )
        params = step_params(name, item[2], where) if len(item) == 3 else ()
        if steps and count <= steps[-1].count:
            raise ValueError(f"{where}: grasp counts must strictly increase ({count!r})")
        steps.append(Step(count, str(name), params))
    return Schedule(tuple(steps))


def split_step(text: str) -> tuple[str, dict[str, float]]:
    """``"NAME:key=value:key=value"`` -> (NAME, {key: value}); ValueError on a malformed
    ``key=value`` (the keys themselves are checked against the condition by the caller)."""
    name, *items = (part.strip() for part in text.split(":"))
    return name, parse_param_args(items)


def parse_schedule_text(text: str, key: str = "--schedule") -> Schedule:
    """``"0:baseline,300:harsh_lighting:intensity=0.5"`` -> a checked Schedule; ValueError
    names the step."""
    raw: list[list[Any]] = []
    for i, item in enumerate(x.strip() for x in text.split(",") if x.strip()):
        count, sep, rest = item.partition(":")
        if not sep or not count.strip().isdigit() or not rest.strip():
            raise ValueError(
                f"{key} step {item!r} must look like COUNT:NAME or COUNT:NAME:key=value[:key=value]"
            )
        try:
            name, params = split_step(rest)
        except ValueError as exc:
            raise ValueError(f"{key}[{i}] {item!r}: {exc}") from exc
        raw.append([int(count), name, params] if params else [int(count), name])
    return parse_schedule(raw, key)
