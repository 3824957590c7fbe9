"""Test doubles for the network edge: a recording AgentControl and a CommandServer thread."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import zmq

from agent.commands import dispatch
from agent.config import SocketsConfig
from agent.transport import CommandLimits, CommandServer, Security

NO_LIMITS = CommandLimits(
    max_message_bytes=4096,
    max_frame_bytes=16384,
    command_rate_per_s=0.0,
    command_total_rate_per_s=0.0,
    command_read_rate_per_s=0.0,
)
"""Small size caps (oversize is cheap to send) and no rate limits (every message parsed)."""


class Empty(dict[str, Any]):
    """An empty, JSON-serialisable answer that also stands for a missing row."""


class RecordingControl:
    """Answers any method a command calls with an empty dict and records the call.

    Commands may call ``status()``/``promote(id)`` or ``snapshot()``/``queries.policy(id)``
    and ``enqueue(...)``: every call is a side effect counted in :attr:`calls`, so a test
    can prove that a request executed nothing.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self._lock = threading.Lock()

    @property
    def queries(self) -> RecordingControl:
        return self

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        def call(*args: Any, **kwargs: Any) -> Empty:
            with self._lock:
                self.calls.append((name, args))
            return Empty()

        return call

    def count(self) -> int:
        with self._lock:
            return len(self.calls)


class ServerThread:
    """A CommandServer bound and served on its own thread (sockets stay on one thread)."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        security: Security,
        control: Any,
        endpoint: str = "tcp://127.0.0.1:*",
        limits: CommandLimits = NO_LIMITS,
    ) -> None:
        self.server = CommandServer(ctx, endpoint, limits.max_message_bytes, limits)
        self._security = security
        self._control = control
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None
        self.per_call: list[int] = []
        """Requests read by each serve() call."""

    def start(self) -> str:
        self._thread.start()
        assert self._bound.wait(10), "command server did not bind"
        if self.error is not None:
            raise self.error
        return self.server.endpoint

    def _run(self) -> None:
        try:
            self.server.bind(self._security)
        except BaseException as exc:
            self.error = exc
            self._bound.set()
            return
        self._bound.set()
        max_bytes = self.server.max_bytes

        def handle(frames: Sequence[bytes]) -> list[bytes]:
            return dispatch(self._control, frames, max_bytes)

        try:
            while not self._stop.is_set():
                self.per_call.append(self.server.serve(handle, 20))
        except BaseException as exc:  # a crash of the server is what the tests look for
            self.error = exc
        finally:
            self.server.close()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def dealer(
    ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, timeout_ms: int = 2000
) -> zmq.Socket[bytes]:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, timeout_ms)
    s.setsockopt(zmq.SNDTIMEO, timeout_ms)
    s.connect(endpoint)
    return s


@contextlib.contextmanager
def command_server(
    cfg: SocketsConfig | None = None,
) -> Iterator[tuple[str, RecordingControl, ServerThread, Security]]:
    """A :class:`ServerThread` over a :class:`RecordingControl` in a context of its own,
    secured as ``cfg`` says (CURVE keys and ZAP authenticator; default none): its endpoint,
    the control, the thread and the security, all stopped when the block ends."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sec = Security(cfg or SocketsConfig())
    sec.start(ctx)
    control = RecordingControl()
    srv = ServerThread(ctx, sec, control)
    endpoint = srv.start()
    try:
        yield endpoint, control, srv, sec
    finally:
        srv.stop()
        sec.stop()
        ctx.term()
