"""BridgeDriver: the agent's Driver for a robot behind a bridge process (docs/bridge.md).

A DEALER socket, not REQ: the bridge may send several frames per request
(heartbeats while a grasp runs, then the reply), a reply that arrives after its
request timed out is dropped by id instead of jamming a REQ state machine, and
a retried execute can be sent on a fresh socket with the same request id. Every
call waits at most ``timeout_s`` of silence (a heartbeat counts as a sign of
life) and an execute at most ``execute_timeout_s`` in all; both stay below the
systemd watchdog (checked by :func:`drivers.bridge.config.check_client`).

A bridge that stops answering raises :class:`agent.driver.DriverUnavailable`:
the socket is dropped (queued requests die with it, so nothing actuates later)
and reconnection is attempted on the next call after a backoff that doubles
from ``reconnect_min_s`` to ``reconnect_max_s``; calls in between fail at once.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import zmq

from agent.driver import DriverUnavailable, Observation, StartClose, StepResult
from agent.spec import DEFAULT_SPEC, Spec
from agent.wire import Message, WireError, decode
from drivers.bridge import protocol as proto
from drivers.bridge.config import BridgeClientConfig, check_client
from drivers.camera import Camera, CameraError
from plumbing.backoff import Backoff
from plumbing.curve import ClientKeys

log = logging.getLogger(__name__)


class _Silent(Exception):
    """No reply within the allowed silence (``overran``: heartbeats came, the deadline passed)."""

    def __init__(self, overran: bool = False) -> None:
        super().__init__()
        self.overran = overran


class BridgeDriver(StartClose):
    """A :class:`agent.driver.Driver` speaking the bridge protocol to a robot-side process."""

    def __init__(
        self,
        cfg: BridgeClientConfig | None = None,
        spec: Spec = DEFAULT_SPEC,
        camera: Camera | None = None,
    ) -> None:
        """``camera``: a camera on the agent's computer that replaces the bridge's observe."""
        self.cfg = cfg or BridgeClientConfig()
        check_client(self.cfg, "driver.bridge.")
        self._spec = spec
        self.camera = camera
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._keys: ClientKeys | None = None
        self._ids = itertools.count()
        self._client = uuid.uuid4().hex[:12]
        self.session: str | None = None
        """The bridge session of the current link (None while down)."""
        self.hello: dict[str, Any] = {}
        """The bridge's last hello result (robot_id, capabilities, heartbeat_s...)."""
        self.last_error = ""
        self._backoff = Backoff(self.cfg.reconnect_min_s, self.cfg.reconnect_max_s)
        self._next_try = 0.0

    # -- Driver ------------------------------------------------------------------------------
    @property
    def spec(self) -> Spec:
        return self._spec

    def start(self) -> None:
        """Open the socket and say hello once; a bridge that is away is retried on later calls.

        Raises BridgeError when the bridge speaks another protocol, has another spec or
        another robot id than configured (a configuration error, not an outage).
        """
        if self._ctx is not None:
            return
        self._keys = ClientKeys.for_endpoint(
            "driver.bridge.endpoint",
            self.cfg.endpoint,
            self.cfg.curve_server_public,
            self.cfg.curve_client_secret,
        )
        if self.camera is not None:
            self.camera.start()  # CameraError: a missing camera is a setup error
        self._ctx = zmq.Context()
        try:
            self._connect()
        except DriverUnavailable as exc:
            log.warning("bridge not reachable yet: %s", exc)

    def observe(self) -> Observation:
        """The current image (bridge's, or the local camera's); DriverUnavailable when down."""
        if self.camera is None:
            return proto.parse_observation(self._call("observe"), self._spec)
        self._ensure_link()  # no image is worth taking while the arm is unreachable
        try:
            frame = self.camera.read()
        except CameraError as exc:
            raise DriverUnavailable(str(exc)) from exc
        return Observation(image=frame.image, step=0, timestamp=frame.timestamp)

    def execute(self, action: npt.NDArray[np.float32]) -> StepResult:
        """Run one grasp on the robot; ValueError on a bad action (nothing sent).

        DriverUnavailable when the bridge stops answering: the outcome is then unknown.
        A grasp whose heartbeats stop is asked for once more, by the same request id on a
        fresh socket, so that a lost reply is recovered without the robot grasping twice.
        """
        a = np.asarray(action, dtype=np.float32)
        if a.shape != (self._spec.action_dim,) or not np.all(np.isfinite(a)):
            raise ValueError(f"action must be {self._spec.action_dim} finite floats, got {a!r}")
        frames, rid = self._request("execute", arrays={"action": self._spec.clip_action(a)})
        deadline = time.monotonic() + self.cfg.execute_timeout_s
        try:
            msg = self._exchange(frames, rid, deadline)
        except _Silent as silent:
            if silent.overran:
                self._drop("a grasp overran execute_timeout_s")
                raise DriverUnavailable(
                    f"grasp still running after {self.cfg.execute_timeout_s} s "
                    "(execute_timeout_s); outcome unknown"
                ) from None
            session = self.session
            self._drop("bridge went silent during a grasp")
            try:
                self._connect()
            except DriverUnavailable as exc:
                raise DriverUnavailable(f"grasp outcome unknown: {exc}") from exc
            if self.session != session:
                self._drop("bridge restarted during a grasp")
                raise DriverUnavailable(
                    "bridge restarted during a grasp; outcome unknown"
                ) from None
            try:
                msg = self._exchange(frames, rid, deadline)
            except _Silent:
                self._drop("bridge silent after a retried grasp")
                raise DriverUnavailable(
                    f"bridge {self.cfg.endpoint} stopped answering; grasp outcome unknown"
                ) from None
        self._check(msg)
        return proto.parse_step_result(msg)

    def shuffle(self) -> None:
        """Stir the bin; NotImplementedError when the bridge does not offer it."""
        self._optional("shuffle")
        self._call("shuffle")

    def reset(self, seed: int | None = None) -> None:
        """Fresh bin; NotImplementedError when the bridge does not offer it."""
        self._optional("reset")
        self._call("reset", {"seed": seed})

    def home(self) -> None:
        """Send the arm to its resting pose."""
        self._call("home", timeout_s=self.cfg.execute_timeout_s)

    def ping(self) -> dict[str, Any]:
        """Ask the bridge whether it is alive and busy (answered even during a grasp)."""
        return dict(self._call("heartbeat").header["result"])

    def close(self) -> None:
        """Ask the bridge for a safe stop (best effort, short wait) and release the socket."""
        if self._ctx is None:
            return
        if self.session is not None and self._sock is not None:
            try:
                frames, rid = self._request("stop")
                self._exchange(frames, rid, time.monotonic() + min(self.cfg.timeout_s, 0.5))
            except (_Silent, DriverUnavailable, proto.BridgeError, WireError, zmq.ZMQError):
                pass
        self.session = None  # a deliberate close, not an outage: no warning
        self._drop("closed")
        if self.camera is not None:
            self.camera.close()
        self._ctx.term()
        self._ctx = None

    # -- link --------------------------------------------------------------------------------
    def _require_started(self) -> None:
        if self._ctx is None:
            raise RuntimeError("BridgeDriver not started: call start() or use it as a context")

    def _optional(self, op: str) -> None:
        self._ensure_link()
        if op not in self.hello.get("capabilities", []):
            raise NotImplementedError(f"bridge {self.hello.get('robot_id')!r} offers no {op}")

    def _ensure_link(self) -> None:
        self._require_started()
        if self.session is not None:
            return
        now = time.monotonic()
        if now < self._next_try:
            raise DriverUnavailable(
                f"bridge {self.cfg.endpoint} down ({self.last_error}); "
                f"next try in {self._next_try - now:.1f} s"
            )
        self._connect()

    def _connect(self) -> None:
        """Fresh socket + hello; DriverUnavailable (and a longer backoff) when unanswered."""
        assert self._ctx is not None
        self._drop(self.last_error)
        s = self._ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.MAXMSGSIZE, self.cfg.max_message_bytes)
        if self._keys is not None:
            self._keys.apply(s)
        s.connect(self.cfg.endpoint)
        self._sock = s
        rid = self._new_id()
        frames = proto.request("hello", rid, {"protocol": proto.PROTOCOL_VERSION})
        try:
            msg = self._exchange(frames, rid, time.monotonic() + self.cfg.timeout_s)
        except _Silent:
            self._next_try = time.monotonic() + self._backoff.next()
            self._drop(f"no hello within {self.cfg.timeout_s} s")
            raise DriverUnavailable(
                f"bridge {self.cfg.endpoint} did not answer hello within {self.cfg.timeout_s} s"
            ) from None
        self._check(msg)
        res = msg.header["result"]
        self._verify_hello(res)
        self.hello = dict(res)
        self.session = str(res["session"])
        self._backoff.reset()
        self.last_error = ""
        log.info(
            "bridge %s up: robot %s session %s", self.cfg.endpoint, res["robot_id"], res["session"]
        )

    def _verify_hello(self, res: Mapping[str, Any]) -> None:
        if res.get("protocol") != proto.PROTOCOL_VERSION or not isinstance(res.get("session"), str):
            raise proto.BridgeError("bad_protocol", f"unexpected hello {dict(res)!r}")
        try:
            theirs = Spec.from_dict(res.get("spec") or {})
        except ValueError as exc:
            raise proto.BridgeError("bad_protocol", f"hello carries a bad spec: {exc}") from exc
        if theirs != self._spec:
            raise proto.BridgeError(
                "bad_protocol",
                f"bridge spec {theirs.to_dict()} != agent spec {self._spec.to_dict()}",
            )
        if self.cfg.robot_id and res.get("robot_id") != self.cfg.robot_id:
            raise proto.BridgeError(
                "bad_protocol",
                f"bridge is robot {res.get('robot_id')!r}, expected {self.cfg.robot_id!r}",
            )

    def _drop(self, why: str) -> None:
        """Forget the link: close the socket (unsent requests die with it)."""
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        if self.session is not None:
            log.warning("bridge %s link dropped: %s", self.cfg.endpoint, why)
        self.session = None
        self.last_error = why

    def _new_id(self) -> str:
        return f"{self._client}-{next(self._ids)}"

    def _request(
        self,
        op: str,
        fields: Mapping[str, Any] | None = None,
        arrays: Mapping[str, npt.NDArray[Any]] | None = None,
    ) -> tuple[list[bytes], str]:
        self._ensure_link()
        rid = self._new_id()
        return proto.request(op, rid, {**(fields or {}), "session": self.session}, arrays), rid

    def _call(
        self, op: str, fields: Mapping[str, Any] | None = None, timeout_s: float | None = None
    ) -> Message:
        """One request and its reply; DriverUnavailable on silence, a restart or a refusal."""
        frames, rid = self._request(op, fields)
        deadline = time.monotonic() + (timeout_s or self.cfg.timeout_s)
        try:
            msg = self._exchange(frames, rid, deadline)
        except _Silent:
            self._drop(f"no answer to {op} within {self.cfg.timeout_s} s")
            raise DriverUnavailable(
                f"bridge {self.cfg.endpoint} did not answer {op} within {self.cfg.timeout_s} s"
            ) from None
        self._check(msg)
        return msg

    def _check(self, msg: Message) -> None:
        err = proto.reply_error(msg)
        if err is None:
            return
        code, text = err
        if code == "bad_action":
            raise ValueError(f"bridge refused the action: {text}")
        if code == "stale_session":
            self._drop("the bridge restarted (stale session)")
            self._next_try = 0.0  # reconnect on the next call, no backoff
            raise DriverUnavailable(f"bridge {self.cfg.endpoint} restarted: {text}")
        if code in ("busy", "unavailable"):
            raise DriverUnavailable(f"bridge {self.cfg.endpoint}: {code}: {text}")
        if code == "unsupported":
            raise NotImplementedError(text)
        raise proto.BridgeError(code, text)

    def _exchange(self, frames: list[bytes], rid: str, deadline: float) -> Message:
        """Send ``frames`` and wait for the reply to ``rid``; _Silent on silence or deadline."""
        sock = self._sock
        if sock is None:
            raise _Silent()
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            raise _Silent() from None  # send queue full: the bridge is not taking messages
        alive_until = time.monotonic() + self.cfg.timeout_s
        while True:
            now = time.monotonic()
            wait = min(alive_until, deadline) - now
            if wait <= 0 or not sock.poll(int(wait * 1000) + 1):
                now = time.monotonic()
                if now >= alive_until:
                    raise _Silent()
                if now >= deadline:
                    raise _Silent(overran=True)
                continue
            raw = sock.recv_multipart()
            try:
                msg = decode(raw, max_bytes=self.cfg.max_message_bytes)
            except WireError as exc:
                raise proto.BridgeError(
                    exc.code, f"undecodable message from the bridge: {exc}"
                ) from exc
            if msg.header.get("id") != rid:
                continue  # a late answer to a request we gave up on
            if msg.type == "heartbeat":
                alive_until = time.monotonic() + self.cfg.timeout_s
                continue
            if msg.type != "reply":
                raise proto.BridgeError("bad_request", f"unexpected message type {msg.type!r}")
            return msg
