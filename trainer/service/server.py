"""The job service's socket: the ROUTER loop, message framing, error replies, pushes.

:class:`JobService` owns the socket, its CURVE/ZAP security and the agents'
routes; requests go to :class:`~trainer.service.requests.Requests`, job
events and the worker to :class:`~trainer.service.desk.JobDesk`, all on the
thread that calls :meth:`JobService.run`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import typing
from collections.abc import Sequence
from typing import Any

import numpy as np
import zmq

from agent.jobwire import check_name
from agent.wire import MAX_HEADER_BYTES, WireError, decode, encode, peek_field
from plumbing.curve import Security
from plumbing.router import waiting
from plumbing.sd_notify import Notifier
from trainer.jobstore import JobStore
from trainer.jobworker import Runner, Worker, load_object
from trainer.service.desk import JobDesk
from trainer.service.requests import Requests
from trainer.service_config import TrainerServiceConfig, check_service_exposure

log = logging.getLogger(__name__)

ZAP_DOMAIN = "robot-trainer"
"""ZAP domain of the job socket; agent keys are accepted only in it."""


def build_options(cls: type[Any], options: dict[str, Any]) -> Any:
    """Instantiate a config dataclass from TOML data (nested dataclasses, lists -> tuples)."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in options.items():
        tp = hints.get(name)
        if tp is None:
            allowed = ", ".join(f.name for f in dataclasses.fields(cls))
            raise ValueError(f"unknown key finetune.{name}; allowed keys: {allowed}")
        arms = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, _UnionType) else ()
        sub = next((a for a in (tp, *arms) if dataclasses.is_dataclass(a)), None)
        if isinstance(value, dict) and isinstance(sub, type):
            value = build_options(sub, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


_UnionType = type(int | None)


def json_ready(value: Any) -> Any:
    """``value`` with non-finite floats as None and unknown objects as strings (for headers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


class JobService:
    """The job socket, the job table and the worker; ``run()`` serves until ``stop`` is set."""

    def __init__(
        self,
        cfg: TrainerServiceConfig,
        runner: Runner | None = None,
        runner_cfg: Any = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.cfg = cfg
        self.s = cfg.service
        self._runner = runner
        self._runner_cfg = runner_cfg
        self.notifier = notifier or Notifier(env={})
        self.desk = JobDesk(cfg, self._push)
        self.requests = Requests(self.s, self.desk, self._reply)
        self.endpoint = self.s.endpoint
        self.stop = threading.Event()
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._security: Security | None = None
        self._routes: dict[str, bytes] = {}
        self._handlers = self.requests.table()

    @property
    def store(self) -> JobStore:
        """The job table (and the data on disk)."""
        return self.desk.store

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> str:
        """Open the store, recover after a crash, bind; returns the bound endpoint."""
        check_service_exposure(self.s)
        runner = self._runner or typing.cast(Runner, load_object(self.s.runner))
        runner_cfg = self._runner_cfg
        if runner_cfg is None:
            runner_cfg = build_options(load_object(self.s.runner_config), self.cfg.finetune)
        self.desk.open(Worker(runner, runner_cfg))
        self._ctx = zmq.Context()
        self._security = Security(self.s, domain=ZAP_DOMAIN)
        self._security.start(self._ctx)
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.s.max_chunk_bytes + MAX_HEADER_BYTES)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        # Per-peer queues of a few windows: a client that ignores its credit (or never reads
        # its replies) is held back by TCP instead of filling the trainer's memory.
        hwm = max(64, 4 * self.s.credit)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
        ivl = int(self.s.heartbeat_s * 1000)
        sock.setsockopt(zmq.HEARTBEAT_IVL, ivl)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * ivl)
        sock.setsockopt(zmq.HEARTBEAT_TTL, 3 * ivl)
        self.endpoint = self._security.bind(sock, self.s.endpoint, "service.endpoint")
        self._sock = sock
        log.info("trainer job service on %s, data in %s", self.endpoint, self.store.root)
        return self.endpoint

    def close(self) -> None:
        self.desk.stop_worker()
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        if self._security is not None:
            self._security.stop()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        self.desk.close()

    def run(self) -> None:
        """Serve until ``stop`` is set (READY=1 first, WATCHDOG=1 every loop)."""
        assert self._sock is not None and self.desk.worker is not None
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        if not self.stop.is_set():  # never READY=1 after a stop request
            self.notifier.ready(f"serving on {self.endpoint}")
        self.desk.schedule()
        while not self.stop.is_set():
            self.notifier.watchdog()
            if poller.poll(50):
                for frames in waiting(self._sock):
                    self._on_frames(frames)
            self.desk.drain_worker(stopping=self.stop.is_set())
            self.desk.forward_progress()
            self.desk.expire_uploads()
        self.notifier.stopping("shutting down")
        log.info("trainer job service stopping")

    # -- the socket -----------------------------------------------------------------------
    def _send(self, ident: bytes, frames: list[bytes]) -> None:
        assert self._sock is not None
        try:
            self._sock.send_multipart([ident, *frames], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # HWM reached or peer gone: the agent asks again
            log.debug("could not send to a peer: %s", exc)

    def _reply(
        self, ident: bytes, type_: str, header: dict[str, Any], data: bytes | None = None
    ) -> None:
        arrays = None if data is None else {"data": np.frombuffer(data, dtype=np.uint8)}
        self._send(ident, encode(type_, header, arrays, max_bytes=self._max_bytes))

    def _push(self, agent: str, type_: str, header: dict[str, Any]) -> None:
        ident = self._routes.get(agent)
        if ident is None:
            return
        try:
            self._reply(ident, type_, json_ready(header))
        except WireError as exc:  # e.g. a huge progress dict: the agent asks for the state
            log.warning("could not push %s to %s: %s", type_, agent, exc)

    @property
    def _max_bytes(self) -> int:
        return self.s.max_chunk_bytes + MAX_HEADER_BYTES

    def _on_frames(self, frames: Sequence[bytes]) -> None:
        if len(frames) < 2:
            return
        ident, rest = frames[0], frames[1:]
        rid: Any = None
        req = ""
        try:
            msg = decode(rest, max_bytes=self._max_bytes)
            req = msg.type
            rid = msg.header.get("rid")
            handler = self._handlers.get(msg.type)
            if handler is None:
                raise WireError("unknown_type", f"unknown request type {msg.type!r}")
            agent = msg.header.get("agent")
            if agent is not None:
                self._routes[check_name("agent", agent)] = ident
            data = msg.arrays.get("data")
            handler(ident, msg.header, None if data is None else data.tobytes())
        except WireError as exc:
            if not req and exc.code != "too_large":  # refused before parsing: echo it still
                rid, req = peek_field(rest, "rid"), str(peek_field(rest, "type") or "")[:64]
            self._error(ident, exc.code, exc.message, req, rid)
        except Exception as exc:  # a bug or a full disk: say so, keep serving the others
            log.exception("request %r failed", req)
            self._error(ident, "internal", f"{type(exc).__name__}: {exc}", req, rid)

    def _error(self, ident: bytes, code: str, message: str, req: str, rid: Any) -> None:
        self.store.count(f"error.{code}")
        head: dict[str, Any] = {"code": code, "message": message[:500], "re": req}
        if isinstance(rid, int | str) and not isinstance(rid, bool):
            head["rid"] = rid
        self._reply(ident, "error", head)


def serve(
    cfg: TrainerServiceConfig,
    notifier: Notifier | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Run the service until SIGTERM/SIGINT (the ``serve`` subcommand); returns the exit code.

    The first signal stops cleanly (the job in training checkpoints and resumes at the next
    start); a second one exits at once with ``plumbing.signals.EXIT_SECOND_SIGNAL``. ``stop``:
    the event of stop handlers the caller installed already (before its slow imports);
    without it they are installed here.
    """
    from plumbing.signals import StopSignals

    svc = JobService(cfg, notifier=notifier or Notifier())
    if stop is None:
        StopSignals(svc.stop).install()
    else:
        svc.stop = stop
    try:
        svc.start()
        svc.run()
    finally:
        svc.close()
    return 0
