"""Everything a demo run needs, checked before anything starts (no process, no socket, no
file written): the schedule's condition names, the sizes, the templates and the configs made
from them (loaded as the agent and the trainer would), the bundle and the base replay source.

:func:`check` raises :class:`ValueError` with a message naming the option; the CLI prints it
and exits 2 at once, so a typo never costs the base-data wait.
"""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.bundle import validate_bundle
from agent.bundle_errors import BundleError
from agent.config import config_from_dict
from drivers.sim.conditions import CONDITION_NAMES, make_condition
from plumbing.config_loader import ConfigError
from trainer.demo.setup import (
    SCHEDULES,
    Endpoints,
    RunPlan,
    agent_config,
    parse_conditions,
    trainer_config,
)
from trainer.service_config import service_config_from_dict

COLLECT_DEFAULT = 4000
"""Base replay grasps collected when the shipped archive does not fit the bundle."""


@dataclass(frozen=True)
class BaseSource:
    """Where the run's base replay data comes from."""

    kind: str
    """"archive" (the shipped file, seconds), "collect" (robot-trainer base-data) or "none"."""
    grasps: int
    """Grasps in it (0 for none)."""
    archive: Path | None = None
    """The archive file (kind "archive")."""


@dataclass(frozen=True)
class Checked:
    """What the checks resolved."""

    plan: RunPlan
    """The world's schedule and the grasp budget."""
    bundle: Path
    """The starting bundle, absolute."""
    bundle_id: str
    """Its id."""
    base: BaseSource
    """The base replay data's source."""
    agent_template: dict[str, Any]
    """The agent's template, parsed."""
    trainer_template: dict[str, Any]
    """The trainer's template, parsed."""
    warnings: tuple[str, ...] = ()
    """Options that run but cannot tell the whole story (shown before the run starts)."""


def _load_toml(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{what} {path}: no such file")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{what} {path}: not valid TOML ({exc})") from exc


def check(
    schedule: str,
    baseline_grasps: int,
    grasps_per_condition: int,
    exploration_grasps: int | None,
    base_grasps: int | None,
    base_archive: Path,
    bundle: Path,
    agent_template: Path,
    trainer_template: Path,
    window: int,
    agent_nice: int,
    time_limit_s: float,
) -> Checked:
    """Check a run's options (paths already resolved); raises ValueError naming the option."""
    conditions = parse_conditions(schedule)
    plan = RunPlan(conditions, baseline_grasps, grasps_per_condition)
    try:
        names = plan.names()
    except ValueError as exc:
        raise ValueError(f"--schedule {schedule!r}: {exc}") from exc
    unknown = [c for c in names if c not in CONDITION_NAMES]
    if unknown:
        raise ValueError(
            f"--schedule {schedule!r}: unknown condition(s) {', '.join(map(repr, unknown))}; "
            f"use {' or '.join(SCHEDULES)} or a comma-separated list of "
            f"{', '.join(CONDITION_NAMES)} (each optionally NAME:key=value[:key=value...])"
        )
    try:
        steps = plan.steps()  # the parameters, checked by the sim's own schedule parser
    except ValueError as exc:
        raise ValueError(f"--schedule {schedule!r}: {exc}") from exc
    worlds = [make_condition(s.name, s.params_dict) for s in steps]
    if any(a == b for a, b in itertools.pairwise(worlds)):
        raise ValueError(f"--schedule {schedule!r}: a condition follows itself (no change)")
    if window < 1:
        raise ValueError(f"--window {window}: must be >= 1")
    if not 0 <= agent_nice <= 19:
        raise ValueError(f"--agent-nice {agent_nice}: must be in 0..19")
    if time_limit_s < 0:
        raise ValueError("--time-limit: must be >= 0 (0: none)")
    a_tmpl = _load_toml(agent_template, "--agent-template")
    t_tmpl = _load_toml(trainer_template, "--trainer-template")
    explore = exploration_grasps
    if explore is None:
        explore = int(a_tmpl.get("lifecycle", {}).get("exploration_grasps", 0))
    warnings: list[str] = []
    reference = int(a_tmpl.get("detector", {}).get("reference_grasps", 100))
    if baseline_grasps < reference:
        warnings.append(
            f"--baseline-grasps {baseline_grasps} is below the detector's reference "
            f"({reference} grasps, detector.reference_grasps): the first change will not be "
            "seen as a drop"
        )
    if baseline_grasps < 1:
        raise ValueError(f"--baseline-grasps {baseline_grasps}: must be >= 1")
    if exploration_grasps is not None and exploration_grasps < 10:
        raise ValueError(f"--exploration-grasps {exploration_grasps}: must be >= 10")
    if grasps_per_condition <= explore:
        raise ValueError(
            f"--grasps-per-condition {grasps_per_condition}: must exceed the exploration "
            f"({explore} grasps) so a child can serve before the next change"
        )
    if not bundle.is_dir():
        raise ValueError(f"--bundle {bundle}: no such directory")
    try:
        bundle_id = validate_bundle(bundle, run_inference=False).id
    except BundleError as exc:
        raise ValueError(f"--bundle {bundle}: not a usable policy bundle ({exc})") from exc
    base = base_source(base_grasps, base_archive, bundle_id)
    ep = Endpoints("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "tcp://127.0.0.1:3")
    data = Path("/nonexistent/robot-demo-check")
    try:
        config_from_dict(agent_config(a_tmpl, plan, data, ep, bundle, exploration_grasps))
    except (ConfigError, ValueError) as exc:
        raise ValueError(f"--agent-template {agent_template}: {exc}") from exc
    try:
        service_config_from_dict(trainer_config(t_tmpl, data, ep, None, bundle))
    except (ConfigError, ValueError) as exc:
        raise ValueError(f"--trainer-template {trainer_template}: {exc}") from exc
    return Checked(plan, bundle, bundle_id, base, a_tmpl, t_tmpl, tuple(warnings))


def base_source(grasps: int | None, archive: Path, bundle_id: str) -> BaseSource:
    """The base replay source: ``grasps`` None takes the archive when it was collected with
    the bundle (else collects :data:`COLLECT_DEFAULT`), 0 none, N collects N."""
    if grasps is not None and grasps < 0:
        raise ValueError(f"--base-grasps {grasps}: must be >= 0")
    if grasps == 0:
        return BaseSource("none", 0)
    if grasps is None and archive.is_file():
        from trainer.replay_archive import read_meta

        try:
            meta = read_meta(archive)
        except ValueError as exc:
            raise ValueError(f"--base-archive {archive}: {exc}") from exc
        if meta.get("policy_id") == bundle_id:
            return BaseSource("archive", int(meta["grasps"]), archive)
    return BaseSource("collect", COLLECT_DEFAULT if grasps is None else grasps)
