"""The demo's schedules and the configs it writes for its two processes (pure: dicts in, dicts
and TOML text out).

The templates are ``configs/demo-agent.toml`` and ``configs/demo-trainer.toml``; the demo
fills in what only a run knows (its directory, free ports, the schedule, the grasp budget)
and writes the resolved copies into the run directory.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivers.sim.schedule import Step, parse_schedule, split_step

SCHEDULES: dict[str, tuple[str, ...]] = {
    "default": ("baseline", "harsh_lighting", "transparent", "checkerboard"),
    "paper": (
        "baseline",
        "harsh_lighting",
        "transparent",
        "checkerboard",
        "extend_gripper",
        "offset_gripper",
    ),
}
"""Named condition orders: the paper's continual-learning sequence (section V-D) after the
baseline, and its first three challenges (the default)."""


@dataclass(frozen=True)
class RunPlan:
    """What one demo run does."""

    conditions: tuple[str, ...]
    """The world's steps in order (the first is where it starts), each ``NAME`` or
    ``NAME:key=value[:key=value...]`` (severity parameters, see drivers.sim.schedule)."""
    baseline_grasps: int
    """Grasps under the first condition."""
    grasps_per_condition: int
    """Grasps under each later condition."""

    def counts(self) -> list[int]:
        """The grasp count at which each step begins."""
        later = range(len(self.conditions) - 1)
        return [0] + [self.baseline_grasps + i * self.grasps_per_condition for i in later]

    def schedule(self) -> list[list[Any]]:
        """The sim driver's ``[driver.sim] schedule``: [[grasp count, condition], ...], a step
        with parameters as [grasp count, condition, {parameters}] (ValueError on a step whose
        ``key=value`` is malformed)."""
        out: list[list[Any]] = []
        for count, text in zip(self.counts(), self.conditions, strict=True):
            name, params = split_step(text)
            out.append([count, name, params] if params else [count, name])
        return out

    def steps(self) -> tuple[Step, ...]:
        """The checked schedule (ValueError naming the step, the key and the allowed keys)."""
        return parse_schedule(self.schedule(), "--schedule").steps

    def names(self) -> tuple[str, ...]:
        """The condition name of each step."""
        return tuple(split_step(text)[0] for text in self.conditions)

    def labelled(self) -> list[tuple[int, str]]:
        """(grasp count, label) of each step, the label ``name`` or ``name(key=value, ...)``:
        what the analysis, plot and terminal key segments by."""
        return [(s.count, s.label) for s in self.steps()]

    @property
    def total_grasps(self) -> int:
        """The agent's grasp budget (``agent.max_grasps``)."""
        return self.baseline_grasps + (len(self.conditions) - 1) * self.grasps_per_condition


def parse_conditions(text: str) -> tuple[str, ...]:
    """A schedule name ("default", "paper") or a comma-separated list of steps, each
    ``NAME`` or ``NAME:key=value[:key=value...]``."""
    if text in SCHEDULES:
        return SCHEDULES[text]
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if len(names) < 2:
        raise ValueError(
            f"--schedule {text!r}: give {' or '.join(SCHEDULES)} or at least two conditions"
        )
    return names


@dataclass(frozen=True)
class Endpoints:
    """The three loopback sockets of a run."""

    commands: str
    """The agent's command ROUTER."""
    events: str
    """The agent's event PUB."""
    trainer: str
    """The trainer's job ROUTER."""


def agent_config(
    template: Mapping[str, Any],
    plan: RunPlan,
    data_dir: Path,
    endpoints: Endpoints,
    bundle: Path,
    exploration_grasps: int | None = None,
) -> dict[str, Any]:
    """The agent's config for a run: the template with the run's values filled in.

    Always ``on_alarm = "mark"`` (the agent finds the changes itself) and the sim driver's
    ``[driver.sim] schedule``; the agent is told nothing else about the world.
    """
    cfg = copy.deepcopy(dict(template))
    table = _table(cfg, "agent")
    table["data_dir"] = str(data_dir)
    table["max_grasps"] = plan.total_grasps
    driver = _table(cfg, "driver")
    driver["type"] = "sim"
    driver["condition"] = plan.names()[0]
    sim = dict(driver.get("sim", {}))
    sim["schedule"] = plan.schedule()
    driver["sim"] = sim
    _table(cfg, "policy")["bundle"] = str(bundle)
    life = _table(cfg, "lifecycle")
    life["on_alarm"] = "mark"
    life["initial_condition"] = plan.names()[0]
    if exploration_grasps is not None:
        life["exploration_grasps"] = exploration_grasps
    sockets = _table(cfg, "sockets")
    sockets["command_endpoint"] = endpoints.commands
    sockets["event_endpoint"] = endpoints.events
    trainer = _table(cfg, "trainer")
    trainer["endpoint"] = endpoints.trainer
    trainer.setdefault("agent_id", "demo")
    return cfg


def trainer_config(
    template: Mapping[str, Any],
    data_dir: Path,
    endpoints: Endpoints,
    base_dataset: Path | None,
    base_bundle: Path,
    finetune: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The trainer service's config for a run: the template with its paths and socket."""
    cfg = copy.deepcopy(dict(template))
    svc = _table(cfg, "service")
    svc["endpoint"] = endpoints.trainer
    svc["data_dir"] = str(data_dir)
    svc["base_dataset"] = "" if base_dataset is None else str(base_dataset)
    svc["base_bundle"] = str(base_bundle)
    ft = _table(cfg, "finetune")
    ft.update(finetune or {})
    return cfg


def _table(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    t = cfg.setdefault(name, {})
    if not isinstance(t, dict):
        raise ValueError(f"[{name}] must be a table")
    return t


def dumps_toml(cfg: Mapping[str, Any]) -> str:
    """TOML text of a config: top-level tables of scalars, lists and inline tables."""
    lines: list[str] = []
    for name, table in cfg.items():
        if not isinstance(table, Mapping):
            raise ValueError(f"top-level key {name!r} must be a table")
        lines.append(f"[{name}]")
        for key, value in table.items():
            if value is None:
                continue
            lines.append(f"{_key(key)} = {_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"{v!r} has no TOML form here")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, Mapping):
        inner = ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items() if x is not None)
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(v, Sequence):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise ValueError(f"cannot write {type(v).__name__} as TOML")
