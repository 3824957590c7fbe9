"""sd_notify from the protocol: datagrams to $NOTIFY_SOCKET, watchdog pings rate-limited."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from plumbing.sd_notify import Notifier


def test_notifier_abstract_namespace() -> None:
    name = f"robot-agent-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    n = Notifier(env={"NOTIFY_SOCKET": "@" + name})
    n.ready("hello")
    n.ready("twice")  # READY=1 only once
    n.status("x")
    assert sock.recv(1024).decode().split("\n")[0] == "READY=1"
    assert sock.recv(1024).decode() == "STATUS=x"
    n.close()
    sock.close()
    assert not Notifier(env={}).send(READY="1")


def test_watchdog_pings_at_half_the_interval_of_its_own_pid(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(1)
    now = [0.0]
    env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    n = Notifier(env=env, clock=lambda: now[0])
    assert n.watchdog_interval_s == 1.0
    for t in (0.0, 0.5, 0.99, 1.0, 1.5, 2.2):
        now[0] = t
        n.watchdog()
    pings = []
    sock.setblocking(False)
    while True:
        try:
            pings.append(sock.recv(64))
        except BlockingIOError:
            break
    assert pings == [b"WATCHDOG=1"] * 3  # at 0.0, 1.0 and 2.2
    n.close()
    sock.close()
    other = Notifier(env={**env, "WATCHDOG_PID": "1"})
    assert other.watchdog_interval_s == 0.0  # the watchdog is another process's
