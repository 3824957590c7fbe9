"""ZeroMQ adapters: CURVE security, the command ROUTER, the event PUB, and client keys.

Sockets are opened in ``bind``, used from one thread (the control thread) and closed in
``close``. Every server socket binds through :meth:`Security.bind`, which refuses a
non-loopback endpoint unless CURVE keys are loaded (a socket added later, e.g. a trainer
link, gets the same rule by binding through it), turns CURVE on, and sets the ZAP domain that
the authenticator checks client keys in. Every socket sets ``ZMQ_MAXMSGSIZE``.

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
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from agent.config import SocketsConfig, check_endpoint_exposure, check_exposure
from agent.ratelimit import RateLimiter, TokenBucket
from agent.wire import ERROR_CODES, MAX_MESSAGE_BYTES, WireError, encode
from plumbing.config_loader import ConfigError

log = logging.getLogger(__name__)

Handler = Callable[[Sequence[bytes]], list[bytes]]
ZAP_DOMAIN = "robot-agent"
"""ZAP domain of the agent's server sockets; client keys are only accepted in it."""
SUBSCRIPTION_MAX_BYTES = 4096
"""ZMQ_MAXMSGSIZE of the PUB socket, whose only inbound messages are subscriptions."""
HANDSHAKE_MS = 5000
"""A connection that has not completed its (CURVE) handshake by then is closed."""
READ_BURST = 64
"""Requests the command socket may read at once before its read rate applies."""


class CurveSettings(Protocol):
    """Where a server's CURVE keys are (``[sockets]`` has these; a trainer config can too)."""

    @property
    def curve_server_secret(self) -> str: ...
    @property
    def curve_clients_dir(self) -> str: ...


class Security:
    """CURVE server keys and the ZAP authenticator shared by all server sockets of a process.

    Without ``curve_server_secret`` it does nothing but refuse non-loopback binds. With it,
    :meth:`start` loads the server key and every ``*.key`` in ``curve_clients_dir`` and starts
    a ``zmq.auth`` ThreadAuthenticator for domain :data:`ZAP_DOMAIN`; a client whose public
    key is not in that directory fails the handshake and never reaches a socket.
    """

    def __init__(self, cfg: CurveSettings, domain: str = ZAP_DOMAIN) -> None:
        self.cfg = cfg
        self.domain = domain
        self._auth: Any = None
        self._keys: tuple[bytes, bytes] | None = None
        self.client_keys = 0
        """Authorised client keys loaded by :meth:`start`."""

    @property
    def enabled(self) -> bool:
        """True once CURVE keys are loaded (after :meth:`start`)."""
        return self._keys is not None

    def start(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        """Load keys and start the authenticator (before any socket binds)."""
        if isinstance(self.cfg, SocketsConfig):
            check_exposure(self.cfg)
        if not self.cfg.curve_server_secret:
            return
        self._keys = load_secret_key(self.cfg.curve_server_secret, "curve_server_secret")
        self.client_keys = len(load_public_keys(self.cfg.curve_clients_dir))
        if not self.client_keys:
            log.warning(
                "no client keys in %s: no client can connect until one is added",
                self.cfg.curve_clients_dir,
            )
        self._auth = ThreadAuthenticator(ctx, log=logging.getLogger("agent.transport.zap"))
        self._auth.start()
        self._auth.configure_curve(domain=self.domain, location=self.cfg.curve_clients_dir)

    def reload_clients(self) -> int:
        """Re-read the client key directory (keys added or removed); returns how many."""
        if self._auth is None:
            return 0
        self.client_keys = len(load_public_keys(self.cfg.curve_clients_dir))
        self._auth.configure_curve(domain=self.domain, location=self.cfg.curve_clients_dir)
        return self.client_keys

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        """Make ``sock`` a CURVE server in this ZAP domain (no-op without keys)."""
        sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
        if self._keys is not None:
            sock.curve_publickey, sock.curve_secretkey = self._keys
            sock.curve_server = True
            sock.zap_domain = self.domain.encode()

    def bind(self, sock: zmq.Socket[bytes], endpoint: str, key: str) -> str:
        """Secure and bind ``sock``; refuses (ConfigError) off loopback without CURVE keys.

        ``key`` names the endpoint in messages (e.g. ``"sockets.command_endpoint"``).
        Returns the resolved endpoint (a ``*`` port replaced by the real one).
        """
        check_endpoint_exposure(key, endpoint, self.enabled)
        self.apply(sock)
        sock.bind(endpoint)
        return str(sock.getsockopt_string(zmq.LAST_ENDPOINT))

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


def load_secret_key(path: str, key: str = "key file") -> tuple[bytes, bytes]:
    """(public, secret) from a zmq.auth secret certificate; ConfigError saying what is wrong."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{key} = {path!r}: cannot read a CURVE key: {exc}") from exc
    if secret is None:
        raise ConfigError(f"{key} = {path!r} holds only a public key; give the *.key_secret file")
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s: secret key readable by others (mode %o); chmod 600 it", path, mode & 0o777)
    return public, secret


def load_public_keys(directory: str) -> list[bytes]:
    """Public keys of every ``*.key`` file in ``directory``; ConfigError naming a bad file."""
    d = Path(directory)
    if not d.is_dir():
        raise ConfigError(f"sockets.curve_clients_dir = {directory!r} is not a directory")
    keys: list[bytes] = []
    for f in sorted(d.glob("*.key")):
        try:
            public, _ = zmq.auth.load_certificate(f)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{f}: not a CURVE public key file: {exc}") from exc
        keys.append(public)
    return keys


@dataclass(frozen=True)
class ClientKeys:
    """A CURVE client's key pair and the server public key it expects."""

    public: bytes
    """Client public key (z85)."""
    secret: bytes
    """Client secret key (z85)."""
    server_public: bytes
    """The server's public key (z85): the client refuses any other server."""

    @classmethod
    def load(cls, client_secret_file: str, server_public_file: str) -> ClientKeys:
        """Read ``NAME.key_secret`` (client) and ``SERVER.key`` (server public key)."""
        public, secret = load_secret_key(client_secret_file, "client key")
        try:
            server_public, _ = zmq.auth.load_certificate(server_public_file)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"server key {server_public_file!r}: cannot read a CURVE key: {exc}"
            ) from exc
        return cls(public, secret, server_public)

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        """Make ``sock`` a CURVE client of that server (before connect)."""
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret


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
        try:
            self.endpoint = security.bind(s, self.endpoint, "sockets.command_endpoint")
        except BaseException:
            s.close(0)
            raise
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
        try:
            self.endpoint = security.bind(s, self.endpoint, "sockets.event_endpoint")
        except BaseException:
            s.close(0)
            raise
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
