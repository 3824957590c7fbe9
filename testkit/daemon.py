"""The daemon in this process: a :class:`Daemon` on the fake driver in a thread, with real
loopback sockets and SQLite, its config, and a subscriber on its events."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from agent.cli import _attach_trainer_link
from agent.config import AgentConfig, config_from_dict
from agent.ctl import request
from agent.daemon import Daemon
from agent.link import TrainerLink
from agent.wire import decode
from testkit.fakes import FakeDriver


@dataclass
class Running:
    """A daemon running on a thread (see :func:`start_in_thread`) and what it was built from."""

    daemon: Daemon
    driver: FakeDriver
    cfg: AgentConfig
    thread: threading.Thread
    result: list[int]

    def ctl(self, command: str, timeout_s: float = 10.0, **args: str) -> dict[str, Any]:
        return request(self.daemon.endpoints["commands"], command, args, timeout_s=timeout_s)

    def wait_for(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 20.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            st: dict[str, Any] = self.ctl("status")["result"]
            if pred(st):
                return st
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not reached; last status {st}")
            time.sleep(0.02)

    def subscriber(self) -> Subscriber:
        return Subscriber(self.daemon.endpoints["events"])


class Subscriber:
    """SUB socket on the daemon's events; waits for a topic."""

    def __init__(self, endpoint: str) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"agent.")
        self.sock.connect(endpoint)
        self.seen: list[tuple[str, dict[str, Any]]] = []
        time.sleep(0.2)  # let the subscription reach the PUB socket

    def wait(self, topic: str, timeout: float = 20.0) -> dict[str, Any]:
        for t, d in self.seen:
            if t == topic:
                return d
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sock.poll(100):
                frames = self.sock.recv_multipart()
                msg = decode(frames[1:])
                assert msg.type == "event" and msg.header["topic"] == frames[0].decode()
                self.seen.append((frames[0].decode(), msg.header["data"]))
                if frames[0].decode() == topic:
                    return dict(msg.header["data"])
        raise AssertionError(f"no {topic} event; saw {[t for t, _ in self.seen]}")

    def close(self) -> None:
        self.sock.close(0)


def agent_config(tmp_path: Path, bundle: Path | None, **over: dict[str, Any]) -> AgentConfig:
    """A test config: data under ``tmp_path/data``, ephemeral loopback ports, a 30-grasp
    reference, ``over`` merged into its tables."""
    raw: dict[str, Any] = {
        "agent": {"data_dir": str(tmp_path / "data"), "idle_sleep_s": 0.01},
        "policy": {"bundle": str(bundle) if bundle else "", "warmup_runs": 1},
        "sockets": {"command_endpoint": "tcp://127.0.0.1:*", "event_endpoint": "tcp://127.0.0.1:*"},
        "detector": {"reference_grasps": 30, "arl0": 200.0, "min_drop": 0.3},
        "lifecycle": {"exploration_grasps": 1000},
    }
    for k, v in over.items():
        raw.setdefault(k, {}).update(v)
    return config_from_dict(raw)


def start_in_thread(cfg: AgentConfig, driver: FakeDriver, ready: bool = True) -> Running:
    """Run a :class:`Daemon` on a daemon thread; return once it has bound its sockets (and,
    with ``ready``, loaded its policy). Stop it with ``daemon.request_stop()``."""
    daemon = Daemon(cfg, driver)
    result: list[int] = []
    th = threading.Thread(target=lambda: result.append(daemon.run()), daemon=True)
    th.start()
    deadline = time.monotonic() + 30
    while not daemon.endpoints.get("commands"):
        assert th.is_alive() and time.monotonic() < deadline, "daemon did not bind"
        time.sleep(0.01)
    if ready:
        assert daemon.ready.wait(30), "daemon never became ready"
    return Running(daemon, driver, cfg, th, result)


Restart = Callable[[], tuple[Daemon, threading.Thread]]
"""Starts a fresh daemon on the same config and data directory: a restart after a stop."""


def serve(daemon: Daemon, ready_s: float = 30.0) -> threading.Thread:
    """Run an already built ``daemon`` (a link attached, hooks wired) on a daemon thread and
    wait until its policy is loaded; returns the thread."""
    th = threading.Thread(target=daemon.run, daemon=True)
    th.start()
    assert daemon.ready.wait(ready_s), "daemon never became ready"
    return th


def trainer_table(endpoint: str, agent_id: str, **over: Any) -> dict[str, Any]:
    """A ``[trainer]`` table for a link on loopback: 0.2 s heartbeats, a 1 s timeout, 64 KiB
    chunks (what the trainer of :func:`testkit.trainer.write_service_config` takes)."""
    return {
        "endpoint": endpoint,
        "agent_id": agent_id,
        "heartbeat_s": 0.2,
        "timeout_s": 1.0,
        "chunk_bytes": 65536,
        **over,
    }


def linked_config(
    tmp_path: Path,
    bundle: Path,
    endpoint: str,
    agent_id: str,
    explore: int,
    link: dict[str, Any] | None = None,
    **over: dict[str, Any],
) -> AgentConfig:
    """A test config (:func:`agent_config`) for a daemon that hands its jobs to a trainer at
    ``endpoint``: ``explore`` exploration grasps per condition, the detector off (the
    conditions are marked by hand), a ``[trainer]`` table of :func:`trainer_table` with
    ``link`` merged into it."""
    return agent_config(
        tmp_path,
        bundle,
        lifecycle={"exploration_grasps": explore},
        detector={"enabled": False},
        trainer=trainer_table(endpoint, agent_id, **(link or {})),
        **over,
    )


def linked_daemon(cfg: AgentConfig, driver: FakeDriver) -> tuple[Daemon, TrainerLink]:
    """A daemon on ``driver`` with its trainer link attached as ``robot-agent run`` attaches
    it (``agent.cli._attach_trainer_link``), not yet running (:func:`serve` runs it). The
    caller closes the link after stopping the daemon."""
    daemon = Daemon(cfg, driver)
    link = _attach_trainer_link(daemon, cfg)
    assert link is not None, "the config names no trainer endpoint"
    return daemon, link


def stop_linked(daemon: Daemon, thread: threading.Thread, link: TrainerLink) -> None:
    """Stop a daemon of :func:`linked_daemon` running on ``thread`` (:func:`serve`), then
    close its link (the daemon's last job reports go through it)."""
    daemon.request_stop()
    thread.join(30)
    link.close()


def query(db: Path, sql: str, *args: Any) -> list[sqlite3.Row]:
    """Rows from the agent's grasp log, read through a connection of this thread."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    con.row_factory = sqlite3.Row
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def wait_match(
    sub: Subscriber, topic: str, pred: Callable[[dict[str, Any]], bool], timeout: float = 20.0
) -> dict[str, Any]:
    """The first event on ``topic`` (seen before or arriving within ``timeout``) matching."""
    deadline = time.monotonic() + timeout
    i = 0
    while True:
        while i < len(sub.seen):
            t, d = sub.seen[i]
            i += 1
            if t == topic and pred(d):
                return d
        if time.monotonic() > deadline:
            raise AssertionError(f"no matching {topic}; saw {[t for t, _ in sub.seen]}")
        with contextlib.suppress(AssertionError):
            sub.wait("agent.__never__", timeout=0.2)


def training_on_a_job(r: Running) -> tuple[Subscriber, int, str]:
    """Mark a condition on ``r`` and wait until its job is queued and the daemon is TRAINING
    (start it with a few exploration grasps): a subscriber on its events from before the
    mark, the job and the policy it trains from."""
    sub = r.subscriber()
    assert r.ctl("mark-condition", name="offset")["ok"]
    job = int(wait_match(sub, "agent.job", lambda d: d["status"] == "queued")["job"])
    old = str(r.wait_for(lambda s: s["phase"] == "training")["policy"])
    return sub, job, old
