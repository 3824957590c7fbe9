"""``robot-trainer serve``: the ZeroMQ ROUTER job service (protocol: docs/trainer-service.md).

One thread owns the socket and the job table (:class:`trainer.jobstore.JobStore`)
and answers every request at once; the :class:`trainer.jobworker.Worker` trains
one job at a time on its own thread, FIFO by queue position across agents. A
job row is committed before the reply that acknowledges it; a chunk is
recorded only after its bytes are fsynced; a result stays until the agent
acknowledges it. On start, a job that was training when the trainer went down
is queued again first in line and resumes from its run directory's checkpoint.
A ``cancel`` ends a job durably at once (its row says "cancelled" before the
reply); a running one stops at its runner's next step, and the worker takes the
next queued job once that run has let go.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import queue
import shutil
import socket
import threading
import time
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from agent.jobwire import (
    PROTOCOL,
    Manifest,
    check_int,
    check_name,
    chunk_sha,
    manifest_of_dir,
    read_chunk,
)
from agent.wire import MAX_HEADER_BYTES, WireError, decode, encode, peek_field
from plumbing.curve import Security
from plumbing.sd_notify import Notifier
from trainer import jobs as jl
from trainer.jobs import CANCELLABLE, FINISHED, Job, JobState
from trainer.jobstore import JobStore
from trainer.jobworker import Runner, Worker, WorkSpec, load_object, store_bundle
from trainer.service_config import TrainerServiceConfig, check_service_exposure
from trainer.uploads import BLOBS, Uploads, Verdict

log = logging.getLogger(__name__)

JOBS_LISTED = 80
"""The ``jobs`` request lists the latest this many jobs (the reply fits the 64 KiB header)."""
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
        self.store = JobStore(cfg.data_root())
        self.uploads = Uploads(self.store, cfg.service)
        self.worker: Worker | None = None
        self.endpoint = self.s.endpoint
        self.stop = threading.Event()
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._security: Security | None = None
        self._routes: dict[str, bytes] = {}
        self._last_progress: dict[str, float] = {}
        self._result_manifests: dict[str, Manifest] = {}
        self._running: str | None = None
        self._next_expiry = 0.0

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> str:
        """Open the store, recover after a crash, bind; returns the bound endpoint."""
        check_service_exposure(self.s)
        runner = self._runner or typing.cast(Runner, load_object(self.s.runner))
        runner_cfg = self._runner_cfg
        if runner_cfg is None:
            runner_cfg = build_options(load_object(self.s.runner_config), self.cfg.finetune)
        self.worker = Worker(runner, runner_cfg)
        self.store.open()
        if self.s.base_bundle:
            store_bundle(Path(self.s.base_bundle), self.store.root / "bundles")
        self._recover()
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
        if self.worker is not None:
            self.worker.join(timeout=30.0)
            if self._running is not None and not self.worker.busy and self.store.is_open:
                self._drain_worker_events()
                job = self.store.get(self._running) if self._running else None
                if job is not None and job.state is JobState.TRAINING:
                    self._apply(job, jl.Interrupted())
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        if self._security is not None:
            self._security.stop()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        self.store.close()

    def run(self) -> None:
        """Serve until ``stop`` is set (READY=1 first, WATCHDOG=1 every loop)."""
        assert self._sock is not None and self.worker is not None
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        if not self.stop.is_set():  # never READY=1 after a stop request
            self.notifier.ready(f"serving on {self.endpoint}")
        self._schedule()
        while not self.stop.is_set():
            self.notifier.watchdog()
            if poller.poll(50):
                for _ in range(64):
                    try:
                        frames = self._sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._on_frames(frames)
            self._drain_worker()
            self._forward_progress()
            self._expire_uploads()
        self.notifier.stopping("shutting down")
        log.info("trainer job service stopping")

    # -- recovery and scheduling ----------------------------------------------------------
    def _recover(self) -> None:
        for job in self.store.jobs():
            if job.state is JobState.CANCELLED:
                self._clean_cancelled(job)  # the trainer went down before it was removed
            elif job.state is JobState.TRAINING:
                log.warning("job %s was training when the trainer went down: resuming", job.key)
                self._apply(job, jl.Restarted(self.s.max_attempts))
            elif job.state is JobState.RECEIVING:
                self._queue_if_complete(job)

    def _schedule(self) -> None:
        assert self.worker is not None
        if self.worker.busy or self._running is not None:
            return
        job = self.store.next_queued()
        if job is None:
            return
        job = self._apply(job, jl.Started())
        self._running = job.key
        log.info("training job %s (agent %s, condition %s)", job.key, job.agent, job.condition)
        self.worker.start(
            WorkSpec(
                key=job.key,
                agent_job=job.agent_job,
                condition=job.condition,
                parent_id=job.parent_id,
                export_dir=self.store.incoming_dir(job.key, "export"),
                parent_upload=self.store.incoming_dir(job.key, "parent"),
                bundles=self.store.root / "bundles",
                lineage=self.store.lineage_root(job.agent),
                out=self.store.train_dir(job.key),
                base_dataset=Path(self.s.base_dataset) if self.s.base_dataset else None,
            )
        )

    def _drain_worker(self) -> None:
        assert self.worker is not None
        self._drain_worker_events()
        if self.stop.is_set():
            return  # shutting down: start nothing new
        if self._running is not None and not self.worker.busy and self.worker.events.empty():
            self._release(self._running)  # a run ended without an event (stopped, cancelled)
        self._schedule()

    def _drain_worker_events(self) -> None:
        assert self.worker is not None
        while True:
            try:
                key, event = self.worker.events.get_nowait()
            except queue.Empty:
                return
            job = self.store.get(key)
            if job is not None:
                self._apply(job, event)
            if key == self._running:
                self._release(key)

    def _release(self, key: str) -> None:
        """The worker let go of ``key``: a cancelled job's files can go now."""
        self._running = None
        job = self.store.get(key)
        if job is not None and job.state is JobState.CANCELLED:
            self._clean_cancelled(job)

    def _clean_cancelled(self, job: Job) -> None:
        """Remove what a cancelled job left (upload, run directory, lineage entry): its data
        is no prior of later jobs. Only while no run uses it."""
        lineage = self.store.lineage_root(job.agent)
        for d in (self.store.job_dir(job.key), lineage / job.key, lineage / f".tmp-{job.key}"):
            if d.exists():
                shutil.rmtree(d, ignore_errors=True)
                log.info("job %s (cancelled): removed %s", job.key, d)

    def _expire_uploads(self) -> None:
        now = time.monotonic()
        if now < self._next_expiry:
            return
        self._next_expiry = now + 60.0
        for job in self.store.stale_uploads(time.time() - self.s.abandon_upload_s):
            log.warning(
                "job %s: upload untouched for %.0f s, abandoned", job.key, self.s.abandon_upload_s
            )
            self._apply(job, jl.Failed(f"upload abandoned after {self.s.abandon_upload_s:.0f} s"))

    def _forward_progress(self) -> None:
        assert self.worker is not None
        now = time.monotonic()
        for key, info in self.worker.take_progress().items():
            if now - self._last_progress.get(key, -1e9) < self.s.progress_interval_s:
                continue
            self._last_progress[key] = now
            job = self.store.get(key)
            if job is not None and job.state is JobState.TRAINING:  # not once cancelled
                self._push(job.agent, "progress", {"key": key, "job": job.agent_job, **info})

    def _apply(self, job: Job, event: jl.Event) -> Job:
        nxt, effects = jl.step(job, event)
        for eff in effects:
            if isinstance(eff, jl.Persist):
                self.store.save(nxt)
            elif isinstance(eff, jl.NotifyAgent):
                self._push(nxt.agent, "job", self._job_header(nxt))
            elif isinstance(eff, jl.DropIncoming):
                for blob in BLOBS:
                    shutil.rmtree(self.store.incoming_dir(nxt.key, blob), ignore_errors=True)
                self.store.forget_chunks(nxt.key)
        if nxt.state is JobState.ACKNOWLEDGED and job.state is not JobState.ACKNOWLEDGED:
            shutil.rmtree(self.store.job_dir(nxt.key), ignore_errors=True)
        if nxt.state is not job.state:
            log.info("job %s: %s -> %s %s", nxt.key, job.state, nxt.state, nxt.detail)
        return nxt

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
            handler = self._handlers().get(msg.type)
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

    def _handlers(self) -> dict[str, Callable[[bytes, dict[str, Any], bytes | None], None]]:
        return {
            "hello": self._hello,
            "ping": self._ping,
            "submit": self._submit,
            "chunk": self._chunk,
            "status": self._status,
            "fetch": self._fetch,
            "get": self._get,
            "ack": self._ack,
            "cancel": self._cancel,
            "jobs": self._jobs,
        }

    # -- requests -------------------------------------------------------------------------
    def _hello(self, ident: bytes, h: dict[str, Any], _: bytes | None) -> None:
        if h.get("protocol") != PROTOCOL or isinstance(h.get("protocol"), bool):
            raise WireError(
                "bad_protocol", f"job protocol {h.get('protocol')!r}; this trainer speaks 1"
            )
        check_name("agent", h.get("agent"))
        self._reply(
            ident,
            "welcome",
            {
                "rid": h.get("rid"),
                "trainer": socket.gethostname(),
                "protocol": PROTOCOL,
                "max_chunk_bytes": self.s.max_chunk_bytes,
                "credit": self.s.credit,
                "heartbeat_s": self.s.heartbeat_s,
            },
        )

    def _ping(self, ident: bytes, h: dict[str, Any], _: bytes | None) -> None:
        agent = check_name("agent", h.get("agent"))
        states = {
            j.key: j.state.value
            for j in self.store.jobs(agent)
            if j.state not in (JobState.ACKNOWLEDGED, JobState.CANCELLED)
        }
        self._reply(ident, "pong", {"rid": h.get("rid"), "jobs": states})

    def _job_header(self, job: Job) -> dict[str, Any]:
        return {
            "key": job.key,
            "job": job.agent_job,
            "state": job.state.value,
            "outcome": job.outcome,
            "bundle_id": job.bundle_id,
            "detail": job.detail,
        }

    def _owned(self, h: dict[str, Any]) -> Job:
        agent = check_name("agent", h.get("agent"))
        key = check_name("key", h.get("key"))
        job = self.store.get(key)
        if job is None or job.agent != agent:
            raise WireError("unknown_job", f"no job {key!r} of agent {agent!r}")
        return job

    def _submit(self, ident: bytes, h: dict[str, Any], _: bytes | None) -> None:
        job, created = self.uploads.accept(h)
        if created:
            job = self._queue_if_complete(job)
        head = {"rid": h.get("rid"), **self._job_header(job)}
        need = self.uploads.need(job)
        self._reply(ident, "accepted", {**head, "need": need, "credit": self.s.credit})

    def _chunk(self, ident: bytes, h: dict[str, Any], data: bytes | None) -> None:
        job = self._owned(h)
        if data is None:
            raise WireError("bad_request", "a chunk carries one data frame")
        ack = {"rid": h.get("rid"), "key": job.key, "blob": h.get("blob"), "file": h.get("file")}
        if job.state is not JobState.RECEIVING:  # complete already: a late or repeated chunk
            self.store.count("chunks.late")
            head = {**ack, "index": h.get("index"), "credit": 1, "state": job.state.value}
            self._reply(ident, "chunk_ok", head)
            return
        verdict, index = self.uploads.receive(job, h, data)
        ack["index"] = index
        if verdict in (Verdict.CHECKSUM, Verdict.WHOLE_CHECKSUM):
            what = (
                "chunk size or sha256 mismatch: send it again"
                if verdict is Verdict.CHECKSUM
                else "the whole file's sha256 differs: every chunk of it must come again"
            )
            head = {**ack, "code": verdict.value, "re": "chunk", "message": what}
            self._reply(ident, "error", head)
            return
        if verdict is Verdict.FILE_DONE:
            job = self._queue_if_complete(job)
        self._reply(ident, "chunk_ok", {**ack, "credit": 1, "state": job.state.value})

    def _queue_if_complete(self, job: Job) -> Job:
        """Queue the job once every file of its upload is verified (also after a crash)."""
        if self.uploads.complete(job):
            return self._apply(job, jl.DataComplete(self.store.next_seq()))
        return job

    def _status(self, ident: bytes, h: dict[str, Any], _: bytes | None) -> None:
        job = self._owned(h)
        self._reply(ident, "job", {"rid": h.get("rid"), **self._job_header(job)})

    def _fetch(self, ident: bytes, h: dict[str, Any], _: bytes | None) -> None:
        job = self._owned(h)
        if job.state not in (*FINISHED, JobState.DELIVERED, JobState.ACKNOWLEDGED):
            raise WireError("not_ready", f"job {job.key} is {job.state.value}: no result yet")
        job = self._apply(job, jl.Fetched())
        head = {"rid": h.get("rid"), **self._job_header(job), "manifest": None}
        if job.bundle_id:
            head["manifest"] = self._result_manifest(job.bundle_id).to_json()
        self._reply(ident, "result", head)

    def _result_manifest(self, bundle_id: str) -> Manifest:
        m = self._result_manifests.get(bundle_id)
        if m is None:
            m = manifest_of_dir(self.store.bundle_dir(bundle_id), self.s.max_chunk_bytes)
            self._result_manifests[bundle_id] = m
        return m

    def _get(self, ident: bytes, h: dict[str, Any], _: bytes | None) -> None:
        job = self._owned(h)
        if not job.bundle_id:
            raise WireError("not_ready", f"job {job.key} has no result bundle")
        m = self._result_manifest(job.bundle_id)
        file = check_name("file", h.get("file"))
        m.entry(file)
        index = check_int("index", h.get("index"), 0, m.chunks(file) - 1)
        data = read_chunk(self.store.bundle_dir(job.bundle_id) / file, index, m.chunk_bytes)
        head = {
            "rid": h.get("rid"),
            "key": job.key,
            "file": file,
            "index": index,
            "sha256": chunk_sha(data),
        }
        self._reply(ident, "data", head, data)

    def _ack(self, ident: bytes, h: dict[str, Any], _: bytes | None) -> None:
        job = self._owned(h)
        first = job.state is not JobState.ACKNOWLEDGED
        try:
            job = self._apply(job, jl.Acknowledged())
        except jl.JobError as exc:
            raise WireError("not_ready", str(exc)) from exc
        refused = h.get("refused")
        if first and isinstance(refused, str) and refused:  # the agent could not verify it
            self.store.count("results.refused")
            log.warning("job %s: the agent refused its result: %s", job.key, refused[:500])
        self._reply(ident, "acked", {"rid": h.get("rid"), **self._job_header(job)})

    def _cancel(self, ident: bytes, h: dict[str, Any], _: bytes | None) -> None:
        job = self._cancel_target(h)
        previous = job.state
        if previous in CANCELLABLE:
            job = self._apply(job, jl.Cancelled())
            assert self.worker is not None
            if self.worker.cancel(job.key):
                log.info("job %s cancelled while training: stopping its run", job.key)
            elif job.key != self._running:
                self._clean_cancelled(job)
        head = {
            "rid": h.get("rid"),
            **self._job_header(job),
            "previous": previous.value,
            "cancelled": job.state is JobState.CANCELLED,
        }
        self._reply(ident, "cancelled", head)

    def _cancel_target(self, h: dict[str, Any]) -> Job:
        """The job a ``cancel`` names: by ``key``, or (an agent that never learnt the key)
        its latest job with agent job number ``job``."""
        if h.get("key") is not None:
            return self._owned(h)
        agent = check_name("agent", h.get("agent"))
        number = check_int("job", h.get("job"))
        mine = [j for j in self.store.jobs(agent) if j.agent_job == number]
        if not mine:
            raise WireError("unknown_job", f"no job {number} of agent {agent!r}")
        return mine[-1]

    def _jobs(self, ident: bytes, h: dict[str, Any], _: bytes | None) -> None:
        rows = [{**r, "detail": str(r["detail"])[:160]} for r in self.store.rows()[-JOBS_LISTED:]]
        self._reply(
            ident,
            "jobs",
            {
                "rid": h.get("rid"),
                "jobs": rows,
                "counters": self.store.counters(),
                "running": self._running,
            },
        )


def serve(
    cfg: TrainerServiceConfig,
    notifier: Notifier | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Run the service until SIGTERM/SIGINT (the ``serve`` subcommand); returns the exit code.

    The first signal stops cleanly (the job in training checkpoints and resumes at the next
    start); a second one exits at once with ``agent.signals.EXIT_SECOND_SIGNAL``. ``stop``:
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
