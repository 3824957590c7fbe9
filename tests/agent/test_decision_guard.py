"""The decision guard (a deadline on each decision) and Policy.abort on a real hanging graph."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agent.bundle import validate_bundle
from agent.cem import CemParams
from agent.config import PolicyConfig
from agent.decision_guard import EXIT_HUNG, DecisionGuard, read_marker
from agent.policy import PolicyFault, load_policy
from testkit.fakes import hang_on_white_bundle

pytestmark = pytest.mark.timeout(60)
WHITE = np.full((64, 64, 3), 255, np.uint8)


class Slow:
    """An Abortable whose decision lasts until aborted (or ``ignore`` says to ignore that)."""

    def __init__(self, ignore: bool = False) -> None:
        self.id = "p-slow"
        self.ignore = ignore
        self.stop = threading.Event()
        self.aborts = 0

    def abort(self) -> None:
        self.aborts += 1
        if not self.ignore:
            self.stop.set()


def _guard(tmp: Path, feeds: list[float], exits: list[int], **kw: float) -> DecisionGuard:
    g = DecisionGuard(
        tmp / "deciding.json",
        kw.get("deadline_s", 0.4),
        kw.get("grace_s", 0.3),
        lambda: feeds.append(time.monotonic()),
        tick_s=0.02,
        exit_process=exits.append,
    )
    g.start()
    return g


def test_decision_past_deadline_is_aborted_and_marker_cleared(tmp_path: Path) -> None:
    feeds: list[float] = []
    exits: list[int] = []
    g = _guard(tmp_path, feeds, exits)
    pol = Slow()
    seen_marker = []
    try:
        t0 = time.monotonic()
        with g.deciding(pol):
            while not pol.stop.wait(0.01):
                if g.marker.exists():
                    seen_marker.append(read_marker(g.marker))
        took = time.monotonic() - t0
    finally:
        g.close()
    assert pol.aborts == 1 and g.aborted == 1 and exits == []
    assert 0.35 <= took < 2.0
    assert seen_marker and seen_marker[0] is not None and seen_marker[0]["policy"] == "p-slow"
    assert not g.marker.exists()  # the decision ended: nothing left for the next start
    assert len(feeds) >= 5  # the watchdog was fed while the decision ran


def test_fast_decisions_write_nothing_and_are_never_aborted(tmp_path: Path) -> None:
    feeds: list[float] = []
    exits: list[int] = []
    g = _guard(tmp_path, feeds, exits)
    pol = Slow()
    try:
        for _ in range(200):
            with g.deciding(pol):
                time.sleep(0.002)
    finally:
        g.close()
    assert pol.aborts == 0 and exits == [] and not g.marker.exists()


def test_aborted_decision_that_never_returns_ends_the_process_leaving_the_marker(
    tmp_path: Path,
) -> None:
    feeds: list[float] = []
    exits: list[int] = []
    g = _guard(tmp_path, feeds, exits)
    pol = Slow(ignore=True)
    done = threading.Event()

    def decide() -> None:
        with g.deciding(pol):
            done.wait(10)

    th = threading.Thread(target=decide, daemon=True)
    th.start()
    deadline = time.monotonic() + 5
    while not exits and time.monotonic() < deadline:
        time.sleep(0.02)
    marker = read_marker(g.marker)
    done.set()
    th.join(5)
    g.close()
    assert exits == [EXIT_HUNG] and pol.aborts == 1
    assert marker is not None and marker["policy"] == "p-slow"


def test_a_stopped_process_does_not_count_its_pause(tmp_path: Path) -> None:
    """A long gap between two ticks (SIGSTOP, a suspended VM) adds at most four ticks."""
    g = DecisionGuard(
        tmp_path / "m.json", 1.0, 1.0, lambda: None, tick_s=0.02, exit_process=lambda c: None
    )
    pol = Slow()
    g.start()
    try:
        with g.deciding(pol):
            time.sleep(0.1)
            # block the guard thread itself for 1.5 s, as a stop of the whole process would
            with g._lock:
                time.sleep(1.5)
            time.sleep(0.1)
    finally:
        g.close()
    assert pol.aborts == 0  # 1.7 s wall, but only ~0.3 s of it active


def test_policy_abort_ends_a_hanging_onnx_decision_as_hung(tmp_path: Path) -> None:
    bundle = validate_bundle(hang_on_white_bundle(tmp_path / "b"), run_inference=False)
    pol = load_policy(bundle, PolicyConfig(warmup_runs=1), CemParams())
    assert 0.0 <= pol.act(np.full((64, 64, 3), 128, np.uint8)).q <= 1.0  # fine on grey
    threading.Timer(0.3, pol.abort).start()
    t0 = time.monotonic()
    with pytest.raises(PolicyFault) as err:
        pol.act(WHITE)
    assert err.value.reason == "hung" and time.monotonic() - t0 < 5.0
    with pytest.raises(PolicyFault) as again:  # never trusted again, even on a fine image
        pol.act(np.full((64, 64, 3), 128, np.uint8))
    assert again.value.reason == "hung"
