"""The worked example in docs/bridge.md runs: an arm (fake SDK) and a camera (a video file)."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from agent.driver import DriverUnavailable
from drivers.bridge.client import BridgeDriver
from drivers.bridge.config import BridgeClientConfig
from testkit.net import free_port

pytestmark = pytest.mark.timeout(30)
DOC = Path(__file__).resolve().parents[2] / "docs" / "bridge.md"


class FakeSdk:
    """Hardware fake: a gripper that holds something when it closes right of the centre."""

    def __init__(self) -> None:
        self.moves: list[tuple[float, ...]] = []
        self.estop = False
        self.gap = 0.0

    def estop_active(self) -> bool:
        return self.estop

    def open(self) -> None:
        self.gap = 0.08

    def close(self) -> None:
        x = self.moves[-1][0]
        self.gap = 0.02 if x > 0 else 0.0

    def move_to(self, x: float, y: float, z: float, yaw: float) -> None:
        self.moves.append((x, y, z, yaw))

    def width(self) -> float:
        return self.gap

    def halt(self) -> None:
        pass


def example_code() -> str:
    text = DOC.read_text()
    marker = text.index("executed by tests/drivers/test_bridge_docs.py")
    block = re.search(r"```python\n(.*?)```", text[marker:], re.S)
    assert block is not None
    return block.group(1)


def test_docs_worked_example_wraps_an_arm(tmp_path: Path) -> None:
    video = tmp_path / "cam.avi"
    out = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (640, 480))
    rng = np.random.default_rng(0)
    for _ in range(10):
        out.write(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    out.release()
    ns: dict[str, Any] = {}
    exec(compile(example_code(), str(DOC), "exec"), ns)
    sdk = FakeSdk()
    stop = threading.Event()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    th = threading.Thread(target=ns["serve"], args=(sdk, str(video), stop, endpoint))
    th.start()
    try:
        cfg = BridgeClientConfig(
            endpoint=endpoint, robot_id="cell-3", timeout_s=2.0, execute_timeout_s=5.0
        )
        with BridgeDriver(cfg) as d:
            assert d.observe().image.shape == (64, 64, 3)
            hit = d.execute(np.array([0.5, 0.0, 0.0], np.float32))
            miss = d.execute(np.array([-0.5, 0.0, 0.0], np.float32))
            assert hit.outcome is not None and hit.outcome.success
            assert hit.outcome.sensed_by == "gripper_width"
            assert miss.outcome is not None and not miss.outcome.success
            assert sdk.moves[-1][:3] == ns["HOME"]  # homed after each grasp
            sdk.estop = True
            with pytest.raises(DriverUnavailable, match="e-stop"):
                d.execute(np.zeros(3, np.float32))
    finally:
        stop.set()
        th.join(10)
