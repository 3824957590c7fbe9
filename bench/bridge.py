"""Round-trip latency of the robot bridge: what the wire costs per grasp.

Usage: python -m bench.bridge [--grasps N] [--calls N]

Two measurements, each against a bridge running as its own process on loopback:

1. Protocol round trip: a null robot (a fixed 64x64 image; a grasp that returns at
   once) behind the bridge server library. observe and execute round trips,
   p50/p99; their sum is the bridge's overhead per grasp (horizon 1: one observe,
   one execute).
2. The sim cell in-process (SimCell) against the same cell behind
   ``robot-sim bridge``, same seed and same actions, so grasp i runs the same
   physics on both sides; the paired per-grasp difference is the overhead with
   a real robot's work in between (noisier: the physics dominates).

Last line of stdout: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from agent.driver import Driver, GraspOutcome
from agent.spec import DEFAULT_SPEC
from drivers.bridge.client import BridgeDriver
from drivers.bridge.config import BridgeClientConfig, BridgeServerConfig
from drivers.bridge.server import BridgeServer, Grasp

ROOT = Path(__file__).resolve().parents[1]
GOAL_MS = 2.0


class NullRobot:
    """A robot that costs nothing: what is left is the bridge."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.image = rng.integers(0, 256, DEFAULT_SPEC.image_shape, dtype=np.uint8)

    def observe(self) -> npt.NDArray[np.uint8]:
        return self.image

    def grasp(self, grasp: Grasp) -> GraspOutcome:
        return GraspOutcome(grasp.x_m > 0, "null", {})

    def home(self) -> None:
        pass


def serve_null(endpoint: str) -> None:
    """Child process: the null robot behind the bridge server until stdin closes."""
    server = BridgeServer(NullRobot(), DEFAULT_SPEC, BridgeServerConfig(endpoint=endpoint))
    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    server.start()
    print("serving", flush=True)
    try:
        while not stop.is_set():
            server.serve_once(100)
    finally:
        server.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(cmd: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    while "serving" not in (line := proc.stdout.readline()):
        if not line:
            raise RuntimeError(f"{cmd} did not start")
    return proc


def pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(xs) * 1e3, q)), 4)


def protocol_round_trip(calls: int) -> dict[str, float]:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = spawn([sys.executable, __file__, "--serve-null", endpoint])
    obs_t: list[float] = []
    exe_t: list[float] = []
    grasp_t: list[float] = []
    try:
        with BridgeDriver(BridgeClientConfig(endpoint=endpoint)) as d:
            rng = np.random.default_rng(1)
            for i in range(calls + 50):
                a = rng.uniform(-1, 1, 3).astype(np.float32)
                t0 = time.perf_counter()
                d.observe()
                t1 = time.perf_counter()
                d.execute(a)
                t2 = time.perf_counter()
                if i >= 50:  # warm-up
                    obs_t.append(t1 - t0)
                    exe_t.append(t2 - t1)
                    grasp_t.append(t2 - t0)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)
    return {
        "observe_ms_p50": pct(obs_t, 50),
        "observe_ms_p99": pct(obs_t, 99),
        "execute_ms_p50": pct(exe_t, 50),
        "execute_ms_p99": pct(exe_t, 99),
        "per_grasp_ms_p50": pct(grasp_t, 50),
        "per_grasp_ms_p99": pct(grasp_t, 99),
    }


def timed_grasp(driver: Driver, action: npt.NDArray[np.float32]) -> float:
    """Seconds for one grasp (observe + execute)."""
    t0 = time.perf_counter()
    driver.observe()
    driver.execute(action)
    return time.perf_counter() - t0


def sim_comparison(grasps: int) -> dict[str, float]:
    """Grasp i on the in-process cell, then grasp i on the bridged cell, alternating.

    Same seed and actions on both sides: the same physics; alternating cancels load drift.
    """
    from drivers.sim.cell import SimCell
    from drivers.sim.config import SimConfig

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "drivers.sim.cli", "bridge", "--endpoint", endpoint]
    proc = spawn([*cmd, "--seed", "5", "--split", "test"])
    rng = np.random.default_rng(2)
    local: list[float] = []
    bridged: list[float] = []
    try:
        with (
            SimCell(SimConfig(seed=5, split="test")) as cell,
            BridgeDriver(BridgeClientConfig(endpoint=endpoint)) as d,
        ):
            for _ in range(grasps):
                a = rng.uniform(-1, 1, 3).astype(np.float32)
                local.append(timed_grasp(cell, a))
                bridged.append(timed_grasp(d, a))
    finally:
        proc.terminate()
        proc.wait(10)
    diff = [b - a for a, b in zip(local, bridged, strict=True)]
    return {
        "sim_inprocess_ms_p50": pct(local, 50),
        "sim_bridge_ms_p50": pct(bridged, 50),
        "sim_overhead_ms_p50": pct(diff, 50),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=2000, help="null-robot grasps")
    ap.add_argument("--grasps", type=int, default=200, help="sim grasps per side")
    ap.add_argument("--serve-null", metavar="ENDPOINT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_null:
        serve_null(args.serve_null)
        return
    proto = protocol_round_trip(args.calls)
    print(
        f"null robot over the bridge ({args.calls} grasps, 64x64x3 image): "
        f"observe p50 {proto['observe_ms_p50']} ms p99 {proto['observe_ms_p99']} ms; "
        f"execute p50 {proto['execute_ms_p50']} ms p99 {proto['execute_ms_p99']} ms; "
        f"per grasp p50 {proto['per_grasp_ms_p50']} ms"
    )
    sim = sim_comparison(args.grasps)
    print(
        f"sim cell ({args.grasps} grasps each): in-process p50 {sim['sim_inprocess_ms_p50']} ms, "
        f"through the bridge p50 {sim['sim_bridge_ms_p50']} ms, "
        f"paired overhead p50 {sim['sim_overhead_ms_p50']} ms"
    )
    result = {
        "bench": "bridge",
        "transport": "tcp loopback, separate process",
        "image_shape": list(DEFAULT_SPEC.image_shape),
        **proto,
        **sim,
        "goal_ms_per_grasp": GOAL_MS,
        "meets_goal": proto["per_grasp_ms_p50"] <= GOAL_MS,
        "calls": args.calls,
        "grasps": args.grasps,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
