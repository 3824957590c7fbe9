"""The sim world changes condition by itself at the scheduled grasp counts."""

from __future__ import annotations

import numpy as np
import pytest

from drivers.sim.cell import SimCell
from drivers.sim.config import SimConfig
from drivers.sim.schedule import Schedule, parse_schedule


def test_schedule_switches_conditions_at_the_given_grasp_counts() -> None:
    cfg = SimConfig(
        seed=2,
        n_objects=2,
        condition="checkerboard",
        schedule=((0, "baseline"), (3, "harsh_lighting"), (5, "transparent")),
    )
    seen: list[str] = []
    with SimCell(cfg) as cell:
        for _ in range(7):
            seen.append(cell.condition.name)  # the condition the next grasp runs under
            cell.observe()
            cell.execute(np.zeros(3, np.float32))
        seen.append(cell.condition.name)
    assert seen == ["baseline"] * 3 + ["harsh_lighting"] * 2 + ["transparent"] * 3


def test_schedule_changes_the_image_the_agent_sees() -> None:
    cfg = SimConfig(seed=2, n_objects=2, schedule=((0, "baseline"), (1, "checkerboard")))
    with SimCell(cfg) as cell:
        before = cell.observe().image
        cell.execute(np.zeros(3, np.float32))
        after = cell.observe().image
    assert np.abs(after.astype(int) - before.astype(int)).mean() > 5


def test_schedule_before_its_first_entry_keeps_the_configured_condition() -> None:
    s = parse_schedule([[10, "transparent"]])
    assert s.condition_at(0) is None and s.condition_at(10) == "transparent"
    cell = SimCell(SimConfig(condition="checkerboard", schedule=s.entries))
    assert cell.condition.name == "checkerboard"


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ([[0, "fog"]], "schedule[0]: unknown condition 'fog'; allowed: baseline"),
        ([[5, "baseline"], [5, "transparent"]], "schedule[1]: grasp counts must strictly"),
        ([[-1, "baseline"]], "schedule[0]: grasp count -1"),
        ([["0", "baseline"]], "schedule[0]: grasp count '0'"),
        ([[0]], "schedule[0]"),
    ],
)
def test_bad_schedule_names_the_entry(raw: list, needle: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError) as ei:
        parse_schedule(raw)
    assert needle in str(ei.value)


def test_empty_schedule_is_inert() -> None:
    assert Schedule().condition_at(1000) is None


def test_schedule_cli_argument_parses_and_names_bad_entries() -> None:
    import argparse

    from drivers.sim.cli import parse_schedule_arg

    assert parse_schedule_arg("0:baseline, 300:harsh_lighting") == (
        (0, "baseline"),
        (300, "harsh_lighting"),
    )
    with pytest.raises(argparse.ArgumentTypeError, match="COUNT:NAME"):
        parse_schedule_arg("baseline")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown condition 'fog'"):
        parse_schedule_arg("0:fog")


def test_sim_bridge_process_follows_its_schedule_unannounced() -> None:
    from drivers.bridge.client import BridgeDriver
    from drivers.bridge.config import BridgeClientConfig
    from testkit.bridges import SimBridgeProcess, free_port

    bridge = SimBridgeProcess(free_port(), "--schedule", "0:baseline,2:checkerboard").start()
    try:
        with BridgeDriver(
            BridgeClientConfig(endpoint=bridge.endpoint, timeout_s=2.0, execute_timeout_s=5.0)
        ) as d:
            images = []
            for _ in range(4):
                images.append(d.observe().image.astype(int))
                d.execute(np.zeros(3, np.float32))
    finally:
        assert bridge.stop() == 0
    same = np.abs(images[1] - images[0]).mean()
    changed = np.abs(images[2] - images[1]).mean()
    assert changed > 5 and changed > 3 * same  # the floor turned into a checkerboard at grasp 2


def test_schedule_step_parameters_parse_to_steps_entries_and_labels() -> None:
    s = parse_schedule(
        [[0, "baseline"], [3, "harsh_lighting", {"light_azimuth_deg": 200, "intensity": 0.9}]]
    )
    assert s.steps[1].params == (("light_azimuth_deg", 200.0), ("intensity", 0.9))
    assert s.steps[1].label == "harsh_lighting(light_azimuth_deg=200, intensity=0.9)"
    assert s.steps[0].label == "baseline"
    assert s.entries == (
        (0, "baseline"),
        (3, "harsh_lighting", {"light_azimuth_deg": 200.0, "intensity": 0.9}),
    )
    assert parse_schedule(s.entries) == s  # the config form parses back to the same schedule


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (
            [[0, "harsh_lighting", {"azimuth": 200}]],
            "schedule[0]: condition 'harsh_lighting' has no parameter 'azimuth'; allowed: "
            "intensity, light_azimuth_deg, light_elevation_deg",
        ),
        (
            [[0, "baseline"], [4, "baseline", {"intensity": 1}]],
            "schedule[1]: condition 'baseline' has no parameter 'intensity'; allowed: (none)",
        ),
        (
            [[0, "transparent", {"opacity": True}]],
            "schedule[0]: condition 'transparent' parameter 'opacity' must be a number",
        ),
        ([[0, "transparent", [0.3]]], "schedule[0]: parameters [0.3] must be a table"),
        ([[0, "transparent", {}, 1]], "or [grasp_count, condition_name, {parameters}]"),
    ],
)
def test_bad_schedule_step_parameters_name_the_step_and_the_allowed_keys(
    raw: list,  # type: ignore[type-arg]
    needle: str,
) -> None:
    with pytest.raises(ValueError) as ei:
        parse_schedule(raw)
    assert needle in str(ei.value)


def test_schedule_cli_steps_take_key_value_segments() -> None:
    import argparse

    from drivers.sim.cli import build_parser, parse_schedule_arg

    assert parse_schedule_arg(
        "0:baseline,300:harsh_lighting:light_azimuth_deg=200:intensity=0.9,600:transparent"
    ) == (
        (0, "baseline"),
        (300, "harsh_lighting", {"light_azimuth_deg": 200.0, "intensity": 0.9}),
        (600, "transparent"),
    )
    args = build_parser().parse_args(["bridge", "--schedule", "0:offset_gripper:offset_cm=4"])
    assert args.schedule == ((0, "offset_gripper", {"offset_cm": 4.0}),)
    bad = [
        ("0:harsh_lighting:azimuth=200", "--schedule[0]: condition 'harsh_lighting' has no "),
        ("0:harsh_lighting:intensity", "--schedule[0] '0:harsh_lighting:intensity': parameter"),
        ("0:harsh_lighting:intensity=high", "parameter 'intensity': 'high' is not a number"),
        ("0:baseline,5:checkerboard:contrast=0.5:x=1", "--schedule[1]: condition 'checkerboard'"),
        ("5:", "must look like COUNT:NAME or COUNT:NAME:key=value"),
    ]
    for text, needle in bad:
        with pytest.raises(argparse.ArgumentTypeError) as ei:
            parse_schedule_arg(text)
        assert needle in str(ei.value), (text, str(ei.value))


def test_cell_applies_a_steps_parameters_when_it_switches_and_defaults_without() -> None:
    from drivers.sim.conditions import HarshLighting, condition_params

    cfg = SimConfig(
        seed=2,
        n_objects=2,
        schedule=(
            (0, "harsh_lighting", {"intensity": 0.0}),
            (1, "harsh_lighting", {"light_azimuth_deg": 200.0}),
            (2, "harsh_lighting"),
        ),
    )
    seen: list[dict[str, float]] = []
    images = []
    with SimCell(cfg) as cell:
        for _ in range(3):
            seen.append(condition_params(cell.condition))
            images.append(cell.observe().image.astype(int))
            cell.execute(np.zeros(3, np.float32))
    defaults = condition_params(HarshLighting())
    assert seen[0] == {**defaults, "intensity": 0.0}
    assert seen[1] == {**defaults, "light_azimuth_deg": 200.0}
    assert seen[2] == defaults  # a step without parameters: the defaults, not the last step's
    # intensity 0 is indoor light: the full lamp at the next step changes what the camera sees
    assert np.abs(images[1] - images[0]).mean() > 2


def test_step_without_parameters_reaches_set_condition_as_none_for_subclasses() -> None:
    """bench/loop_false_alarms.py's cell sets its own severity when the schedule gives none."""
    from drivers.sim.conditions import Condition

    calls: list[tuple[str, dict[str, float] | None]] = []

    class Recording(SimCell):
        def set_condition(self, name: str, params: dict[str, float] | None = None) -> Condition:
            calls.append((name, params))
            return super().set_condition(name, params)

    cfg = SimConfig(
        n_objects=1, schedule=((0, "transparent"), (1, "checkerboard", {"contrast": 0.5}))
    )
    with Recording(cfg) as cell:
        cell.execute(np.zeros(3, np.float32))
    assert calls == [("transparent", None), ("checkerboard", {"contrast": 0.5})]
