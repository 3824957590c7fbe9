"""ZeroMQ adapters: the command ROUTER, the event PUB, and CURVE security.

Sockets are opened in :meth:`bind`, used from one thread (the control thread)
and closed in :meth:`close`. Binding a non-loopback endpoint without CURVE keys
is refused (see :func:`agent.config.check_exposure`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import zmq

from agent.config import SocketsConfig, check_exposure
from agent.wire import WireError, encode

log = logging.getLogger(__name__)

Handler = Callable[[Sequence[bytes]], list[bytes]]


class Security:
    """CURVE server keys and the client authenticator (or nothing, on loopback)."""

    def __init__(self, cfg: SocketsConfig) -> None:
        self.cfg = cfg
        self._auth: Any = None
        self._keys: tuple[bytes, bytes] | None = None

    def start(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        check_exposure(self.cfg)
        if not self.cfg.curve_server_secret:
            return
        import zmq.auth
        from zmq.auth.thread import ThreadAuthenticator

        public, secret = zmq.auth.load_certificate(self.cfg.curve_server_secret)
        if secret is None:
            raise ValueError(f"{self.cfg.curve_server_secret}: no secret key in this file")
        if not Path(self.cfg.curve_clients_dir).is_dir():
            raise ValueError(f"sockets.curve_clients_dir {self.cfg.curve_clients_dir!r} missing")
        self._keys = (public, secret)
        self._auth = ThreadAuthenticator(ctx)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=self.cfg.curve_clients_dir)

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        if self._keys is not None:
            sock.curve_publickey, sock.curve_secretkey = self._keys
            sock.curve_server = True

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


class CommandServer:
    """ROUTER socket answering command requests from DEALER or REQ clients."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, max_bytes: int) -> None:
        self._ctx = ctx
        self.endpoint = endpoint
        self.max_bytes = max_bytes
        self._sock: zmq.Socket[bytes] | None = None
        self._poller = zmq.Poller()

    def bind(self, security: Security) -> str:
        """Bind and return the resolved endpoint."""
        s = self._ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.MAXMSGSIZE, self.max_bytes + 4096)
        s.setsockopt(zmq.ROUTER_MANDATORY, 0)
        s.setsockopt(zmq.SNDHWM, 1000)
        s.setsockopt(zmq.RCVHWM, 1000)
        security.apply(s)
        s.bind(self.endpoint)
        self._sock = s
        self._poller.register(s, zmq.POLLIN)
        self.endpoint = s.getsockopt_string(zmq.LAST_ENDPOINT)
        return self.endpoint

    def serve(self, handler: Handler, timeout_ms: int, max_requests: int = 32) -> int:
        """Wait up to ``timeout_ms`` for requests and answer those waiting; returns how many."""
        if self._sock is None:
            raise RuntimeError("command socket not bound")
        served = 0
        if not self._poller.poll(timeout_ms):
            return 0
        while served < max_requests:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                break
            served += 1
            if len(frames) < 2:
                continue  # no routing id: nothing to reply to
            ident, rest = frames[0], frames[1:]
            envelope = [ident]
            if rest and rest[0] == b"":  # REQ client: keep its delimiter
                envelope.append(b"")
                rest = rest[1:]
            reply = handler(rest)
            try:
                self._sock.send_multipart([*envelope, *reply], zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                log.warning("could not send a reply: %s", exc)
        return served

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None


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
        security.apply(s)
        s.bind(self.endpoint)
        self._sock = s
        self.endpoint = s.getsockopt_string(zmq.LAST_ENDPOINT)
        return self.endpoint

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        """Publish one event; never blocks (PUB drops when a subscriber is slow)."""
        if self._sock is None:
            return
        try:
            frames = encode("event", {"topic": topic, "t": time.time(), "data": data})
        except WireError:
            frames = encode(
                "event",
                {
                    "topic": topic,
                    "t": time.time(),
                    "data": json.loads(json.dumps(data, default=str)),
                },
            )
        try:
            self._sock.send_multipart([topic.encode(), *frames], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("could not publish %s: %s", topic, exc)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
