"""Grasp log (real SQLite file), dataset export, policy serving and off-thread loading."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.bundle import validate_bundle
from agent.bundle_errors import BundleError
from agent.cem import CemParams
from agent.config import CemConfig, PolicyConfig, config_from_dict
from agent.export import export_condition, load_dataset
from agent.grasplog import GraspLog
from agent.loader import PolicyLoader
from agent.logrecords import GraspRecord, TransitionRecord, decode_image, encode_image
from agent.policy import load_policy
from agent.spec import DEFAULT_SPEC
from plumbing.config_loader import ConfigError
from testkit.fakes import broken_bundle, make_bundle

pytestmark = pytest.mark.timeout(60)


def _grasp(cid: int, pid: str, ok: bool, img: np.ndarray) -> GraspRecord:
    return GraspRecord(
        t_start=1.0,
        t_end=2.0,
        condition_id=cid,
        policy_id=pid,
        mode="explore",
        success=ok,
        reward=float(ok),
        q=0.5,
        decide_ms=1.0,
        execute_ms=2.0,
        sensed_by="fake",
        detail={},
        transitions=(TransitionRecord(0, img, [0.1, -0.2, 0.3], float(ok), True),),
    )


def test_grasp_log_schema_wal_and_durability(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    with GraspLog(path) as log:
        assert log.schema_version() == 3
        assert log.db.journal_mode == "wal"
        assert log.db.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        cid = log.add_condition("base")
        log.upsert_policy("p", "/x", "active")
        img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        gid = log.log_grasp(_grasp(cid, "p", True, img))
        # visible to a second connection right away: committed before the next grasp
        other = sqlite3.connect(path)
        assert other.execute("SELECT count(*) FROM grasps").fetchone()[0] == 1
        other.close()
        log.add_event("agent.test", {"a": 1})
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            log.db.execute("UPDATE events SET topic = 'x'")
        with pytest.raises(ValueError):
            log.add_condition("base")
        blob = log.db.conn.execute(
            "SELECT image FROM transitions WHERE grasp_id=?", (gid,)
        ).fetchone()
        assert np.array_equal(decode_image(blob[0]), img)  # PNG is lossless
    with GraspLog(path) as log:  # reopen: migrations are idempotent
        assert log.count_grasps() == 1


def test_sqlite_utils_cli_reads_the_log(tmp_path: Path) -> None:
    with GraspLog(tmp_path / "g.db") as log:
        log.add_condition("base", "note")
    exe = Path(sys.executable).with_name("sqlite-utils")
    out = subprocess.run(
        [str(exe), "tables", str(tmp_path / "g.db"), "--counts"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    names = {t["table"] for t in json.loads(out)}
    assert {"conditions", "policies", "grasps", "transitions", "jobs", "events"} <= names


def test_export_condition_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    with GraspLog(tmp_path / "g.db") as log:
        a = log.add_condition("a")
        b = log.add_condition("b")
        log.upsert_policy("p", "/x", "active")
        imgs = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(5)]
        for i, img in enumerate(imgs):
            log.log_grasp(_grasp(a, "p", i % 2 == 0, img))
        log.log_grasp(_grasp(b, "p", True, imgs[0]))
        index = export_condition(log, "a", tmp_path / "ds", DEFAULT_SPEC)
    idx, arrays = load_dataset(tmp_path / "ds")
    assert idx == index and idx["transitions"] == 5 and idx["successes"] == 3
    assert arrays["images"].shape == (5, 64, 64, 3)
    assert np.array_equal(arrays["images"][3], imgs[3])
    assert arrays["actions"].dtype == np.float32 and arrays["dones"].all()
    np.load(tmp_path / "ds" / "images.npy", allow_pickle=False)


def test_image_encoding_jpg() -> None:
    img = np.full((64, 64, 3), 100, np.uint8)
    assert np.abs(decode_image(encode_image(img, "jpg")).astype(int) - 100).max() <= 2


def test_policy_split_trunk_matches_full_graph(tmp_path: Path) -> None:
    bundle = validate_bundle(make_bundle(tmp_path))
    pol = load_policy(bundle, PolicyConfig(), CemConfig())
    assert pol.split and pol.warm and pol.providers == ["CPUExecutionProvider"]
    img = np.full((64, 64, 3), 7, np.uint8)
    acts = np.random.default_rng(0).uniform(-1, 1, (64, 3)).astype(np.float32)
    np.testing.assert_allclose(pol.scorer(img)(acts), pol.q_values(img, acts), atol=1e-6)
    d = pol.act(img)
    assert d.action.shape == (3,) and np.all(np.abs(d.action) <= 1) and 0 <= d.q <= 1
    np.testing.assert_allclose(pol.q_values(img, d.action[None])[0], d.q, atol=1e-6)
    whole = load_policy(bundle, PolicyConfig(split_trunk=False), CemConfig())
    assert not whole.split
    with pytest.raises(ValueError):
        pol.act(np.zeros((32, 32, 3), np.uint8))


def test_cem_climbs_the_tiny_q(tmp_path: Path) -> None:
    bundle = validate_bundle(make_bundle(tmp_path, seed=3))
    pol = load_policy(bundle, PolicyConfig(), CemConfig(iterations=3))
    img = np.zeros((64, 64, 3), np.uint8)
    rand = pol.q_values(img, np.random.default_rng(0).uniform(-1, 1, (64, 3)).astype(np.float32))
    assert pol.act(img).q > float(np.median(rand))


def test_loader_refuses_broken_bundle_and_loads_good_one(tmp_path: Path) -> None:
    loader = PolicyLoader(tmp_path / "store", DEFAULT_SPEC, PolicyConfig(), CemConfig())
    loader.start()
    try:
        loader.submit(broken_bundle(tmp_path / "in"), "bad")
        loader.submit(make_bundle(tmp_path / "in"), "good")
        r1, r2 = loader.wait(30), loader.wait(30)
    finally:
        loader.close()
    assert r1 is not None and r1.policy is None and "outside [0, 1]" in r1.error
    assert r1.reason == "out_of_range"
    assert r2 is not None and r2.policy is not None and r2.tag == "good"
    assert (tmp_path / "store" / r2.policy.id / "model.onnx").is_file()  # kept in the store
    with pytest.raises(BundleError):
        validate_bundle(broken_bundle(tmp_path / "in2"))


def test_cem_table_builds_the_one_cem_settings_class() -> None:
    cfg = config_from_dict({"cem": {"samples": 32, "elites": 4, "seed": 7}})
    assert type(cfg.cem) is CemParams and CemConfig is CemParams
    assert (cfg.cem.samples, cfg.cem.elites, cfg.cem.iterations, cfg.cem.seed) == (32, 4, 2, 7)
    with pytest.raises(ConfigError, match=r"cem\.elites = 40"):
        config_from_dict({"cem": {"samples": 32, "elites": 40}})


def test_borderline_latency_is_judged_against_the_active_policy_measured_now(
    tmp_path: Path,
) -> None:
    """Regression: a child was refused as too_slow against the active policy's latency recorded
    at start-up, on a machine busier now than then (e2e runs on a loaded box)."""
    import dataclasses

    from agent.loader import load_bundle

    store = tmp_path / "store"
    pcfg = dataclasses.replace(PolicyConfig(), latency_floor_s=1e-9, max_latency_factor=3.0)
    cem = CemParams()
    active = load_bundle(make_bundle(tmp_path / "a", seed=1), store, DEFAULT_SPEC, pcfg, cem)
    assert active.validated_latency_s is not None
    stale = active.validated_latency_s / 100  # as if recorded on an idle machine
    child = make_bundle(tmp_path / "c", seed=2)
    with pytest.raises(BundleError) as refused:
        load_bundle(child, store, DEFAULT_SPEC, pcfg, cem, active_latency_s=stale)
    assert refused.value.reason == "too_slow"
    assert not (store / child.name).exists()
    pol = load_bundle(
        child, store, DEFAULT_SPEC, pcfg, cem, active_latency_s=stale, active_id=active.id
    )
    assert pol.id == child.name != active.id
