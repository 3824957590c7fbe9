"""The job service's request handlers: one method per agent request (docs/trainer-service.md).

A handler checks its request, acts on the :class:`~trainer.service.desk.JobDesk`
and answers through ``reply``; a refusal raises :class:`agent.wire.WireError`
with its code, which the server turns into an ``error`` reply.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any, Protocol

from agent.jobwire import (
    PROTOCOL,
    Manifest,
    check_int,
    check_name,
    chunk_sha,
    manifest_of_dir,
    read_chunk,
)
from agent.wire import WireError
from trainer import jobs as jl
from trainer.jobs import CANCELLABLE, FINISHED, Job, JobState
from trainer.service.desk import JobDesk, job_header
from trainer.service_config import ServiceConfig
from trainer.uploads import Verdict

log = logging.getLogger(__name__)

JOBS_LISTED = 80
"""The ``jobs`` request lists the latest this many jobs (the reply fits the 64 KiB header)."""


class Reply(Protocol):
    """Answer the peer ``ident`` with a message (and a data frame when given)."""

    def __call__(
        self, ident: bytes, type_: str, header: dict[str, Any], data: bytes | None = None
    ) -> None: ...


Handler = Callable[[bytes, dict[str, Any], bytes | None], None]
"""A request handler: (peer ident, request header, data frame or None)."""


class Requests:
    """Every request an agent may send, answered against one desk."""

    def __init__(self, s: ServiceConfig, desk: JobDesk, reply: Reply) -> None:
        self.s = s
        self.desk = desk
        self.store = desk.store
        self._reply = reply
        self._result_manifests: dict[str, Manifest] = {}

    def table(self) -> dict[str, Handler]:
        """Request type -> handler (jobwire's ``AGENT_TO_TRAINER``, in its order)."""
        return {
            "hello": self.hello,
            "ping": self.ping,
            "submit": self.submit,
            "chunk": self.chunk,
            "status": self.status,
            "fetch": self.fetch,
            "get": self.get,
            "ack": self.ack,
            "cancel": self.cancel,
            "jobs": self.jobs,
        }

    def hello(self, ident: bytes, h: dict[str, Any], _: bytes | None) -> None:
        """hello -> welcome: the protocol check and the service's limits (chunk size, credit)."""
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

    def ping(self, ident: bytes, h: dict[str, Any], _: bytes | None) -> None:
        """ping -> pong: the state of each of the agent's jobs not yet acknowledged or cancelled."""
        agent = check_name("agent", h.get("agent"))
        states = {
            j.key: j.state.value
            for j in self.store.jobs(agent)
            if j.state not in (JobState.ACKNOWLEDGED, JobState.CANCELLED)
        }
        self._reply(ident, "pong", {"rid": h.get("rid"), "jobs": states})

    def _owned(self, h: dict[str, Any]) -> Job:
        agent = check_name("agent", h.get("agent"))
        key = check_name("key", h.get("key"))
        job = self.store.get(key)
        if job is None or job.agent != agent:
            raise WireError("unknown_job", f"no job {key!r} of agent {agent!r}")
        return job

    def submit(self, ident: bytes, h: dict[str, Any], _: bytes | None) -> None:
        """submit -> accepted: the job's header, the chunks still needed and the credit."""
        job, created = self.desk.uploads.accept(h)
        if created:
            job = self.desk.queue_if_complete(job)
        head = {"rid": h.get("rid"), **job_header(job)}
        need = self.desk.uploads.need(job)
        self._reply(ident, "accepted", {**head, "need": need, "credit": self.s.credit})

    def chunk(self, ident: bytes, h: dict[str, Any], data: bytes | None) -> None:
        """chunk -> chunk_ok (recorded once fsynced, or late) or error (checksum: send again)."""
        job = self._owned(h)
        if data is None:
            raise WireError("bad_request", "a chunk carries one data frame")
        ack = {"rid": h.get("rid"), "key": job.key, "blob": h.get("blob"), "file": h.get("file")}
        if job.state is not JobState.RECEIVING:  # complete already: a late or repeated chunk
            self.store.count("chunks.late")
            head = {**ack, "index": h.get("index"), "credit": 1, "state": job.state.value}
            self._reply(ident, "chunk_ok", head)
            return
        verdict, index = self.desk.uploads.receive(job, h, data)
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
            job = self.desk.queue_if_complete(job)
        self._reply(ident, "chunk_ok", {**ack, "credit": 1, "state": job.state.value})

    def status(self, ident: bytes, h: dict[str, Any], _: bytes | None) -> None:
        """status -> job: the job's header."""
        job = self._owned(h)
        self._reply(ident, "job", {"rid": h.get("rid"), **job_header(job)})

    def fetch(self, ident: bytes, h: dict[str, Any], _: bytes | None) -> None:
        """fetch -> result: a finished job's header and its bundle's manifest (None: no bundle)."""
        job = self._owned(h)
        if job.state not in (*FINISHED, JobState.DELIVERED, JobState.ACKNOWLEDGED):
            raise WireError("not_ready", f"job {job.key} is {job.state.value}: no result yet")
        job = self.desk.apply(job, jl.Fetched())
        head = {"rid": h.get("rid"), **job_header(job), "manifest": None}
        if job.bundle_id:
            head["manifest"] = self._result_manifest(job.bundle_id).to_json()
        self._reply(ident, "result", head)

    def _result_manifest(self, bundle_id: str) -> Manifest:
        m = self._result_manifests.get(bundle_id)
        if m is None:
            m = manifest_of_dir(self.store.bundle_dir(bundle_id), self.s.max_chunk_bytes)
            self._result_manifests[bundle_id] = m
        return m

    def get(self, ident: bytes, h: dict[str, Any], _: bytes | None) -> None:
        """get -> data: one chunk of the result bundle's file."""
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

    def ack(self, ident: bytes, h: dict[str, Any], _: bytes | None) -> None:
        """ack -> acked: the agent holds the result (or ``refused`` it); the job's files go."""
        job = self._owned(h)
        first = job.state is not JobState.ACKNOWLEDGED
        try:
            job = self.desk.apply(job, jl.Acknowledged())
        except jl.JobError as exc:
            raise WireError("not_ready", str(exc)) from exc
        refused = h.get("refused")
        if first and isinstance(refused, str) and refused:  # the agent could not verify it
            self.store.count("results.refused")
            log.warning("job %s: the agent refused its result: %s", job.key, refused[:500])
        self._reply(ident, "acked", {"rid": h.get("rid"), **job_header(job)})

    def cancel(self, ident: bytes, h: dict[str, Any], _: bytes | None) -> None:
        """cancel -> cancelled: the job ends durably now (a run stops at its next step)."""
        job = self._cancel_target(h)
        previous = job.state
        if previous in CANCELLABLE:
            job = self.desk.cancel(job)
        head = {
            "rid": h.get("rid"),
            **job_header(job),
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

    def jobs(self, ident: bytes, h: dict[str, Any], _: bytes | None) -> None:
        """jobs -> jobs: the latest :data:`JOBS_LISTED` rows, the counters, the running key."""
        rows = [{**r, "detail": str(r["detail"])[:160]} for r in self.store.rows()[-JOBS_LISTED:]]
        self._reply(
            ident,
            "jobs",
            {
                "rid": h.get("rid"),
                "jobs": rows,
                "counters": self.store.counters(),
                "running": self.desk.running,
            },
        )
