"""Agent grasp log -> agent export -> trainer episode store is lossless."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.export import export_condition
from agent.grasplog import GraspLog
from agent.logrecords import GraspRecord, TransitionRecord
from agent.spec import DEFAULT_SPEC
from trainer.dataset import EpisodeDataset
from trainer.ingest import import_agent_export


def test_agent_log_converts_losslessly(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(6)]
    actions = rng.uniform(-1, 1, (6, 3)).astype(np.float32)
    with GraspLog(tmp_path / "g.db") as log:
        cid = log.add_condition("checkerboard")
        other = log.add_condition("baseline")
        for pid in ("p1", "p2"):
            log.upsert_policy(pid, "/x", "active")
        for i in range(6):
            log.log_grasp(
                GraspRecord(
                    t_start=100.0 + i,
                    t_end=101.0 + i,
                    condition_id=cid,
                    policy_id="p1" if i < 3 else "p2",
                    mode="explore",
                    success=i % 3 == 0,
                    reward=float(i % 3 == 0),
                    q=0.25 + i / 10,
                    decide_ms=1.0,
                    execute_ms=2.0,
                    sensed_by="sim_height",
                    detail={},
                    transitions=(
                        TransitionRecord(
                            0, images[i], actions[i].tolist(), float(i % 3 == 0), True
                        ),
                    ),
                )
            )
        log.log_grasp(
            GraspRecord(
                1.0,
                2.0,
                other,
                "p1",
                "serve",
                True,
                1.0,
                0.9,
                1.0,
                1.0,
                "sim_height",
                {},
                (TransitionRecord(0, images[0], [0.0, 0.0, 0.0], 1.0, True),),
            )
        )
        export_condition(log, "checkerboard", tmp_path / "export", DEFAULT_SPEC)
    assert import_agent_export(tmp_path / "export", tmp_path / "ds") == 6
    episodes = list(EpisodeDataset.open(tmp_path / "ds").episodes())
    assert len(episodes) == 6
    for i, ep in enumerate(episodes):
        assert ep.condition == "checkerboard"
        assert ep.policy_id == ("p1" if i < 3 else "p2")
        assert ep.success == (i % 3 == 0)
        assert ep.timestamp == 100.0 + i
        assert ep.extra["q"] == 0.25 + i / 10 and ep.extra["mode"] == "explore"
        (step,) = ep.steps
        assert np.array_equal(step.image, images[i])
        assert np.array_equal(step.action, actions[i])
        assert step.reward == float(i % 3 == 0) and step.done
