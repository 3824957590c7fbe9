"""Fast pure unit tests: wire envelope, config, CEM, detector, lifecycle."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from agent import lifecycle as lc
from agent.cem import Cem, CemParams
from agent.config import check_exposure, config_from_dict, example_toml, load_config
from agent.detector import SuccessDropDetector, arl_markov, arl_simulate, design_cusum
from agent.probation import ProbationTest, design_probation, operating_characteristic
from agent.rounds import RoundsConfig
from agent.wire import WireError, decode, encode
from plumbing.config_loader import ConfigError

pytestmark = pytest.mark.timeout(60)


# -- wire ---------------------------------------------------------------------------------------
def test_wire_round_trip_with_arrays() -> None:
    img = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    frames = encode("obs", {"id": 3}, {"image": img, "a": np.ones(3, np.float32)})
    msg = decode(frames)
    assert msg.type == "obs" and msg.header == {"id": 3}
    assert np.array_equal(msg.arrays["image"], img) and msg.arrays["a"].dtype == np.float32


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([], "empty"),
        ([b"\xff\xfe"], "bad_json"),
        ([b"[1,2]"], "bad_header"),
        ([b'{"v": 2, "type": "x"}'], "bad_version"),
        ([b'{"type": "x"}'], "bad_version"),
        ([b'{"v": 1}'], "bad_type"),
        ([b'{"v": 1, "type": "x", "n": NaN}'], "bad_json"),
        ([b'{"v": 1, "type": "x"}', b"extra"], "bad_arrays"),
        (
            [b'{"v":1,"type":"x","arrays":[{"name":"a","dtype":"object","shape":[1]}]}', b"x"],
            "bad_dtype",
        ),
        (
            [b'{"v":1,"type":"x","arrays":[{"name":"a","dtype":"uint8","shape":[4]}]}', b"xyz"],
            "bad_shape",
        ),
        (
            [b'{"v":1,"type":"x","arrays":[{"name":"a","dtype":"uint8","shape":[-1]}]}', b""],
            "bad_shape",
        ),
    ],
)
def test_wire_rejects_malformed(frames: list[bytes], code: str) -> None:
    with pytest.raises(WireError) as ei:
        decode(frames)
    assert ei.value.code == code


def test_wire_size_cap() -> None:
    with pytest.raises(WireError) as ei:
        encode("x", arrays={"a": np.zeros(2000, np.uint8)}, max_bytes=1000)
    assert ei.value.code == "too_large"
    frames = encode("x", arrays={"a": np.zeros(2000, np.uint8)})
    with pytest.raises(WireError):
        decode(frames, max_bytes=1000)


def test_wire_refuses_pickle_dtypes() -> None:
    with pytest.raises(WireError):
        encode("x", arrays={"a": np.array([object()], dtype=object)})


# -- config -------------------------------------------------------------------------------------
def test_config_defaults_and_example_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "c.toml"
    p.write_text(example_toml())
    assert load_config(p) == config_from_dict({})


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"cem": {"sampels": 3}}, "cem.sampels"),
        ({"cem": {"samples": "x"}}, "cem.samples must be an integer"),
        ({"policy": {"provider": "tpu"}}, "'auto', 'cpu', 'cuda'"),
        ({"lifecycle": {"on_alarm": "panic"}}, "lifecycle.on_alarm"),
        ({"cem": {"elites": 100}}, "cem.elites"),
        ({"bogus": {}}, "allowed keys here"),
        ({"detector": {"min_drop": 1.5}}, "detector.min_drop"),
        ({"sockets": {"command_endpoint": "http://x"}}, "tcp://"),
    ],
)
def test_config_errors_name_the_key(raw: dict, needle: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as ei:
        config_from_dict(raw)
    assert needle in str(ei.value)


def test_non_loopback_without_curve_refuses() -> None:
    cfg = config_from_dict({"sockets": {"command_endpoint": "tcp://0.0.0.0:5999"}})
    with pytest.raises(ConfigError, match="CURVE"):
        check_exposure(cfg.sockets)
    check_exposure(config_from_dict({"sockets": {"command_endpoint": "tcp://127.0.0.1:1"}}).sockets)


# -- CEM ----------------------------------------------------------------------------------------
def test_cem_finds_the_peak_and_respects_bounds() -> None:
    target = np.array([0.9, -0.95, 0.2], np.float32)
    cem = Cem(
        CemParams(samples=64, elites=6, iterations=3),
        -np.ones(3, np.float32),
        np.ones(3, np.float32),
        seed=1,
    )
    seen: list[np.ndarray] = []

    def score(a: np.ndarray) -> np.ndarray:
        seen.append(a)
        return np.exp(-((a - target) ** 2).sum(1)).astype(np.float32)

    r = cem.optimise(score)
    assert r.evaluated == 192 and len(seen) == 3
    assert np.all(np.abs(np.concatenate(seen)) <= 1.0)
    assert np.linalg.norm(r.action - target) < 0.3
    assert r.q == pytest.approx(float(score(r.action[None])[0]), abs=1e-6)


def test_cem_rejects_non_finite_scores() -> None:
    cem = Cem(CemParams(), -np.ones(3, np.float32), np.ones(3, np.float32))
    with pytest.raises(ValueError):
        cem.optimise(lambda a: np.full(len(a), np.nan, np.float32))


# -- detector -----------------------------------------------------------------------------------
def test_threshold_reaches_the_target_arl_and_is_minimal() -> None:
    d = design_cusum(0.86, 0.15, 1000)
    assert d.arl0 >= 1000
    assert arl_markov(d.down, d.up, d.threshold - 1, d.p0) < 1000
    # Monte Carlo agrees with the exact chain
    assert arl_simulate(d.down, d.up, d.threshold, d.p0, streams=3000) == pytest.approx(
        d.arl0, rel=0.1
    )


def test_detector_calibrates_then_detects_a_drop() -> None:
    rng = np.random.default_rng(0)
    det = SuccessDropDetector(arl0=1000, min_drop=0.2, reference_grasps=100)
    for x in rng.random(100) < 0.9:
        assert det.update(bool(x)) is None
    assert not det.calibrating and det.design is not None
    alarm = None
    delay = 0
    for x in rng.random(500) < 0.4:
        delay += 1
        alarm = det.update(bool(x))
        if alarm:
            break
    assert alarm is not None and delay < 100 and alarm.recent_rate < 0.7


def test_detector_reset_uses_history_and_reference() -> None:
    det = SuccessDropDetector(arl0=500, min_drop=0.2, reference_grasps=20)
    det.reset(history=[True] * 30)
    assert not det.calibrating and det.design is not None and det.design.p0 > 0.9
    det.reset(reference=0.5)
    assert det.design is not None and det.design.p0 == 0.5
    det.reset()
    assert det.calibrating


# -- lifecycle ----------------------------------------------------------------------------------
def test_lifecycle_full_cycle_and_probation_rollback() -> None:
    # one job per change and probation (rounds and the race off: tests/agent/test_rounds.py)
    one_shot = RoundsConfig(enabled=False, race=False)
    s = lc.State(lc.Phase.SERVING, "base", "p0", explore_target=3, rounds_cfg=one_shot)
    s, eff = lc.step(s, lc.MarkCondition("glare", "lamp"))
    assert s.phase is lc.Phase.EXPLORING and eff == [lc.NewCondition("glare", "lamp", "operator")]
    for _ in range(2):
        s, eff = lc.step(s, lc.GraspDone(False))
        assert eff == []
    s, eff = lc.step(s, lc.GraspDone(True))
    assert s.phase is lc.Phase.TRAINING and eff[0] == lc.SubmitJob("glare", "p0")
    assert [type(e) for e in eff[1:]] == [lc.Report]  # "round 1 started"
    s, _ = lc.step(s, lc.JobSubmitted(7))
    with pytest.raises(lc.LifecycleError):
        lc.step(s, lc.Finetune())
    s = replace(s, good=("p0",))
    s, eff = lc.step(s, lc.PolicyReady("p1", 7))
    assert (s.phase, s.policy, s.probation_parent) == (lc.Phase.SERVING, "p1", "p0")
    assert s.last_good == "p0" and s.fallback == "p0"
    s2, eff = lc.step(s, lc.ProbationFailed("worse"))
    assert s2.policy == "p0" and s2.condition == "glare" and s2.probation_parent is None
    assert eff == [
        lc.RejectPolicy("p1", "worse"),
        lc.SwapPolicy("p0", "probation_failed"),
        lc.RaiseAlarm("probation_failed", "policy p1 taken out of service (worse); back to p0"),
    ]
    s3, eff = lc.step(s, lc.ProbationPassed())
    assert s3.good == ("p0", "p1") and s3.last_good == "p1" and s3.fallback == "p0" and eff == []
    assert lc.State.from_dict(json.loads(json.dumps(s3.to_dict()))) == s3


def test_lifecycle_policy_fault_lands_on_last_good_never_on_a_rejected_one() -> None:
    s = lc.State(lc.Phase.SERVING, "base", "p2", good=("p0", "p1", "p2"))
    s, eff = lc.step(s, lc.PolicyFault("p2", "non_finite_q"))
    assert s.policy == "p1" and s.good == ("p0", "p1")
    assert [type(e) for e in eff] == [lc.RejectPolicy, lc.SwapPolicy, lc.RaiseAlarm]
    assert eff[2] == lc.RaiseAlarm(
        "policy_fault", "policy p2 taken out of service (non_finite_q); back to p1"
    )
    s, eff = lc.step(s, lc.PolicyFault("p0", "reload failed"))  # the fallback, not active
    assert (
        s.policy == "p1" and s.good == ("p1",) and eff == [lc.RejectPolicy("p0", "reload failed")]
    )
    s, eff = lc.step(s, lc.PolicyFault("p1", "over_budget"))
    assert s.policy is None and s.good == ()  # nothing good left: not actuating, never a bad one
    assert isinstance(eff[-1], lc.RaiseAlarm) and "not actuating" in eff[-1].reason


def test_lifecycle_promote_is_on_probation_rollback_is_trusted() -> None:
    s = lc.State(lc.Phase.SERVING, "base", None)
    s, _ = lc.step(s, lc.Promote("p0"))  # the first policy: nothing to compare with
    assert s.good == ("p0",) and s.probation_parent is None
    s, _ = lc.step(s, lc.Promote("p1"))
    assert s.probation_parent == "p0" and s.good == ("p0",)
    s, _ = lc.step(s, lc.Rollback("p0"))
    assert s.policy == "p0" and s.probation_parent is None and s.good == ("p0",)


@pytest.mark.parametrize(
    "name", ["x/../../outside", "../x", "a b", "", ".hidden", "a" * 65, "a..b"]
)
def test_condition_names_that_could_leave_data_dir_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        lc.check_condition_name(name)
    with pytest.raises(lc.LifecycleError):
        lc.step(lc.State(lc.Phase.SERVING, "base", "p0"), lc.MarkCondition(name))
    lc.check_condition_name("harsh-light_2.b")


# -- probation -----------------------------------------------------------------------------------
def test_probation_false_rollback_rate_and_bounded_length_exact() -> None:
    for p0 in (0.5, 0.7, 0.86, 0.95):
        d = design_probation(p0, 0.15, alpha=0.05, beta=0.1, max_grasps=200)
        same = operating_characteristic(d, d.p0)
        worse = operating_characteristic(d, d.p1)
        assert same.p_fail <= 0.05  # the stated false-rollback rate
        assert worse.p_fail >= 0.85 and worse.mean_grasps < 60
        assert operating_characteristic(d, max(d.p0 - 0.3, 0.01)).p_fail > 0.99


def test_probation_test_matches_its_exact_characteristic() -> None:
    d = design_probation(0.8, 0.15, alpha=0.05, beta=0.1, max_grasps=100)
    rng = np.random.default_rng(0)
    fails = 0
    runs = 2000
    for _ in range(runs):
        t = ProbationTest(d)
        while t.verdict is None:
            t.update(bool(rng.random() < 0.65))
        assert t.grasps <= d.max_grasps
        fails += t.verdict == "fail"
    assert fails / runs == pytest.approx(operating_characteristic(d, 0.65).p_fail, abs=0.03)


def test_lifecycle_alarm_marks_or_alerts() -> None:
    s = lc.State(lc.Phase.SERVING, "base", "p0")
    s2, eff = lc.step(s, lc.Alarm(auto_mark=False))
    assert s2 == s and isinstance(eff[0], lc.RaiseAlarm)
    s3, eff = lc.step(s, lc.Alarm(auto_mark=True, new_condition="auto-1"))
    assert s3.phase is lc.Phase.EXPLORING and s3.condition == "auto-1"
    # a second drop while exploring: the world changed again, explore afresh
    s4, eff = lc.step(replace(s3, explored=150), lc.Alarm(auto_mark=True, new_condition="auto-2"))
    assert (s4.phase, s4.condition, s4.explored) == (lc.Phase.EXPLORING, "auto-2", 0)
    assert "again while exploring" in eff[0].reason and isinstance(eff[1], lc.NewCondition)
    # while training the job goes on: alert only
    s5 = replace(s3, phase=lc.Phase.TRAINING, job=7)
    s6, eff = lc.step(s5, lc.Alarm(auto_mark=True, new_condition="auto-3"))
    assert s6 == s5 and len(eff) == 1 and "while training" in eff[0].reason


def test_lifecycle_rejects_illegal_events() -> None:
    s = lc.State(lc.Phase.SERVING, "base", "p0")
    with pytest.raises(lc.LifecycleError):
        lc.step(s, lc.MarkCondition("base"))
    with pytest.raises(lc.LifecycleError):
        lc.step(s, lc.PolicyReady("p1"))
    with pytest.raises(lc.LifecycleError):
        lc.step(s, lc.Promote("p0"))
    with pytest.raises(lc.LifecycleError):
        lc.step(lc.State(lc.Phase.SERVING, "base", None), lc.Finetune())


def test_outcome_watch_probation_then_detector() -> None:
    from agent.config import DetectorConfig, ProbationConfig
    from agent.watch import OutcomeWatch

    w = OutcomeWatch(DetectorConfig(reference_grasps=20), ProbationConfig(max_grasps=100))
    assert w.start_probation([True] * 90 + [False] * 10, []) is None  # parent at ~0.9
    verdict = None
    for _ in range(100):  # the child fails every grasp: rolled back within a few
        if (verdict := w.update(False)) is not None:
            break
    assert verdict is not None and verdict.kind == "fail" and verdict.details["grasps"] <= 10
    assert w.probation is None and w.snapshot()[1] is None
    # a restart mid-probation replays the child's record and decides at once
    j = w.start_probation([True] * 90 + [False] * 10, [False] * 10)
    assert j is not None and j.kind == "fail"
    skipped = w.start_probation([], [])
    assert skipped is not None and skipped.kind == "pass"
    assert "no parent" in skipped.details["skipped"]


def test_an_improved_job_row_from_before_the_result_column_still_names_its_result() -> None:
    """Regression (review of the carve): restart recovery of a job left at ``improved`` reads
    ``result_policy_id``, which rows written by the older daemon leave empty: their result's
    id is in the detail, and without it the daemon would wait in TRAINING for good."""
    import dataclasses
    import json

    from agent.jobs import JobRow, JobStatus

    old = JobRow(1, 1, "p", JobStatus.IMPROVED, "/x", "", json.dumps({"bundle_id": "0" * 16}))
    assert old.result_id() == "0" * 16
    assert dataclasses.replace(old, result_policy_id="f" * 16).result_id() == "f" * 16
    assert dataclasses.replace(old, detail="not json").result_id() == ""
    assert dataclasses.replace(old, detail="[1]").result_id() == ""
