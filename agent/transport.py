"""ZeroMQ adapters of the agent: the command ROUTER, the event PUB, and their CURVE security.

Sockets are opened in ``bind``, used from one thread (the control thread) and closed in
``close``. Every server socket binds through :meth:`Security.bind` (:mod:`plumbing.curve`,
the project's one CURVE rule), which refuses a non-loopback endpoint unless CURVE keys are
loaded (a socket added later gets the same rule by binding through it), turns CURVE on, and
sets the ZAP domain that the authenticator checks client keys in. Every socket sets
``ZMQ_MAXMSGSIZE``.

Command socket rules (see docs/agent.md, "Operator commands"):

- a frame over ``sockets.max_frame_bytes`` makes libzmq close that connection: no reply
  (the one size rule that drops a request);
- a message over ``sockets.max_message_bytes`` is answered ``too_large`` unread;
- a client over its token bucket (``command_rate_per_s``/``command_burst``, per CURVE key,
  else per connection) or over the shared one (``command_total_*``) is answered
  ``rate_limited`` unread (``id`` null);
- replies to a client that does not read them are dropped once its queue is full;
- at most ``command_read_rate_per_s`` requests are read per second in all (bursts of 64);
  the rest wait in libzmq's queues (100 per client), then TCP pushes back on the sender:
  a flood slows the flooder, not the process; one :meth:`CommandServer.serve` call reads at
  most ``max_requests``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.auth

from agent.config import KEYGEN_HINT, SocketsConfig
from agent.ratelimit import RateLimiter, TokenBucket
from agent.wire import ERROR_CODES, MAX_MESSAGE_BYTES, WireError, encode
from plumbing import curve

log = logging.getLogger(__name__)

Handler = Callable[[Sequence[bytes]], list[bytes]]
ZAP_DOMAIN = "robot-agent"
"""ZAP domain of the agent's server sockets; client keys are only accepted in it."""
SUBSCRIPTION_MAX_BYTES = 4096
"""ZMQ_MAXMSGSIZE of the PUB socket, whose only inbound messages are subscriptions."""
READ_BURST = 64
"""Requests the command socket may read at once before its read rate applies."""


class Security(curve.Security):
    """The agent's server security: :class:`plumbing.curve.Security` for the ``[sockets]``
    table in the agent's ZAP domain (every ``*_endpoint`` of the table checked at start)."""

    def __init__(self, cfg: SocketsConfig, domain: str = ZAP_DOMAIN) -> None:
        super().__init__(cfg, domain, table="sockets", hint=KEYGEN_HINT)


@dataclass(frozen=True)
class CommandLimits:
    """Size and rate limits of the command socket (the ``[sockets]`` keys of the same names)."""

    max_message_bytes: int = SocketsConfig.max_message_bytes
    """Largest message answered; larger ones get ``too_large`` unread."""
    max_frame_bytes: int = SocketsConfig.max_frame_bytes
    """ZMQ_MAXMSGSIZE: libzmq closes a connection that sends a larger frame."""
    command_rate_per_s: float = SocketsConfig.command_rate_per_s
    """Per-client sustained rate (0 = off)."""
    command_burst: int = SocketsConfig.command_burst
    """Per-client burst."""
    command_total_rate_per_s: float = SocketsConfig.command_total_rate_per_s
    """All clients' sustained rate (0 = off)."""
    command_total_burst: int = SocketsConfig.command_total_burst
    """All clients' burst."""
    command_read_rate_per_s: float = SocketsConfig.command_read_rate_per_s
    """Requests read per second in all (0 = off); the rest wait in libzmq's queues."""

    @classmethod
    def from_config(cls, cfg: SocketsConfig) -> CommandLimits:
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})


class CommandServer:
    """ROUTER socket answering command requests from DEALER or REQ clients.

    Limits come from ``limits``; when it is None, from the ``[sockets]`` config of the
    :class:`Security` it binds with (``max_bytes`` overrides the message cap either way).
    """

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        max_bytes: int,
        limits: CommandLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ctx = ctx
        self.endpoint = endpoint
        self.max_bytes = max_bytes
        self.limits = limits
        self._clock = clock
        self.limiter: RateLimiter | None = None
        self._reads: TokenBucket | None = None
        self._curve = False
        self._sock: zmq.Socket[bytes] | None = None
        self._poller = zmq.Poller()
        self.counts: dict[str, int] = {"received": 0, "too_large": 0, "rate_limited": 0}
        """Requests received, and those answered by the socket itself without the handler."""
        self.unsent = 0
        """Replies dropped because the client's queue was full or it was gone."""
        self._rate_limited_reply = encode(
            "reply", {"id": None, "ok": False, "error": _error("rate_limited")}
        )

    def bind(self, security: Security) -> str:
        """Bind and return the resolved endpoint."""
        lim = self.limits
        if lim is None:
            cfg = security.cfg
            lim = (
                CommandLimits.from_config(cfg)
                if isinstance(cfg, SocketsConfig)
                else CommandLimits()
            )
        lim = dataclasses.replace(
            lim,
            max_message_bytes=self.max_bytes,
            max_frame_bytes=max(lim.max_frame_bytes, self.max_bytes),
        )
        self.limits = lim
        self.limiter = RateLimiter(
            lim.command_rate_per_s,
            lim.command_burst,
            lim.command_total_rate_per_s,
            lim.command_total_burst,
            self._clock,
        )
        self._curve = security.enabled
        if lim.command_read_rate_per_s > 0:
            burst = float(READ_BURST)
            self._reads = TokenBucket(lim.command_read_rate_per_s, burst, burst, self._clock())
        s = self._ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.MAXMSGSIZE, lim.max_frame_bytes)
        s.setsockopt(zmq.ROUTER_MANDATORY, 0)
        s.setsockopt(zmq.SNDHWM, 1000)
        s.setsockopt(zmq.RCVHWM, 100)
        self.endpoint = security.bind(s, self.endpoint, "sockets.command_endpoint")
        self._sock = s
        self._poller.register(s, zmq.POLLIN)
        return self.endpoint

    def serve(self, handler: Handler, timeout_ms: int, max_requests: int = 32) -> int:
        """Wait up to ``timeout_ms`` for requests and answer those waiting; returns how many.

        Never raises for anything a client sends: a handler exception becomes an
        ``internal`` error reply (logged with its traceback). Over the read rate it stops
        reading and sleeps (within ``timeout_ms``) until a batch of reads is allowed again:
        the unread requests wait in libzmq's queues, and a flooding client's TCP connection
        is pushed back on, at no cost to this process.
        """
        if self._sock is None or self.limiter is None:
            raise RuntimeError("command socket not bound")
        served = 0
        t_end = time.monotonic() + timeout_ms / 1000
        if not self._poller.poll(timeout_ms):
            return 0
        while served < max_requests:
            if self._reads is not None and not self._reads.take(self._clock()):
                wait = min(READ_BURST / 2 / self._reads.rate, t_end - time.monotonic())
                if wait > 0:
                    time.sleep(wait)
                break
            try:
                parts = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                if self._reads is not None:
                    self._reads.give_back()
                break
            served += 1
            self.counts["received"] += 1
            if len(parts) < 2:
                continue  # no routing id: nothing to reply to
            client = _client_identity(parts, self._curve)
            frames = [p.bytes for p in parts]
            ident, rest = frames[0], frames[1:]
            envelope = [ident]
            if rest and rest[0] == b"":  # REQ client: keep its delimiter
                envelope.append(b"")
                rest = rest[1:]
            size = sum(len(f) for f in rest)
            if not self.limiter.allow(client):
                self.counts["rate_limited"] += 1
                reply = self._rate_limited_reply
            elif size > self.max_bytes:
                self.counts["too_large"] += 1
                reply = encode(
                    "reply",
                    {
                        "id": None,
                        "ok": False,
                        "error": _error(
                            "too_large", f"message of {size} bytes exceeds {self.max_bytes}"
                        ),
                    },
                )
            else:
                reply = _safe_handle(handler, rest)
            self._send([*envelope, *reply])
        return served

    def _send(self, frames: list[bytes]) -> None:
        assert self._sock is not None
        try:
            self._sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            self.unsent += 1
            if self.unsent in (1, 10, 100) or self.unsent % 1000 == 0:
                log.warning("could not send a reply (%d so far): %s", self.unsent, exc)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None


def _client_identity(parts: Sequence[zmq.Frame], curve: bool) -> bytes:
    """The CURVE user id (client public key) when authenticated, else the connection id."""
    user = ""
    if curve:
        with contextlib.suppress(zmq.ZMQError):
            user = str(parts[-1].get("User-Id"))
    return b"key:" + str(user).encode() if user else b"conn:" + parts[0].bytes


def _error(code: str, message: str = "") -> dict[str, str]:
    return {"code": code, "message": message or ERROR_CODES[code]}


def _safe_handle(handler: Handler, frames: list[bytes]) -> list[bytes]:
    try:
        return handler(frames)
    except Exception as exc:
        log.exception("command handler failed")
        try:
            return encode(
                "reply",
                {"id": None, "ok": False, "error": _error("internal", type(exc).__name__)},
            )
        except WireError:
            return encode("reply", {"id": None, "ok": False, "error": _error("internal")})


class EventPublisher:
    """PUB socket: frame 0 is the dotted topic, then a wire message of type ``"event"``."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
        self._ctx = ctx
        self.endpoint = endpoint
        self._sock: zmq.Socket[bytes] | None = None

    def bind(self, security: Security) -> str:
        s = self._ctx.socket(zmq.PUB)
        s.setsockopt(zmq.LINGER, 500)
        s.setsockopt(zmq.SNDHWM, 10000)
        s.setsockopt(zmq.MAXMSGSIZE, SUBSCRIPTION_MAX_BYTES)
        self.endpoint = security.bind(s, self.endpoint, "sockets.event_endpoint")
        self._sock = s
        return self.endpoint

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        """Publish one event; never blocks (PUB drops when a subscriber is slow)."""
        if self._sock is None:
            return
        head = {"topic": topic, "t": time.time(), "data": data}
        try:
            frames = encode("event", head, max_bytes=MAX_MESSAGE_BYTES)
        except WireError:
            try:  # e.g. a numpy scalar or a Path in data: send its text
                head["data"] = json.loads(json.dumps(data, default=str))
                frames = encode("event", head)
            except (WireError, TypeError, ValueError, RecursionError) as exc:
                log.warning("could not encode event %s: %s", topic, exc)
                return
        try:
            self._sock.send_multipart([topic.encode(), *frames], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("could not publish %s: %s", topic, exc)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
