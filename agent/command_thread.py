"""The command socket on its own thread: commands are answered while a grasp runs.

:class:`CommandThread` binds the ROUTER socket in its own thread and serves
it until closed. Each request runs through :func:`agent.commands.dispatch`
against a :class:`CommandContext`: read-only commands are answered from the
control thread's latest snapshot and from this thread's own read-only SQLite
connection; changes are queued for the control thread (see
:class:`agent.command_base.AgentControl`). Nothing here touches the writer
connection, the driver or a policy.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from agent.command_base import Change, ControlCore, operator_error
from agent.commands import dispatch
from agent.config import SocketsConfig
from agent.queries import Queries
from agent.transport import CommandServer, Security

log = logging.getLogger(__name__)


class CommandContext:
    """The daemon as the command thread sees it (implements ``AgentControl``)."""

    def __init__(
        self,
        snapshot: Callable[[], dict[str, Any]],
        latencies_ms: Callable[[], list[float]],
        enqueue: Callable[[str, Change], int],
        queries: Queries,
    ) -> None:
        self._snapshot = snapshot
        self._latencies = latencies_ms
        self._enqueue = enqueue
        self._queries = queries

    def snapshot(self) -> dict[str, Any]:
        return self._snapshot()

    @property
    def queries(self) -> Queries:
        return self._queries

    def latencies_ms(self) -> list[float]:
        return self._latencies()

    def enqueue(self, command: str, change: Change) -> int:
        return self._enqueue(command, change)


class CommandThread:
    """Owns the command socket: binds it, serves it, closes it, all on one thread."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        cfg: SocketsConfig,
        security: Security,
        db_path: Path,
        make_context: Callable[[Queries], CommandContext],
        poll_ms: int = 50,
    ) -> None:
        self._ctx = ctx
        self.cfg = cfg
        self._security = security
        self._db_path = db_path
        self._make_context = make_context
        self._poll_ms = poll_ms
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._thread: threading.Thread | None = None
        self._bind_error: BaseException | None = None
        self.endpoint = ""
        self.served = 0

    def start(self, timeout: float = 10.0) -> str:
        """Start the thread and return the bound endpoint; raises what binding raised."""
        self._thread = threading.Thread(target=self._run, name="commands", daemon=True)
        self._thread.start()
        if not self._bound.wait(timeout):
            raise RuntimeError(f"command socket not bound within {timeout} s")
        if self._bind_error is not None:
            raise self._bind_error
        return self.endpoint

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        server = CommandServer(self._ctx, self.cfg.command_endpoint, self.cfg.max_message_bytes)
        try:
            self.endpoint = server.bind(self._security)
        except BaseException as exc:
            self._bind_error = exc
            server.close()
            self._bound.set()
            return
        self._bound.set()
        queries = Queries(self._db_path)
        context = self._make_context(queries)
        max_bytes = self.cfg.max_message_bytes

        def handle(frames: Any) -> list[bytes]:
            return dispatch(context, frames, max_bytes)

        try:
            while not self._stop.is_set():
                try:
                    self.served += server.serve(handle, self._poll_ms)
                except zmq.ZMQError as exc:
                    if exc.errno == zmq.ETERM:
                        return
                    log.exception("command socket error")
        finally:
            queries.close()
            server.close()


class ChangeQueue:
    """Ticketed changes: queued from the command thread, applied on the control thread.

    ``post(fn)`` hands ``fn`` to the control thread; ``done(reply)`` gets each change's
    reply there (the daemon records and publishes it as ``agent.command``). Applying never
    raises: an operator error answers its own code, a lifecycle conflict ``conflict``, a
    full disk ``storage_full`` and anything else ``internal``.
    """

    def __init__(
        self,
        post: Callable[[Callable[[], None]], None],
        core: ControlCore,
        done: Callable[[dict[str, Any]], None],
    ) -> None:
        self._post = post
        self._core = core
        self._done = done
        self._tickets = itertools.count(1)
        self._lock = threading.Lock()
        self._pending = 0

    @property
    def pending(self) -> int:
        """Changes queued and not applied yet (any thread)."""
        with self._lock:
            return self._pending

    def enqueue(self, command: str, change: Change) -> int:
        """Queue ``change`` (any thread); returns its ticket."""
        ticket = next(self._tickets)
        with self._lock:
            self._pending += 1
        self._post(lambda: self._apply(ticket, command, change))
        return ticket

    def _apply(self, ticket: int, command: str, change: Change) -> None:
        with self._lock:
            self._pending -= 1
        reply: dict[str, Any] = {"ticket": ticket, "command": command}
        try:
            reply |= {"ok": True, "result": change(self._core)}
        except Exception as exc:
            known = operator_error(exc)
            if known is None:
                log.exception("%s (ticket %d) failed", command, ticket)
                known = "internal", f"{type(exc).__name__}: {exc}"
            reply |= {"ok": False, "error": {"code": known[0], "message": known[1]}}
        self._done(reply)
