"""The sim bridge as its own process, on a free loopback port."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from testkit.net import free_port

__all__ = ["SimBridgeProcess", "free_port"]

ROOT = Path(__file__).resolve().parents[1]


class SimBridgeProcess:
    """``robot-sim bridge`` in a subprocess on a fixed port (restartable on the same port)."""

    def __init__(self, port: int, *args: str) -> None:
        self.port = port
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.args = args
        self.proc: subprocess.Popen[str] | None = None
        self.output = ""

    def start(self, timeout: float = 30.0) -> SimBridgeProcess:
        cmd = [sys.executable, "-m", "drivers.sim.cli", "bridge", "--endpoint", self.endpoint]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [*cmd, *self.args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if "serving" in line:
                return self
            if not line and self.proc.poll() is not None:
                break
        raise AssertionError(f"sim bridge did not start (rc={self.proc.poll()})")

    def kill(self) -> None:
        """SIGKILL: the bridge vanishes mid-whatever, like a crashed robot computer."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit status (its last lines in ``self.output``)."""
        assert self.proc is not None and self.proc.stdout is not None
        self.proc.terminate()
        rc = self.proc.wait(10)
        self.output = self.proc.stdout.read()
        self.proc = None
        return rc

    def executed(self) -> int:
        """Grasps the stopped bridge ran, from its exit line."""
        for line in self.output.splitlines():
            if line.startswith("robot-sim bridge: executed "):
                return int(line.split()[3])
        raise AssertionError(f"no executed line in {self.output!r}")
