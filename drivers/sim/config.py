"""The sim cell's settings: the cell's own (:class:`SimConfig`) and the agent's ``[driver]``
table for ``type = "sim"`` (:class:`SimDriverSettings`), with the checks that name a bad key.

Pure (no pybullet): the agent's config loader builds and checks these through the driver
registry before anything is simulated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from agent.spec import DEFAULT_SPEC, Spec
from drivers.sim.conditions import CONDITION_NAMES
from drivers.sim.objects import Split
from drivers.sim.schedule import parse_schedule


@dataclass(frozen=True)
class PhysicsConfig:
    """Physics and motion timing (steps at ``1/hz``)."""

    hz: float = 240.0
    """Physics rate."""
    solver_iterations: int = 30
    """Constraint solver iterations per step."""
    approach_height_m: float = 0.12
    """Commanded-frame height above the floor where the descent starts."""
    descend_steps: int = 36
    """Steps to descend to the grasp height."""
    close_steps: int = 30
    """Steps to close the fingers."""
    lift_steps: int = 36
    """Steps to lift."""
    hold_steps: int = 24
    """Steps the object must stay up (0.1 s at 240 Hz)."""
    settle_steps: int = 24
    """Steps after objects are dropped back."""
    grasp_clearance_m: float = 0.006
    """Finger tips stop this far above the floor (stock fingers)."""
    lift_height_m: float = 0.28
    """Commanded-frame height at the end of the lift."""


@dataclass(frozen=True)
class SimConfig:
    """Configuration of the simulated cell."""

    split: Split = "train"
    """Which objects fill the bin: train (000-899), test (900-999) or all."""
    n_objects: int = 5
    """Objects in the bin."""
    refresh_every: int = 20
    """Grasps between loading a fresh set of objects."""
    seed: int = 0
    """Seed of the first reset."""
    condition: str = "baseline"
    """Initial condition name (see drivers.sim.conditions)."""
    condition_params: dict[str, float] = field(default_factory=dict)
    """Severity overrides of the initial condition."""
    schedule: tuple[tuple[Any, ...], ...] = ()
    """(grasp count since start, condition[, {parameters}]) steps: the world changes by itself
    (see schedule.py)."""
    success_height_m: float = 0.12
    """An object is lifted when its base is this far above the floor."""
    step_penalty: float = 0.0
    """Reward added per step (horizon 1: 0)."""
    physics: PhysicsConfig = field(default_factory=PhysicsConfig)
    """Physics and motion timing."""
    spec: Spec = DEFAULT_SPEC
    """Observation/action spec."""


@dataclass(frozen=True)
class SimDriverConfig:
    """The sim cell's own sub-table of the agent config (``[driver.sim]``)."""

    schedule: tuple[Any, ...] = ()
    """Conditions by grasp count: [[0, "baseline"], [300, "transparent", {opacity = 0.3}]]."""


@dataclass(frozen=True)
class SimDriverSettings:
    """``[driver]`` with ``type = "sim"``: the pybullet cell (needs the [sim] extra)."""

    condition: str = "baseline"
    """Sim cell condition to start in."""
    seed: int = 0
    """Seed of the cell's randomness."""
    options: dict[str, Any] = field(default_factory=dict)
    """SimConfig overrides (split, n_objects, refresh_every, ...)."""
    sim: SimDriverConfig = field(default_factory=SimDriverConfig)
    """The condition schedule."""


OPTION_KEYS = frozenset(f.name for f in dataclasses.fields(SimConfig)) - {
    "seed",
    "condition",
    "schedule",
    "spec",
    "physics",
}
"""SimConfig fields that ``[driver] options`` may set (the others have keys of their own)."""


def check_settings(s: SimDriverSettings, prefix: str = "driver.") -> None:
    """ValueError naming the first bad key (``prefix`` + key) and what is allowed."""
    if s.condition not in CONDITION_NAMES:
        raise ValueError(
            f"{prefix}condition = {s.condition!r}: unknown condition; "
            f"allowed: {', '.join(CONDITION_NAMES)}"
        )
    for key in s.options:
        if key not in OPTION_KEYS:
            names = ", ".join(sorted(OPTION_KEYS))
            raise ValueError(f"{prefix}options.{key}: not a sim setting; allowed: {names}")
    parse_schedule(s.sim.schedule, f"{prefix}sim.schedule")


def cell_config(s: SimDriverSettings) -> SimConfig:
    """The cell's config for these settings."""
    schedule = parse_schedule(s.sim.schedule, "driver.sim.schedule").entries
    return SimConfig(seed=s.seed, condition=s.condition, schedule=schedule, **s.options)
