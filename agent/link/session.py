"""The trainer link's transport: one DEALER socket, ``hello``/``welcome``, the heartbeat,
the jittered reconnect backoff and the credit and chunk size the trainer grants.

Contract (the link's thread only): :meth:`Session.poll` connects when it is time to
(the pause doubles from ``backoff_min_s`` to ``backoff_max_s``, with +-20 % jitter, and
is reset by a ``welcome``), returns the messages received, pings every
``heartbeat_s`` and gives up the connection after ``timeout_s`` without a reply.
:meth:`Session.send` never blocks: it returns False when there is no connection or the
socket's queue is full. No job logic here.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import zmq

from agent.config import TrainerConfig
from agent.jobwire import PROTOCOL
from agent.wire import MAX_HEADER_BYTES, Message, WireError, decode, encode

log = logging.getLogger(__name__)


class Session:
    """One agent's connection to the trainer's job service."""

    def __init__(self, cfg: TrainerConfig, agent_id: str) -> None:
        self.cfg = cfg
        self.agent_id = agent_id
        self.credit = 1
        """Requests the trainer lets be in flight (its ``welcome``)."""
        self.chunk_bytes = cfg.chunk_bytes
        """Chunk size: ours, or the trainer's cap if smaller."""
        self.welcomed = False
        self.rid = 0
        """The latest request id sent."""
        self.connects = 0
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._last_rx = 0.0
        self._next_ping = 0.0
        self._next_connect = 0.0
        self._backoff = cfg.backoff_min_s

    @property
    def connected(self) -> bool:
        return self._sock is not None

    @property
    def max_bytes(self) -> int:
        return max(self.chunk_bytes, self.cfg.chunk_bytes) + MAX_HEADER_BYTES

    def open(self) -> None:
        self._ctx = zmq.Context()

    def close(self) -> None:
        """Close the socket (the link's thread, at its end)."""
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        self.welcomed = False

    def term(self) -> None:
        """Release the context (after the link's thread ended)."""
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def due_in(self, now: float) -> float:
        """Seconds until the next connection attempt (0: now)."""
        return max(0.0, self._next_connect - now)

    def connect(self, now: float) -> None:
        assert self._ctx is not None
        s = self._ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.MAXMSGSIZE, self.max_bytes)
        s.setsockopt(zmq.SNDHWM, 64)
        s.setsockopt(zmq.RCVHWM, 256)
        ivl = max(100, int(self.cfg.heartbeat_s * 1000))
        s.setsockopt(zmq.HEARTBEAT_IVL, ivl)
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * ivl)
        s.setsockopt(zmq.HEARTBEAT_TTL, 3 * ivl)
        s.setsockopt(zmq.RECONNECT_IVL, 200)
        if self.cfg.curve_server_public:
            from plumbing.curve import ClientKeys

            ClientKeys.load(self.cfg.curve_client_secret, self.cfg.curve_server_public).apply(s)
        s.connect(self.cfg.endpoint)
        self._sock = s
        self.welcomed = False
        self._last_rx = now
        self.connects += 1
        self.send("hello", {"protocol": PROTOCOL})

    def disconnect(self, now: float, why: str) -> float:
        """Drop the connection; returns the pause before the next attempt."""
        if self._sock is not None:
            log.warning("trainer link: %s; retrying in %.1f s", why, self._backoff)
        self.close()
        delay = self._backoff * (0.8 + 0.4 * random.random())
        self._next_connect = now + delay
        self._backoff = min(self._backoff * 2, self.cfg.backoff_max_s)
        return delay

    def receive(self, clock: Any) -> list[Message]:
        """Messages that arrived within 20 ms (a ``welcome`` is taken here)."""
        assert self._sock is not None
        out: list[Message] = []
        if not self._sock.poll(20, zmq.POLLIN):
            return out
        for _ in range(256):
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._last_rx = clock()
            try:
                msg = decode(frames, max_bytes=self.max_bytes)
            except WireError as exc:
                log.warning("trainer link: malformed message from the trainer: %s", exc)
                continue
            if msg.type == "welcome":
                self._welcome(msg.header, self._last_rx)
            out.append(msg)
        return out

    def _welcome(self, h: dict[str, Any], now: float) -> None:
        self.welcomed = True
        self._backoff = self.cfg.backoff_min_s
        self.credit = max(1, int(h.get("credit", 1)))
        self.chunk_bytes = min(self.cfg.chunk_bytes, int(h.get("max_chunk_bytes", 1 << 20)))
        self._next_ping = now

    def silent(self, now: float) -> bool:
        """No reply for ``timeout_s``."""
        return now - self._last_rx > self.cfg.timeout_s

    def heartbeat(self, now: float) -> None:
        if now >= self._next_ping:
            self._next_ping = now + self.cfg.heartbeat_s
            self.send("ping", {})

    def send(self, type_: str, header: dict[str, Any], data: bytes | None = None) -> bool:
        if self._sock is None:
            return False
        self.rid += 1
        head = {"agent": self.agent_id, "rid": self.rid, **header}
        arrays = None if data is None else {"data": np.frombuffer(data, dtype=np.uint8)}
        try:
            self._sock.send_multipart(
                encode(type_, head, arrays, max_bytes=self.max_bytes), zmq.NOBLOCK
            )
        except zmq.Again:
            return False
        return True
