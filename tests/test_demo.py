"""robot-demo: the pure analysis on real grasp logs, the PNG writers, the live view, the
generated configs, and the event stream on a real PUB socket."""

from __future__ import annotations

import io
import json
import time
import tomllib
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq
from PIL import Image

from agent.config import SocketsConfig, config_from_dict
from agent.grasplog import GraspLog
from agent.logrecords import GraspRecord
from agent.transport import EventPublisher, Security
from trainer.demo.analysis import rolling, summarise, wilson
from trainer.demo.live import LiveView
from trainer.demo.logread import read_run
from trainer.demo.options import DemoOptions, build_parser
from trainer.demo.plot import COLOURS, LANES, plot_data, write_png
from trainer.demo.procs import EventStream, free_ports
from trainer.demo.report import summary_text
from trainer.demo.run import Demo, main
from trainer.demo.setup import (
    SCHEDULES,
    Endpoints,
    RunPlan,
    agent_config,
    dumps_toml,
    parse_conditions,
    trainer_config,
)
from trainer.demo.timeline import Event, Grasp
from trainer.service_config import service_config_from_dict

REPO = Path(__file__).resolve().parents[1]
PARENT, CHILD = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"


def test_wilson_interval_matches_reference_values() -> None:
    half = wilson(5, 10)
    assert half.rate == 0.5
    assert half.low == pytest.approx(0.2366, abs=1e-4)
    assert half.high == pytest.approx(0.7634, abs=1e-4)
    none = wilson(0, 10)
    assert none.low == 0.0 and none.high == pytest.approx(0.2775, abs=1e-4)
    assert wilson(10, 10).high == pytest.approx(1.0)
    empty = wilson(0, 0)
    assert empty.n == 0 and empty.rate is None and "n=0" in empty.text()
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_rolling_success_is_a_trailing_mean() -> None:
    assert rolling([True, False, True, True], 2) == [1.0, 0.5, 0.5, 1.0]
    assert rolling([], 5) == []


def _outcomes(n: int, rate: float, seed: int) -> list[bool]:
    rng = np.random.default_rng(seed)
    k = round(n * rate)
    flags = np.array([True] * k + [False] * (n - k))
    rng.shuffle(flags)
    return [bool(x) for x in flags]


def _write_log(db: Path) -> None:
    """A run: baseline 0-99 (90%), harsh from 100: alarm at 110, job at 130, trained swap at
    200 (50% before it, 80% after), a rollback at 290; the last grasp is 299."""
    outcomes = _outcomes(100, 0.9, 1) + _outcomes(100, 0.5, 2) + _outcomes(100, 0.8, 3)
    t0 = 1_000_000.0
    with GraspLog(db) as log:
        cid = log.add_condition("baseline", "", "initial")
        log.upsert_policy(PARENT, "p", "active")
        log.upsert_policy(CHILD, "c", "candidate", PARENT, cid)

        def at(i: int) -> float:  # between grasp i-1's end and grasp i's end
            return t0 + i - 0.5

        log.add_event("agent.policy.swapped", {"policy": PARENT, "previous": None}, at(0))
        for i, ok in enumerate(outcomes):
            pol = CHILD if 200 <= i < 290 else PARENT
            log.log_grasp(
                GraspRecord(
                    t0 + i - 0.9,
                    t0 + i,
                    cid,
                    pol,
                    "serve",
                    ok,
                    float(ok),
                    0.5,
                    2.0,
                    5.0,
                    "sim_height",
                    {},
                    (),
                )
            )
            if i == 110:
                log.add_event("agent.alarm", {"kind": "success_drop", "policy": PARENT}, at(i))
                mark = {"condition": "auto-1", "source": "alarm", "previous": "baseline"}
                log.add_event("agent.condition", mark, at(i))
            if i == 130:
                exporting = {"job": 1, "status": "exporting", "condition": "auto-1"}
                log.add_event("agent.job", exporting, at(i))
            if i == 199:
                log.add_event("agent.job", {"job": 1, "status": "improved"}, at(i))
            if i == 200:
                swap = {
                    "policy": CHILD,
                    "previous": PARENT,
                    "reason": "trained in condition auto-1",
                    "condition": "auto-1",
                }
                log.add_event("agent.policy.swapped", swap, at(i))
            if i == 290:
                back = {"policy": PARENT, "previous": CHILD, "reason": "probation_failed"}
                log.add_event("agent.policy.rolled_back", back, at(i))


def test_summary_segments_from_a_real_grasp_log(tmp_path: Path) -> None:
    db = tmp_path / "grasps.db"
    _write_log(db)
    grasps, events = read_run(db)
    assert len(grasps) == 300 and grasps[0].index == 0
    s = summarise(grasps, events, [(0, "baseline"), (100, "harsh_lighting")])
    base, harsh = s.segments
    assert (base.condition, base.start, base.end, base.before) == ("baseline", 0, 100, None)
    assert base.between.n == 100 and base.between.successes == 90 and base.false_alarms == 0
    assert harsh.before is not None and harsh.before.rate == 0.9
    assert harsh.between.n == 100 and harsh.between.rate == 0.5
    assert harsh.after is not None and harsh.after.n == 100 and harsh.after.rate == 0.8
    assert (harsh.alarm, harsh.job, harsh.swap) == (110, 130, 200)
    assert harsh.detection_delay == 10 and harsh.marked == 110
    assert harsh.swapped_policy == CHILD
    assert harsh.rollbacks == (290,)
    assert harsh.job_results == ("improved",)
    assert harsh.recovered == pytest.approx(0.75)
    text = summary_text(s)
    assert "recovered 75% of the drop" in text and "alarm after 10 grasps (at 110)" in text
    assert "explored 110-130 (marked by alarm); job 1 improved at 199" in text
    assert f"swapped in at 200 ({CHILD}); rolled back at 290" in text
    assert "changes detected (an alarm in the segment): 1 of 1" in text
    doc = s.to_json()
    assert (doc["changes_detected"], doc["changes"]) == (1, 1)
    assert doc["conditions"][1]["recovered"] == pytest.approx(0.75)
    # a change that cost nothing (52% -> 48%, not significant) left nothing to detect
    s2 = summarise(grasps, events, [(0, "baseline"), (100, "harsh_lighting"), (150, "x")])
    assert "1 of 2; no drop to detect: x (48.0% after" in summary_text(s2)
    # the exploration (110-130) did not cross x's change at 150: x is not "inside" it
    assert not s2.segments[2].carried
    assert s2.to_json()["changes_without_drop"] == ["x"] and not s2.segments[2].dropped
    # a drop with no alarm at all is missed; an alarm without a mark of its own is not
    silent = [e for e in events if e.topic not in ("agent.condition", "agent.alarm")]
    s3 = summarise(grasps, silent, [(0, "baseline"), (100, "harsh_lighting")])
    assert "0 of 1; missed (a drop with no alarm): harsh_lighting" in summary_text(s3)
    assert s3.segments[1].dropped and s3.to_json()["changes_missed"] == ["harsh_lighting"]
    unmarked = [e for e in events if e.topic != "agent.condition"]
    s4 = summarise(grasps, unmarked, [(0, "baseline"), (100, "harsh_lighting")])
    assert s4.to_json()["changes_missed"] == [] and "missed" not in summary_text(s4)
    assert doc["conditions"][1]["after"]["n"] == 100


def test_initial_policy_load_is_not_a_swap(tmp_path: Path) -> None:
    db = tmp_path / "grasps.db"
    _write_log(db)
    grasps, events = read_run(db)
    s = summarise(grasps, events, [(0, "baseline"), (100, "harsh_lighting")])
    kinds = [m.kind for m in s.markers]
    assert kinds.count("start") == 1 and kinds.count("swap") == 1
    assert s.segments[0].swap is None


def test_segment_without_swap_has_no_after_and_next_before_is_whole_segment() -> None:
    grasps = [Grasp(i, float(i), i % 2 == 0, PARENT, "serve") for i in range(30)]
    s = summarise(grasps, [], [(0, "baseline"), (10, "transparent"), (20, "checkerboard")])
    assert [seg.condition for seg in s.segments] == ["baseline", "transparent", "checkerboard"]
    assert s.segments[1].after is None and s.segments[1].recovered is None
    assert s.segments[2].before is not None and s.segments[2].before.n == 10
    # a schedule entry beyond the log is not a segment
    assert len(summarise(grasps, [], [(0, "baseline"), (40, "transparent")]).segments) == 1


def test_png_is_drawn_with_matplotlib_with_every_marker_kind_in_its_own_lane(
    tmp_path: Path,
) -> None:
    db = tmp_path / "grasps.db"
    _write_log(db)
    grasps, events = read_run(db)
    s = summarise(grasps, events, [(0, "baseline"), (100, "harsh_lighting")], 300)
    data = plot_data(grasps, s, window=20, title="test run")
    kinds = [m.kind for m in data.markers]
    assert kinds == ["alarm", "condition", "job", "job_result", "swap", "rollback"]
    assert len({LANES[k] for k in kinds}) == len(set(kinds))  # no kind hides another
    assert len(data.rolling) == 300 and len(data.levels) == 3
    assert "after swap 80%" in data.notes[1][2] and "recovered 75%" in data.notes[1][2]
    png = tmp_path / "run.png"
    write_png(data, png)
    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] > 300 and img.shape[1] > 800
    # the swap's green and the alarm's red are drawn
    b, g, r = (img[..., i].astype(int) for i in range(3))
    assert np.any((g > 120) & (r < 80) & (b < 100))
    assert np.any((r > 180) & (g < 60) & (b < 60))
    assert Image.open(png).text["robot-demo:state"] == "complete"


def test_refused_job_is_drawn_apart_from_an_improved_one() -> None:
    grasps = [Grasp(i, float(i), True, PARENT, "serve") for i in range(20)]
    ev = [
        Event(4.5, "agent.job", {"job": 1, "status": "improved"}),
        Event(9.5, "agent.job", {"job": 2, "status": "no_improvement"}),
    ]
    s = summarise(grasps, ev, [(0, "baseline")])
    assert [(m.kind, m.index) for m in s.markers] == [("job_result", 5), ("refused", 10)]
    assert COLOURS["refused"] != COLOURS["job_result"] and LANES["refused"] != LANES["swap"]


def test_exploration_straddling_a_change_is_attributed_to_where_it_began() -> None:
    """An alarm under transparent at 40 starts an exploration that runs past the change to
    checkerboard at 50; its job trains on both. Checkerboard has no alarm of its own: it is
    "inside an exploration begun earlier", not "missed", and the job is transparent's."""
    grasps = [Grasp(i, float(i), i < 40 or i >= 75, PARENT, "serve") for i in range(100)]
    ev = [
        Event(39.5, "agent.alarm", {"kind": "success_drop"}),
        Event(39.5, "agent.condition", {"condition": "auto-2", "source": "alarm"}),
        Event(59.5, "agent.job", {"job": 2, "status": "exporting", "condition": "auto-2"}),
        Event(69.5, "agent.job", {"job": 2, "status": "improved"}),
        Event(
            74.5,
            "agent.policy.swapped",
            {"policy": CHILD, "previous": PARENT, "reason": "trained", "condition": "auto-2"},
        ),
    ]
    sched = [(0, "baseline"), (20, "transparent"), (50, "checkerboard")]
    s = summarise(grasps, ev, sched)
    transparent, checker = s.segments[1], s.segments[2]
    assert transparent.alarm == 40 and transparent.job == 60
    assert transparent.explorations[0].crossed == ("checkerboard",)
    assert checker.alarm is None and checker.job is None and not checker.missed
    assert [a.marked for a in checker.carried] == [40] and checker.swap_from == "transparent"
    text = summary_text(s)
    assert "ran past the change to checkerboard" in text
    assert "the exploration begun at 40 under transparent was still running" in text
    assert "inside an exploration begun earlier (no alarm of its own): checkerboard" in text
    assert "missed" not in text
    assert s.to_json()["changes_inside_exploration"] == ["checkerboard"]


def test_live_view_follows_phases_and_shows_training_progress() -> None:
    view = LiveView([(0, "baseline"), (100, "harsh_lighting")], total=300, window=10)
    for i in range(1, 106):
        assert view.apply("agent.grasp", {"id": i, "success": i < 100, "policy": PARENT}) == []
    assert view.world() == "harsh_lighting" and view.rate() == pytest.approx(0.4)
    lines = view.apply("agent.alarm", {"kind": "success_drop", "reason": "dropped"})
    assert "ALARM success_drop" in lines[0] and "world: harsh_lighting" in lines[0]
    view.apply("agent.condition", {"condition": "auto-1", "source": "alarm"})
    assert view.phase == "exploring"
    assert view.apply("agent.job", {"job": 1, "status": "exporting"}) == [
        "[grasp   105, world: harsh_lighting] job 1: exporting"
    ]
    assert view.phase == "training"
    assert (
        view.apply(
            "agent.job",
            {"job": 1, "status": "training", "detail": {"step": 250, "max_steps": 1000}},
        )
        == []
    )
    assert "job 1 train [#####...............] 250/1000" in view.status()
    # alarms the agent does not act on (it is training) print once, then only count
    first = view.apply("agent.alarm", {"kind": "success_drop", "reason": "dropped"})
    assert "further ones only counted" in first[0]
    assert view.apply("agent.alarm", {"kind": "success_drop", "reason": "dropped"}) == []
    assert view.alarms == 3
    lines = view.apply(
        "agent.policy.swapped",
        {"policy": CHILD, "previous": PARENT, "reason": "trained", "probation_parent": PARENT},
    )
    assert "SWAP to " + CHILD in lines[0]
    assert view.phase == "probation" and view.job is None and "job" not in view.status()
    view.apply("agent.policy.rolled_back", {"policy": PARENT, "reason": "probation_failed"})
    assert view.rollbacks == 1 and view.policy == PARENT


def test_generated_configs_load_as_the_agent_and_trainer_read_them(tmp_path: Path) -> None:
    plan = RunPlan(parse_conditions("default"), 400, 2000)
    assert plan.schedule() == [
        [0, "baseline"],
        [400, "harsh_lighting"],
        [2400, "transparent"],
        [4400, "checkerboard"],
    ]
    assert plan.total_grasps == 6400
    assert parse_conditions("paper") == SCHEDULES["paper"]
    with pytest.raises(ValueError):
        parse_conditions("baseline")
    ep = Endpoints("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "tcp://127.0.0.1:3")
    with open(REPO / "configs" / "demo-agent.toml", "rb") as f:
        a_tmpl = tomllib.load(f)
    a = agent_config(a_tmpl, plan, tmp_path / "agent", ep, REPO / "policies" / "base", 321)
    cfg = config_from_dict(tomllib.loads(dumps_toml(a)))
    assert cfg.lifecycle.on_alarm == "mark" and cfg.lifecycle.exploration_grasps == 321
    assert cfg.agent.max_grasps == 6400 and cfg.agent.data_dir == str(tmp_path / "agent")
    assert [list(e) for e in cfg.driver.settings.sim.schedule] == plan.schedule()
    assert cfg.sockets.event_endpoint == ep.events and cfg.trainer.endpoint == ep.trainer
    # the demo learns in rounds, its children racing their parents (the agent's defaults)
    assert cfg.rounds.enabled and cfg.rounds.race
    with open(REPO / "configs" / "demo-trainer.toml", "rb") as f:
        t_tmpl = tomllib.load(f)
    t = trainer_config(
        t_tmpl, tmp_path / "trainer", ep, tmp_path / "base", REPO / "policies" / "base"
    )
    tcfg = service_config_from_dict(tomllib.loads(dumps_toml(t)))
    assert tcfg.service.endpoint == ep.trainer
    assert tcfg.service.base_dataset == str(tmp_path / "base")


def test_event_stream_decodes_the_agents_pub_messages() -> None:
    port = free_ports(1)[0]
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sec = Security(SocketsConfig())
    pub = EventPublisher(ctx, f"tcp://127.0.0.1:{port}")
    pub.bind(sec)
    stream = EventStream(f"tcp://127.0.0.1:{port}")
    stream.start()
    try:
        got: list[tuple[str, dict[str, object]]] = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:  # the subscription takes a moment
            pub.publish("agent.grasp", {"id": 1, "success": True})
            got = stream.poll(100)
        assert got and got[0] == ("agent.grasp", {"id": 1, "success": True})
        assert stream.bad == 0
    finally:
        stream.close()
        pub.close()
        ctx.term()


def test_event_markers_are_placed_by_time() -> None:
    grasps = [Grasp(i, float(i), True, PARENT, "serve") for i in range(5)]
    ev = [Event(2.5, "agent.alarm", {"kind": "success_drop"})]
    s = summarise(grasps, ev, [(0, "baseline")])
    assert s.markers[0].index == 3 and s.segments[0].false_alarms == 1


def _tiny(tmp_path: Path, **over: object) -> DemoOptions:
    opts = {
        "out": tmp_path / "run",
        "schedule": "baseline,harsh_lighting",
        "baseline_grasps": 30,
        "grasps_per_condition": 30,
        "exploration_grasps": 20,
        "base_grasps": 0,
        "time_limit_s": 150,
        "agent_nice": 0,
        "agent_template": REPO / "configs" / "demo-agent.toml",
        "trainer_template": REPO / "configs" / "demo-trainer.toml",
        "bundle": REPO / "policies" / "base",
        **over,
    }
    return DemoOptions(**opts)  # type: ignore[arg-type]


def test_demo_runs_the_real_agent_and_trainer_and_writes_its_report(tmp_path: Path) -> None:
    """The orchestration end to end on a tiny budget: both child processes, the live view from
    the PUB socket, a clean stop of the trainer, the report from the grasp log."""
    out = io.StringIO()
    assert Demo(_tiny(tmp_path), out).run() == 0
    run = tmp_path / "run"
    doc = json.loads((run / "summary.json").read_text())
    assert doc["grasps"] == 60 and [c["condition"] for c in doc["conditions"]] == [
        "baseline",
        "harsh_lighting",
    ]
    assert doc["exit_codes"] == {"agent": 0, "trainer": 0}
    assert doc["complete"] is True and doc["stopped"] is None and doc["exit_status"] == 0
    # typed: numbers as numbers, booleans as booleans, paths as strings, unset as null
    o = doc["options"]
    assert o["baseline_grasps"] == 30 and o["time_limit_s"] == 150
    assert o["pause_while_training"] is True and o["summary_json"] is None
    assert o["out"] == str(tmp_path / "run")
    assert Image.open(run / "demo.png").text["robot-demo:state"] == "complete"
    text = out.getvalue()
    assert "grasp    60/60" in text and "harsh_lighting: grasps 30-59" in text
    assert "warning: --baseline-grasps 30 is below the detector's reference" in text
    agent_cfg = tomllib.loads((run / "agent.toml").read_text())
    assert agent_cfg["lifecycle"]["on_alarm"] == "mark"
    assert agent_cfg["driver"]["sim"]["schedule"] == [[0, "baseline"], [30, "harsh_lighting"]]


def test_run_cut_short_says_so_in_exit_status_summaries_and_png(tmp_path: Path) -> None:
    """The time limit stops the agent long before its budget: exit 3, and summary.txt,
    summary.json, the PNG's title and text chunks all say where and why it stopped; the
    conditions it never reached are not listed as run."""
    out = io.StringIO()
    opts = _tiny(
        tmp_path,
        schedule="baseline,harsh_lighting,checkerboard",
        baseline_grasps=30,
        grasps_per_condition=5000,
        exploration_grasps=4000,
        time_limit_s=6,
    )
    assert Demo(opts, out).run() == 3
    run = tmp_path / "run"
    doc = json.loads((run / "summary.json").read_text())
    n = doc["grasps"]
    assert 0 < n < 10030 and doc["complete"] is False and doc["exit_status"] == 3
    why = "because the time limit (--time-limit 0.1 min) was reached"
    assert doc["stopped"] == {"at": n, "of": 10030, "reason": why.removeprefix("because ")}
    assert doc["stopped_text"] == f"stopped early at grasp {n} of 10030, {why}"
    assert "checkerboard" in doc["not_reached"]
    assert "checkerboard" not in [c["condition"] for c in doc["conditions"]]
    text = (run / "summary.txt").read_text()
    assert text.startswith(f"Stopped early at grasp {n} of 10030, {why}")
    never = next(line for line in text.splitlines() if line.startswith("never reached: "))
    assert "checkerboard" in never
    png = Image.open(run / "demo.png").text
    assert png["robot-demo:state"] == "stopped early"
    assert png["robot-demo:stopped"] == doc["stopped_text"]
    assert "never reached: " in png["Title"] and "checkerboard" in png["Title"]
    assert "STOPPED EARLY (exit 3)" in out.getvalue()


def test_schedule_typo_fails_at_once_with_the_message_in_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t0 = time.monotonic()
    assert main(["--out", str(tmp_path / "run"), "--schedule", "baseline,checkerbord"]) == 2
    assert time.monotonic() - t0 < 5
    err = capsys.readouterr().err
    assert "unknown condition(s) 'checkerbord'" in err and "checkerboard" in err
    assert not (tmp_path / "run").exists()  # nothing started, nothing written
    for bad, says in [
        (["--bundle", str(tmp_path / "nope")], "--bundle"),
        (["--grasps-per-condition", "100"], "must exceed the exploration"),
        (["--agent-template", str(tmp_path / "none.toml")], "no such file"),
    ]:
        assert main(["--out", str(tmp_path / "run"), *bad]) == 2
        assert says in capsys.readouterr().err


def test_help_gives_every_option_a_help_text_and_default() -> None:
    parser = build_parser()
    text = parser.format_help()
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help, action.dest
        assert "(default:" in " ".join(text.split()).split(action.option_strings[0], 1)[1]
    assert "exit status:" in text and "130" in text


def test_job_in_flight_ends_with_every_way_a_job_can_end() -> None:
    """The demo pauses the agent while a job is with the trainer: every end must resume it."""
    endings: list[tuple[str, dict[str, object]]] = [
        ("agent.policy.swapped", {"policy": CHILD, "previous": PARENT, "reason": "trained"}),
        ("agent.job", {"job": 1, "status": "no_improvement", "detail": {"reason": "none"}}),
        ("agent.job", {"job": 1, "status": "failed", "detail": {"error": "x"}}),
        ("agent.job", {"job": 1, "status": "cancelled"}),
        ("agent.policy.rejected", {"policy": CHILD, "purpose": "trained", "reason": "non_finite"}),
        ("agent.alarm", {"kind": "job_failed", "reason": "job 1 failed: bundle rejected"}),
    ]
    for topic, data in endings:
        view = LiveView([(0, "baseline")], total=10)
        view.apply("agent.job", {"job": 1, "status": "exporting"})
        assert not view.job_in_flight()  # the agent's exporter still reads its log
        view.apply("agent.job", {"job": 1, "status": "queued", "grasps": 5, "transitions": 5})
        assert view.job_in_flight()
        view.apply(topic, data)
        assert not view.job_in_flight(), topic


def test_exploration_ended_by_a_newer_mark_says_so() -> None:
    grasps = [Grasp(i, float(i), i < 20, PARENT, "serve") for i in range(60)]
    ev = [
        Event(21.5, "agent.condition", {"condition": "auto-1", "source": "alarm"}),
        Event(31.5, "agent.condition", {"condition": "auto-2", "source": "alarm"}),
        Event(51.5, "agent.job", {"job": 1, "status": "exporting", "condition": "auto-2"}),
    ]
    s = summarise(grasps, ev, [(0, "baseline"), (20, "transparent"), (30, "checkerboard")])
    first = s.segments[1].explorations[0]
    assert (first.superseded, first.job, first.crossed) == (32, None, ("checkerboard",))
    assert "explored 22-32 (marked by alarm); ended by a newer mark before its job" in (
        summary_text(s)
    )
    assert s.segments[2].explorations[0].job == 1


def test_a_drop_below_min_drop_is_not_called_missed() -> None:
    grasps = [Grasp(i, float(i), i % 5 != 0, "p0", "serve") for i in range(400)]  # 80%
    grasps += [Grasp(i, float(i), i % 10 < 7, "p0", "serve") for i in range(400, 2000)]  # 70%
    s = summarise(grasps, [], [(0, "baseline"), (400, "transparent")], min_drop=0.15)
    seg = s.segments[1]
    assert seg.dropped and seg.small_drop and not seg.missed
    text = summary_text(s)
    assert "missed" not in text and "below the detector's min_drop" in text
    big = summarise(grasps, [], [(0, "baseline"), (400, "transparent")], min_drop=0.05)
    assert big.segments[1].missed and "missed (a drop with no alarm)" in summary_text(big)


def test_schedule_option_steps_with_parameters_reach_the_sim_cell_and_label_segments(
    tmp_path: Path,
) -> None:
    """``--schedule`` takes the sim's step syntax: the parameters go into the generated agent
    config, through the agent's config loader into the cell, and label the report's segments."""
    from agent.driver_types import make_driver
    from drivers.registry import BUILTIN
    from drivers.sim.cell import SimCell
    from trainer.demo.options import options_from_args

    step = "harsh_lighting:light_azimuth_deg=200:intensity=0.5"
    args = build_parser().parse_args(
        ["--out", str(tmp_path / "run"), "--schedule", f"baseline,{step},harsh_lighting"]
    )
    demo = Demo(options_from_args(args), io.StringIO())  # checks only: nothing starts
    plan = demo.plan
    assert plan.schedule() == [
        [0, "baseline"],
        [300, "harsh_lighting", {"light_azimuth_deg": 200.0, "intensity": 0.5}],
        [1100, "harsh_lighting"],
    ]
    labelled = plan.labelled()
    assert labelled == [
        (0, "baseline"),
        (300, "harsh_lighting(light_azimuth_deg=200, intensity=0.5)"),
        (1100, "harsh_lighting"),
    ]
    ep = Endpoints("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "tcp://127.0.0.1:3")
    a = agent_config(demo.checked.agent_template, plan, tmp_path / "agent", ep, demo.checked.bundle)
    cfg = config_from_dict(tomllib.loads(dumps_toml(a)), BUILTIN)
    assert cfg.driver.settings.sim.schedule[1][2] == {"light_azimuth_deg": 200, "intensity": 0.5}
    cell = make_driver(cfg.driver, BUILTIN)
    assert isinstance(cell, SimCell)
    assert cell.config.schedule[1] == (300, "harsh_lighting", plan.schedule()[1][2])
    # the analysis keys segments by label: the same condition twice is two segments
    grasps = [Grasp(i, float(i), True, PARENT, "serve") for i in range(1200)]
    segs = summarise(grasps, [], labelled).segments
    assert [s.condition for s in segs] == [n for _, n in labelled]


@pytest.mark.parametrize(
    ("schedule", "says"),
    [
        (
            "baseline,harsh_lighting:azimuth=200",
            "condition 'harsh_lighting' has no parameter 'azimuth'; allowed: intensity",
        ),
        ("baseline,transparent:opacity", "parameter 'opacity' must look like key=value"),
        ("baseline,transparent:opacity=lots", "parameter 'opacity': 'lots' is not a number"),
        ("baseline,baseline:x=1", "--schedule[1]: condition 'baseline' has no parameter 'x'"),
        # the defaults spelt out are the same world: no change
        ("harsh_lighting:intensity=1,harsh_lighting", "a condition follows itself"),
    ],
)
def test_schedule_step_parameter_errors_fail_at_once_naming_step_and_key(
    tmp_path: Path, schedule: str, says: str
) -> None:
    with pytest.raises(ValueError) as ei:  # the checks, before anything starts
        Demo(DemoOptions(out=tmp_path / "run", schedule=schedule), io.StringIO())
    assert says in str(ei.value)
    assert not (tmp_path / "run").exists()
