"""The daemon without a trainer (``robot-agent run`` with no ``[trainer] endpoint``): what
mark-condition says will happen, the lifecycle back to serving once the exploration is
exported, and a configured bundle path that does not exist refused at start."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import cli
from testkit.daemon import Running, wait_match

REPO = Path(__file__).resolve().parents[2]


def test_mark_condition_without_trainer_says_so_and_returns_to_serving(
    start_daemon: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.cli")
    r = start_daemon(lifecycle={"exploration_grasps": 5})
    assert cli._attach_trainer_link(r.daemon, r.cfg) is None  # no endpoint: no link
    sub = r.subscriber()
    rep = r.ctl("mark-condition", name="glare")
    assert rep["ok"], rep
    then = rep["result"]["then"]
    assert "explores 5 grasps" in then and "no fine-tune job can be sent" in then
    kept = wait_match(sub, "agent.job", lambda d: d["status"] == "kept")
    assert Path(kept["detail"]["export"]).is_dir()
    st = r.wait_for(lambda s: s["phase"] == "serving" and s["job"] is None)
    assert st["condition"] == "glare"
    assert any("no fine-tune job is sent" in m for m in caplog.messages)
    # a second condition explores again rather than sitting in training
    assert r.ctl("mark-condition", name="glare2")["ok"]
    wait_match(sub, "agent.job", lambda d: d["status"] == "kept" and d["job"] != kept["job"])
    r.wait_for(lambda s: s["phase"] == "serving" and s["condition"] == "glare2")


def test_missing_bundle_path_fails_at_start_even_with_an_earlier_runs_state(
    start_daemon: Callable[..., Running], tmp_path: Path
) -> None:
    r = start_daemon()  # an earlier run: its grasp log records an active policy
    r.wait_for(lambda s: s["grasps"] >= 2)
    data_dir = r.cfg.agent.data_dir
    r.daemon.request_stop()
    r.thread.join(30)
    missing = tmp_path / "no-such-bundle"
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'[agent]\ndata_dir = "{data_dir}"\n[driver]\ntype = "sim"\n'
        f'[policy]\nbundle = "{missing}"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 2, done.stderr
    assert "policy.bundle" in done.stderr and "does not exist" in done.stderr
