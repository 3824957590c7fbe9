"""The reference bridge: the sim cell behind the bridge server library (``robot-sim bridge``).

This is the shape of an integrator's bridge: a Robot with observe / grasp / home
(here plus the optional shuffle and reset), handed to ``BridgeServer``.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from agent.driver import GraspOutcome, Observation
from drivers.bridge.config import BridgeServerConfig
from drivers.bridge.server import BridgeServer, Grasp
from drivers.sim.cell import SimCell
from drivers.sim.config import SimConfig

log = logging.getLogger(__name__)


class SimRobot:
    """The sim cell as a bridge Robot (the cell homes itself after every grasp)."""

    def __init__(self, cell: SimCell) -> None:
        self.cell = cell

    def observe(self) -> Observation:
        return self.cell.observe()

    def grasp(self, grasp: Grasp) -> GraspOutcome:
        result = self.cell.execute(grasp.action)
        assert result.outcome is not None
        return result.outcome

    def home(self) -> None:
        """The cell parks the gripper at HOME after each grasp: nothing to do."""

    def shuffle(self) -> None:
        self.cell.shuffle()

    def reset(self, seed: int | None) -> None:
        self.cell.reset(seed)


def serve_sim(
    sim: SimConfig,
    server: BridgeServerConfig,
    stop: threading.Event,
) -> None:
    """Start the cell, serve it until ``stop`` is set, close everything."""
    with SimCell(sim) as cell:
        bridge = BridgeServer(SimRobot(cell), cell.spec, server)
        try:
            endpoint = bridge.start()
            print(f"robot-sim bridge: serving {server.robot_id} on {endpoint}", flush=True)
            while not stop.is_set():
                bridge.serve_once(100)
        finally:
            bridge.close()
            print(f"robot-sim bridge: executed {bridge.executed} grasps", flush=True)


def install_stop_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` (the current request finishes first)."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
