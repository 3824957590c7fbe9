"""The bridge server library: put a robot behind the bridge protocol in a few dozen lines.

An integrator writes a :class:`Robot` (``observe``, ``grasp``, ``home``; optionally
``stop``, ``shuffle``, ``reset``) and runs ``BridgeServer(robot, spec, cfg).run(stop)``.
The library owns the wire: a ROUTER socket on the calling thread, the robot's
callbacks on one worker thread (the robot does one thing at a time), heartbeats
while a callback runs, error replies, and execute request-id dedup (a retried
execute is answered from the cache, or attached to the grasp still running,
never run twice). ``RobotUnavailable`` from a callback tells the agent the robot
refuses for now (e-stop, fault); any other exception is an ``internal`` error
and the arm is sent home.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import zmq

from agent.driver import GraspOutcome, Observation, StepResult
from agent.spec import Spec
from agent.wire import Message, WireError, decode
from drivers.bridge import protocol as proto
from drivers.bridge.config import BridgeServerConfig
from plumbing.curve import Security
from plumbing.router import waiting

log = logging.getLogger(__name__)

ZAP_DOMAIN = "robot-bridge"
"""ZAP domain of the bridge socket; agent keys are only accepted in it."""


class RobotUnavailable(Exception):
    """Raised by a Robot callback when the robot refuses for now (e-stop, fault, no power)."""


@dataclass(frozen=True)
class Grasp:
    """One grasp to carry out, in the cell frame and as the agent's normalised action."""

    x_m: float
    """Grasp centre x, metres."""
    y_m: float
    """Grasp centre y, metres."""
    yaw_rad: float
    """Gripper yaw about the vertical, radians."""
    action: npt.NDArray[np.float32]
    """The clipped normalised action the metric values came from."""


class Robot(Protocol):
    """What an integrator supplies. Callbacks run on one worker thread, one at a time.

    Optional methods, found by name: ``stop()`` (safe stop; may be called from the
    socket thread while a grasp runs, so it must be thread-safe), ``shuffle()`` and
    ``reset(seed: int | None)``.
    """

    def observe(self) -> npt.NDArray[np.uint8] | Observation:
        """The current RGB image of the spec's shape (or an Observation with its timestamp)."""
        ...

    def grasp(self, grasp: Grasp) -> GraspOutcome:
        """Move, close, lift and sense; return how it went. Raise RobotUnavailable to refuse."""
        ...

    def home(self) -> None:
        """Bring the arm to its resting pose, out of the camera's view."""
        ...


_Fn = Callable[[], tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]]
"""A job body: returns the reply's result fields and arrays."""


@dataclass
class _Job:
    """A request running on the worker."""

    op: str
    req_id: str
    fn: _Fn
    waiters: list[bytes] = field(default_factory=list)
    started: float = 0.0


class BridgeServer:
    """Serves one Robot over the bridge protocol. ``run(stop)`` blocks until ``stop`` is set."""

    def __init__(self, robot: Robot, spec: Spec, cfg: BridgeServerConfig | None = None) -> None:
        self.robot = robot
        self.spec = spec
        self.cfg = cfg or BridgeServerConfig()
        self.session = uuid.uuid4().hex
        self.endpoint = self.cfg.endpoint
        self.ready = threading.Event()
        self.executed = 0
        """Execute requests actually run on the robot (dedup makes this <= requests)."""
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._wake_rx: zmq.Socket[bytes] | None = None
        self._wake_tx: zmq.Socket[bytes] | None = None
        self._security = Security(self.cfg, ZAP_DOMAIN)
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._done: queue.Queue[tuple[_Job, list[bytes]]] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._current: _Job | None = None
        self._cache: collections.OrderedDict[str, list[bytes]] = collections.OrderedDict()
        self._last_beat = 0.0
        self._poller = zmq.Poller()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> str:
        """Bind the socket and start the worker; returns the resolved endpoint."""
        if self._sock is not None:
            return self.endpoint
        self._ctx = zmq.Context()
        self._security.start(self._ctx)
        s = self._ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.MAXMSGSIZE, self.cfg.max_message_bytes)
        self._sock = s
        self.endpoint = self._security.bind(s, self.cfg.endpoint, "endpoint")
        addr = f"inproc://bridge-wake-{self.session}"
        self._wake_rx = self._ctx.socket(zmq.PAIR)
        self._wake_rx.bind(addr)
        self._wake_tx = self._ctx.socket(zmq.PAIR)
        self._wake_tx.connect(addr)
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        self._poller.register(self._wake_rx, zmq.POLLIN)
        self._worker = threading.Thread(target=self._work, name="bridge-robot", daemon=True)
        self._worker.start()
        self.ready.set()
        log.info("bridge %s serving on %s", self.cfg.robot_id, self.endpoint)
        return self.endpoint

    def run(self, stop: threading.Event) -> None:
        """Start, serve until ``stop`` is set, then close (the current callback finishes first)."""
        self.start()
        try:
            while not stop.is_set():
                self.serve_once(100)
        finally:
            self.close()

    def close(self) -> None:
        """Stop the worker (after its current callback) and release the sockets. Idempotent."""
        if self._worker is not None:
            self._jobs.put(None)
            self._worker.join(timeout=30)
            self._worker = None
        for s in (self._sock, self._wake_rx, self._wake_tx):
            if s is not None:
                s.close(0)
        self._sock = self._wake_rx = self._wake_tx = None
        self._security.stop()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    # -- the socket loop -------------------------------------------------------------------
    def serve_once(self, timeout_ms: int) -> None:
        """Wait up to ``timeout_ms`` for traffic; answer requests, finished jobs, heartbeats."""
        assert self._sock is not None and self._wake_rx is not None
        wait = timeout_ms
        if self._current is not None:
            due = self._last_beat + self.cfg.heartbeat_s - time.monotonic()
            wait = max(0, min(wait, int(due * 1000)))
        ready = dict(self._poller.poll(wait))
        if self._wake_rx in ready:
            while self._wake_rx.poll(0):
                self._wake_rx.recv()
        self._finish_jobs()
        if self._sock in ready:
            for frames in waiting(self._sock):
                self._on_frames(frames)
        self._beat()

    def _send(self, ident: bytes, frames: list[bytes]) -> None:
        assert self._sock is not None
        try:
            self._sock.send_multipart([ident, *frames], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("could not send to a client: %s", exc)

    def _beat(self) -> None:
        job = self._current
        now = time.monotonic()
        if job is None or now - self._last_beat < self.cfg.heartbeat_s:
            return
        self._last_beat = now
        frames = proto.heartbeat(job.req_id, job.op, now - job.started)
        for ident in job.waiters:
            self._send(ident, frames)

    def _finish_jobs(self) -> None:
        while True:
            try:
                job, reply = self._done.get_nowait()
            except queue.Empty:
                return
            if job.op == "execute":
                self._cache[job.req_id] = reply
                while len(self._cache) > self.cfg.dedup_size:
                    self._cache.popitem(last=False)
            for ident in job.waiters:
                self._send(ident, reply)
            if self._current is job:
                self._current = None

    def _on_frames(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            return
        ident, body = frames[0], frames[1:]
        if body and body[0] == b"":
            body = body[1:]  # a REQ client's delimiter; DEALER is the documented client
        try:
            msg = decode(body, max_bytes=self.cfg.max_message_bytes)
        except WireError as exc:
            self._send(ident, proto.error_reply(None, exc.code, exc.message))
            return
        req_id = msg.header.get("id")
        if not isinstance(req_id, str) or not req_id:
            self._send(ident, proto.error_reply(None, "bad_request", "request needs a string id"))
            return
        try:
            self._dispatch(ident, req_id, msg)
        except Exception as exc:  # a bug here must not kill the bridge
            log.exception("bridge request %s failed", msg.type)
            self._send(ident, proto.error_reply(req_id, "internal", f"{type(exc).__name__}: {exc}"))

    def _dispatch(self, ident: bytes, req_id: str, msg: Message) -> None:
        op = msg.type
        if op not in proto.OPERATIONS:
            self._send(ident, proto.error_reply(req_id, "bad_request", f"unknown type {op!r}"))
            return
        if op == "hello":
            self._send(ident, self._hello(req_id, msg))
            return
        if op == "heartbeat":
            busy = self._current.op if self._current else None
            self._send(ident, proto.ok_reply(req_id, {"busy": busy, "session": self.session}))
            return
        if op == "execute" and req_id in self._cache:
            self._send(ident, self._cache[req_id])  # a retry: never run twice
            return
        cur = self._current
        if op == "execute" and cur is not None and cur.req_id == req_id:
            cur.waiters.append(ident)  # a retry of the grasp still running: attach to it
            return
        if msg.header.get("session") != self.session:
            self._send(
                ident,
                proto.error_reply(
                    req_id, "stale_session", f"this bridge's session is {self.session}; say hello"
                ),
            )
            return
        if op == "stop":
            self._stop(ident, req_id)
            return
        if cur is not None:
            self._send(ident, proto.error_reply(req_id, "busy", f"the robot is running {cur.op}"))
            return
        try:
            fn = self._job_fn(op, msg)
        except ValueError as exc:
            code = "bad_action" if op == "execute" else "bad_request"
            self._send(ident, proto.error_reply(req_id, code, str(exc)))
            return
        if fn is None:
            self._send(ident, proto.error_reply(req_id, "unsupported", f"no {op} on this robot"))
            return
        job = _Job(op, req_id, fn, [ident], time.monotonic())
        self._current = job
        self._last_beat = job.started
        self._jobs.put(job)

    def _hello(self, req_id: str, msg: Message) -> list[bytes]:
        theirs = msg.header.get("protocol")
        if theirs != proto.PROTOCOL_VERSION:
            return proto.error_reply(
                req_id,
                "bad_protocol",
                f"agent speaks protocol {theirs!r}, bridge speaks {proto.PROTOCOL_VERSION}",
            )
        caps = [op for op in proto.OPTIONAL_OPERATIONS if callable(getattr(self.robot, op, None))]
        return proto.ok_reply(
            req_id,
            {
                "protocol": proto.PROTOCOL_VERSION,
                "robot_id": self.cfg.robot_id,
                "session": self.session,
                "spec": self.spec.to_dict(),
                "capabilities": caps,
                "heartbeat_s": self.cfg.heartbeat_s,
                "busy": self._current.op if self._current else None,
            },
        )

    def _stop(self, ident: bytes, req_id: str) -> None:
        stop = getattr(self.robot, "stop", None)
        if callable(stop):
            try:
                stop()  # thread-safe by contract: it may interrupt a running grasp
            except Exception as exc:
                log.exception("robot stop failed")
                self._send(ident, proto.error_reply(req_id, "internal", f"stop failed: {exc}"))
                return
            self._send(ident, proto.ok_reply(req_id, {"stopped": True}))
            return
        if self._current is not None:
            self._send(ident, proto.ok_reply(req_id, {"stopped": False, "busy": self._current.op}))
            return
        job = _Job("stop", req_id, self._home_fn, [ident], time.monotonic())
        self._current = job
        self._last_beat = job.started
        self._jobs.put(job)

    # -- jobs (built here, run on the worker) -------------------------------------------------
    def _job_fn(self, op: str, msg: Message) -> _Fn | None:
        """The callable a request runs on the worker; ValueError on bad fields, None if absent."""
        if op == "observe":
            return self._observe_fn
        if op == "home":
            return self._home_fn
        if op == "execute":
            return self._execute_fn(proto.parse_action(msg, self.spec))
        fn = getattr(self.robot, op, None)
        if not callable(fn):
            return None
        args: tuple[Any, ...] = ()
        if op == "reset":
            seed = msg.header.get("seed")
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
                raise ValueError(f"reset seed must be an integer or null, got {seed!r}")
            args = (seed,)

        def call() -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
            fn(*args)
            return {}, {}

        return call

    def _observe_fn(self) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
        got = self.robot.observe()
        obs = got if isinstance(got, Observation) else Observation(got, 0, time.time())
        image = np.ascontiguousarray(obs.image)
        try:
            self.spec.check_image(image)
        except ValueError as exc:
            raise RuntimeError(f"robot observe(): {exc}") from exc
        return proto.observation_result(Observation(image, obs.step, obs.timestamp))

    def _home_fn(self) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
        self.robot.home()
        return {}, {}

    def _execute_fn(self, action: npt.NDArray[np.float32]) -> _Fn:
        def run() -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
            x, y, yaw = self.spec.to_metric(action)
            t0 = time.monotonic()
            self.executed += 1
            out = self.robot.grasp(Grasp(x, y, yaw, action))
            if not isinstance(out, GraspOutcome):
                raise RuntimeError(f"robot grasp() returned {type(out).__name__}, not GraspOutcome")
            res = StepResult(
                reward=1.0 if out.success else 0.0,
                done=True,
                outcome=out,
                duration_s=time.monotonic() - t0,
            )
            return proto.step_result(res), {}

        return run

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                result, arrays = job.fn()
                reply = proto.ok_reply(job.req_id, result, arrays)
            except RobotUnavailable as exc:
                reply = proto.error_reply(job.req_id, "unavailable", str(exc) or "robot refuses")
            except Exception as exc:
                log.exception("robot %s failed", job.op)
                reply = proto.error_reply(job.req_id, "internal", f"{type(exc).__name__}: {exc}")
                if job.op == "execute":
                    self._safe_home()
            self._done.put((job, reply))
            assert self._wake_tx is not None
            self._wake_tx.send(b"")

    def _safe_home(self) -> None:
        try:
            self.robot.home()
        except Exception:
            log.exception("robot home after a failed grasp failed too")
