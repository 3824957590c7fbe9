"""The demo's view of races and rounds (issue 16) from synthetic event streams: the live view's
lines and status, the summary's new keys and text, and the PNG's race bands."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.demo.analysis import summarise
from trainer.demo.live import LiveView
from trainer.demo.plot import plot_data, write_png
from trainer.demo.races import rounds_of
from trainer.demo.report import summary_text
from trainer.demo.timeline import Event, Grasp

P, C1, C2, C3 = "p" * 16, "c1" * 8, "c2" * 8, "c3" * 8
SCHEDULE = [(0, "baseline"), (300, "harsh_lighting")]


def _grasps() -> list[Grasp]:
    """1,100 grasps: 90% to 300, 50% to 640, 80% to 940, 85% to the end (exact rates)."""

    def block(start: int, n: int, rate: float, pol: str) -> list[Grasp]:
        k = round(n * rate)
        return [Grasp(start + i, float(start + i), i < k, pol, "serve") for i in range(n)]

    return (
        block(0, 300, 0.9, P)
        + block(300, 340, 0.5, P)
        + block(640, 300, 0.8, C1)
        + block(940, 160, 0.85, C3)
    )


def _race(t: float, event: str, **data: object) -> Event:
    return Event(t, "agent.race", {"event": event, "condition": "auto-1", **data})


def _round(t: float, event: str, **data: object) -> Event:
    return Event(t, "agent.round", {"event": event, "condition": "auto-1", **data})


def _arms(*arms: tuple[str, int, int]) -> list[dict[str, object]]:
    return [{"policy": p, "grasps": n, "successes": s} for p, n, s in arms]


def _decided(t: float, winner: str, parent: str, reason: str, *arms: tuple[str, int, int]) -> Event:
    """A race decided between ``arms`` (policy, grasps, successes): the cost is the grasps of
    every arm but the winner's."""
    grasps, cost = sum(a[1] for a in arms), sum(a[1] for a in arms if a[0] != winner)
    data = {"winner": winner, "parent": parent, "reason": reason, "arms": _arms(*arms)}
    return _race(t, "decided", grasps=grasps, cost=cost, **data)


def _swapped(t: float, policy: str, previous: str) -> Event:
    """The race's winning child swapped in under auto-1."""
    reason = "won the race in condition auto-1"
    data = {"policy": policy, "previous": previous, "reason": reason, "condition": "auto-1"}
    return Event(t, "agent.policy.swapped", data)


def _events() -> list[Event]:
    """Three rounds under auto-1: round 1's child wins its race, round 2's loses, round 3's
    wins; then the rounds stop (recovered)."""
    job = "agent.job"
    return [
        Event(-0.5, "agent.policy.swapped", {"policy": P, "previous": None, "reason": "start"}),
        Event(319.5, "agent.alarm", {"kind": "success_drop", "policy": P}),
        Event(319.5, "agent.condition", {"condition": "auto-1", "source": "alarm"}),
        Event(499.5, job, {"job": 1, "status": "exporting", "condition": "auto-1"}),
        _round(499.5, "started", round=1, parent=P),
        Event(559.5, job, {"job": 1, "status": "improved"}),
        _race(559.5, "started", parent=P, candidates=[C1], job=1, round=1),
        _decided(639.5, C1, P, "parent beaten", (P, 40, 20), (C1, 40, 32)),
        _swapped(639.5, C1, P),
        _round(639.5, "collecting", round=2, grasps=320),
        Event(739.5, job, {"job": 2, "status": "exporting", "condition": "auto-1"}),
        _round(739.5, "started", round=2, parent=C1),
        Event(759.5, job, {"job": 2, "status": "improved"}),
        _race(759.5, "started", parent=C1, candidates=[C2], job=2, round=2),
        _race(809.5, "eliminated", arm=1, policy=C2, reason="worse than the parent"),
        Event(
            819.5,
            "agent.policy.rejected",
            {
                "policy": C2,
                "reason": f"lost the race to {C1} (candidates eliminated; 24/30, 18/30)",
            },
        ),
        _decided(819.5, C1, C1, "candidates eliminated", (C1, 30, 24), (C2, 30, 18)),
        _round(819.5, "collecting", round=3, grasps=500),
        Event(859.5, job, {"job": 3, "status": "exporting", "condition": "auto-1"}),
        _round(859.5, "started", round=3, parent=C1),
        _race(879.5, "started", parent=C1, candidates=[C3], job=3, round=3),
        _decided(939.5, C3, C1, "parent beaten", (C1, 30, 21), (C3, 30, 27)),
        _swapped(939.5, C3, C1),
        _round(
            939.5,
            "ended",
            reason="recovered",
            rounds=3,
            level=0.9,
            level_before=0.9,
            grasps=620,
            cost=100,
        ),
    ]


def test_races_and_rounds_are_read_from_the_event_stream() -> None:
    [r] = rounds_of(_events(), _grasps())
    assert r.condition == "auto-1" and r.starts == (500, 740, 860) and r.taken == 3
    assert r.jobs == (1, 2, 3) and r.results == ("improved", "improved", None)
    assert [(x.started, x.ended, x.result()) for x in r.races] == [
        (560, 640, "child won"),
        (760, 820, "parent kept"),
        (880, 940, "child won"),
    ]
    assert r.cost == 100 and r.ended is not None and r.ended.reason == "recovered"
    assert r.races[0].story() == (
        f"race of round 1 at 560-640: child {C1} won (parent beaten; parent 20/40, child "
        "32/40), cost 40 grasps"
    )


def test_summary_counts_rounds_races_and_race_cost_per_condition() -> None:
    s = summarise(_grasps(), _events(), SCHEDULE, 1100)
    harsh = s.segments[1]
    # a child that won its race is the segment's trained swap, as a swap without a race is
    assert (harsh.swap, harsh.last_swap, harsh.swapped_policy) == (640, 940, C1)
    assert harsh.explorations[0].swap == 640
    after = (300 * 0.8 + 160 * 0.85) / 460
    assert harsh.recovered == pytest.approx((after - 0.5) / 0.4)
    assert harsh.final is not None and harsh.final.rate == pytest.approx(0.85)
    assert harsh.recovered_final == pytest.approx(0.35 / 0.4)
    assert harsh.rounds_taken == 3 and harsh.race_cost == 100
    assert s.segments[0].rounds_taken == 0 and s.segments[0].races == ()
    doc = json.loads(json.dumps(s.to_json()))
    seg = doc["conditions"][1]
    # the keys the tests and the README read stay; the new ones are added
    for key in ("recovered", "before", "between", "after", "alarm", "swap", "detection_delay"):
        assert key in seg
    assert seg["rounds_taken"] == 3 and seg["race_cost"] == 100
    assert seg["rounds_ended"] == ["recovered"]
    assert [(x["winner"], x["reason"], x["cost"]) for x in seg["races"]] == [
        (C1, "parent beaten", 40),
        (C1, "candidates eliminated", 30),
        (C3, "parent beaten", 30),
    ]
    assert [x["child_won"] for x in seg["races"]] == [True, False, True]
    assert seg["recovered_final"] == pytest.approx(0.875)
    assert (doc["rounds_taken"], doc["race_cost"], len(doc["races"])) == (3, 100, 3)
    text = summary_text(s)
    assert (
        "rounds under auto-1: 3 (round 1: job 1 at 500, improved; round 2: job 2 at 740, "
        "improved; round 3: job 3 at 860, no result yet)"
    ) in text
    assert f"race of round 2 at 760-820: parent {C1} kept (candidates eliminated;" in text
    assert "rounds ended at 940 after 3 round(s): recovered; level 90% vs 90% before" in text
    assert "races 3 (a child won 2), race cost 100 grasps" in text
    rec = f"{harsh.recovered_final:.0%}"
    assert f"the last swapped-in policy recovered {rec} of the drop" in text


def test_a_race_lost_is_not_drawn_as_a_refused_bundle_and_rounds_are_markers() -> None:
    s = summarise(_grasps(), _events(), SCHEDULE)
    kinds = [(m.kind, m.index) for m in s.markers if m.kind in ("round", "rejected", "race_lost")]
    assert kinds == [("round", 500), ("round", 740), ("race_lost", 820), ("round", 860)]


def test_a_race_running_or_abandoned_at_the_end_is_shown_as_such() -> None:
    grasps = _grasps()[:900]
    running = [e for e in _events() if e.t < 899]
    [r] = rounds_of(running, grasps)
    assert r.races[-1].result() == "running" and r.races[-1].span(900) == range(880, 900)
    assert "still running when the log ended" in r.races[-1].story()
    text = summary_text(summarise(grasps, running, SCHEDULE))
    assert "the rounds were still going when the log ended" in text
    gone = [*running, _race(889.5, "abandoned", reason="a new condition", grasps=10)]
    [r2] = rounds_of(gone, grasps)
    assert r2.races[-1].story() == (
        "race of round 3 at 880-890: abandoned after 10 grasps (a new condition)"
    )


def test_png_draws_race_bands_and_round_markers(tmp_path: Path) -> None:
    s = summarise(_grasps(), _events(), SCHEDULE, 1100)
    data = plot_data(_grasps(), s, window=20, title="races")
    assert data.races == (
        (560, 640, "child won"),
        (760, 820, "parent kept"),
        (880, 940, "child won"),
    )
    assert [m.index for m in data.markers if m.kind == "round"] == [500, 740, 860]
    assert "rounds 3, races 3\nrace cost 100" in data.notes[1][2]
    assert "after last swap 85%" in data.notes[1][2]
    with_races, without = tmp_path / "with.png", tmp_path / "without.png"
    write_png(data, with_races)
    write_png(dataclasses.replace(data, races=()), without)
    a = np.asarray(Image.open(with_races).convert("RGB"))
    b = np.asarray(Image.open(without).convert("RGB"))
    assert a.shape == b.shape and np.any(a != b)  # the bands are drawn


def test_live_view_shows_races_and_rounds() -> None:
    view = LiveView(SCHEDULE, total=1100, window=10)
    for i in range(1, 331):
        view.apply("agent.grasp", {"id": i, "success": True, "policy": P})
    view.apply("agent.condition", {"condition": "auto-1", "source": "alarm"})
    view.apply("agent.job", {"job": 1, "status": "exporting"})
    lines = view.apply("agent.round", {"event": "started", "round": 1, "parent": P})
    assert lines == [f"[grasp   330, world: harsh_lighting] round 1: job sent (parent {P})"]
    assert "round 1" in view.status()
    view.apply("agent.job", {"job": 1, "status": "queued"})
    assert view.job_in_flight()
    race = {"event": "started", "parent": P, "candidates": [C1], "job": 1, "round": 1}
    lines = view.apply("agent.race", race)
    assert lines == [
        f"[grasp   330, world: harsh_lighting] RACE round 1: child {C1} vs parent {P} on "
        "alternate grasps"
    ]
    # the job is settled once its child races: the demo resumes the agent for the race
    assert view.phase == "racing" and not view.job_in_flight()
    for i in range(331, 341):
        pol = P if i % 2 else C1
        ok = i in (331, 335) if pol == P else i != 340
        view.apply("agent.grasp", {"id": i, "success": ok, "policy": pol, "mode": "serve"})
    assert "race 10 grasps: parent 2/5, child 4/5" in view.status()
    decided = {
        "event": "decided",
        "winner": C1,
        "parent": P,
        "reason": "parent beaten",
        "grasps": 10,
        "cost": 5,
        "arms": _arms((P, 5, 2), (C1, 5, 4)),
    }
    assert view.apply("agent.race", decided) == [
        f"[grasp   340, world: harsh_lighting] RACE decided: child {C1} won (parent beaten; "
        "parent 2/5, child 4/5), cost 5 grasps"
    ]
    swap = {
        "policy": C1,
        "previous": P,
        "reason": "won the race in condition auto-1",
        "condition": "auto-1",
    }
    assert view.apply("agent.policy.swapped", swap)[0].endswith(
        f"SWAP to {C1} (won the race in condition auto-1)"
    )
    assert view.phase == "serving" and "race" not in view.status()
    lines = view.apply("agent.round", {"event": "collecting", "round": 2, "grasps": 40})
    assert lines[0].endswith("round 2: collecting grasps for its job (40 grasps since the change)")
    assert view.phase == "exploring"
    view.apply("agent.round", {"event": "started", "round": 2, "parent": C1})
    view.apply("agent.race", {**race, "parent": C1, "candidates": [C2], "round": 2})
    assert "round 2" in view.status() and "race 0 grasps: parent 0/0, child 0/0" in view.status()
    out = view.apply(
        "agent.race", {"event": "eliminated", "arm": 1, "policy": C2, "reason": "worse"}
    )
    assert out[0].endswith(f"race: {C2} eliminated (worse)")
    lost = {"policy": C2, "reason": f"lost the race to {C1}"}
    assert view.apply("agent.policy.rejected", lost)[0].endswith(
        f"child {C2} rejected: lost the race to {C1}"
    )
    kept = {**decided, "winner": C1, "parent": C1, "reason": "candidates eliminated"}
    assert (
        f"RACE decided: parent {C1} kept (candidates eliminated;"
        in view.apply("agent.race", kept)[0]
    )
    ended = {
        "event": "ended",
        "reason": "plateau",
        "rounds": 2,
        "level": 0.8,
        "level_before": 0.86,
        "grasps": 700,
        "cost": 25,
    }
    assert view.apply("agent.round", ended)[0].endswith(
        "rounds ended after 2 round(s): plateau (level 80% vs 86% before the change; "
        "700 grasps since the change, race cost 25 grasps)"
    )
    assert view.phase == "serving" and "round" not in view.status()
    # a race given up when the world changes again
    view.apply("agent.race", {**race, "round": 1})
    gone = {"event": "abandoned", "reason": "a new condition", "grasps": 12}
    assert view.apply("agent.race", gone)[0].endswith(
        "race abandoned after 12 grasps (a new condition)"
    )
    view.apply("agent.condition", {"condition": "auto-2", "source": "alarm"})
    assert view.phase == "exploring" and view.race is None and view.round == 0


def test_rounds_of_an_exploration_begun_before_a_change_are_listed_where_it_began() -> None:
    """A false alarm under baseline at 250 marks auto-1 before the world changes at 300: its
    rounds belong to baseline (as its exploration does); harsh lighting points there."""
    events = [
        Event(e.t - 70 if e.topic == "agent.condition" else e.t, e.topic, e.data)
        for e in _events()
        if e.topic != "agent.alarm"
    ]
    s = summarise(_grasps(), events, SCHEDULE, 1100)
    base, harsh = s.segments
    assert base.rounds_taken == 3 and harsh.rounds_taken == 0 and harsh.carried
    assert "rounds 3, races 3\nrace cost 100" in plot_data(_grasps(), s).notes[0][2]
    assert "(its rounds and races are listed under baseline)" in summary_text(s)
