"""bench/continual_log.py and the mode overrides of bench/continual.py: what a run's grasp log
says was served, its rounds and races, and recovery with its interval."""

from __future__ import annotations

import pytest

from bench import continual_log as cl
from bench.continual import MODES, apply_overrides, known_keys
from trainer.demo.timeline import Event, Grasp


def grasps(n: int) -> list[Grasp]:
    return [Grasp(i, float(i + 1), True, "p", "serve") for i in range(n)]


def swap(t: float, policy: str, reason: str = "trained in condition c") -> Event:
    return Event(t, "agent.policy.swapped", {"policy": policy, "reason": reason})


def test_checkpoints_are_the_standard_ones_reached_or_scaled_for_a_short_run() -> None:
    assert cl.checkpoints_for(3200) == [400, 800, 1600, 3200]
    assert cl.checkpoints_for(800) == [400, 800]
    assert cl.checkpoints_for(160) == [20, 40, 80, 160]
    with pytest.raises(ValueError):
        cl.checkpoints_for(0)


def test_served_policy_is_the_last_swap_or_rollback_placed_at_or_before_the_checkpoint() -> None:
    g = grasps(10)
    events = [
        swap(0.5, "base", "promote"),
        swap(4.0, "child"),  # placed at 4: four grasps had finished
        Event(8.5, "agent.policy.rolled_back", {"policy": "base"}),  # placed at 8
        Event(9.5, "agent.race.standings", {"policy": "other"}),  # not an activation
    ]
    assert cl.served_at(g, events, 3, "base") == "base"
    assert cl.served_at(g, events, 4, "base") == "child"
    assert cl.served_at(g, events, 7, "base") == "child"
    assert cl.served_at(g, events, 8, "base") == "base"
    assert cl.served_at(g, events, 10, "base") == "base"
    assert cl.served_at(g, events, 11, "base") is None  # the run stopped before it
    assert cl.first_child(g, events, 2, "base") == "child"
    assert cl.first_child(g, events, 5, "base") is None
    # with the race, the first child is the first race's challenger, winner or not
    raced = [Event(6.0, "agent.race", {"event": "started", "candidates": ["kid"]}), *events]
    assert cl.first_child(g, raced, 5, "base") == "kid"


def test_rounds_count_the_jobs_created_after_the_change() -> None:
    jobs = [
        {"created_at": 2.5, "status": "done"},  # a false alarm before the change
        {"created_at": 6.5, "status": "no_improvement"},
        {"created_at": 9.5, "status": "done"},
    ]
    assert cl.rounds(jobs, grasps(10), 5) == ["no_improvement", "done"]


def test_alarms_before_the_change_are_counted_as_false_alarms() -> None:
    alarm = {"kind": "success_drop"}
    events = [
        Event(2.5, "agent.alarm", alarm),
        Event(3.5, "agent.alarm", {"kind": "job_failed"}),
        Event(6.5, "agent.alarm", alarm),
    ]
    assert cl.alarms_before(grasps(10), events, 5) == 1


def test_race_cost_is_null_without_races_and_sums_every_decided_race() -> None:
    assert cl.race_cost([swap(1.0, "x")]).cost is None
    race = "agent.race"
    events = [
        Event(1.0, race, {"event": "started", "parent": "p"}),
        Event(2.0, race, {"event": "decided", "parent": "p", "winner": "p", "cost": 40}),
        Event(3.0, race, {"event": "started", "parent": "p"}),  # the same parent again
        Event(4.0, race, {"event": "decided", "parent": "p", "winner": "c", "cost": 25}),
        Event(5.0, race, {"event": "abandoned", "grasps": 12}),
    ]
    rc = cl.race_cost(events)
    assert (rc.events, rc.races, rc.cost) == (5, 2, 65)


def test_recovery_is_the_share_of_the_drop_with_an_interval_around_it() -> None:
    base_bl, base_ch = cl.Rate(360, 400), cl.Rate(200, 400)
    r, ci = cl.recovery(cl.Rate(320, 400), base_ch, base_bl)
    assert r == pytest.approx(0.75)
    assert ci is not None and 0.6 < ci[0] < 0.75 < ci[1] < 0.9
    assert cl.recovery(cl.Rate(200, 400), base_ch, base_ch) == (None, None)  # no drop


def test_mode_overrides_the_agent_config_does_not_declare_are_skipped() -> None:
    known = known_keys()
    assert "exploration_grasps" in known["lifecycle"]  # read from agent.config itself
    tpl = {"lifecycle": {"on_alarm": "mark"}}
    over = {"lifecycle": {"exploration_grasps": 100}, "nosuch": {"enabled": True}}
    cfg, applied, skipped = apply_overrides(tpl, over, known)
    assert cfg == {"lifecycle": {"on_alarm": "mark", "exploration_grasps": 100}}
    assert (applied, skipped) == (["lifecycle.exploration_grasps"], ["nosuch.enabled"])
    assert tpl == {"lifecycle": {"on_alarm": "mark"}}  # the template is left as it was
    for mode in MODES.values():  # the agent has [rounds]: every mode's overrides apply
        _, applied, skipped = apply_overrides({}, mode, known)
        assert (applied, skipped) == (["rounds.enabled", "rounds.race"], [])
