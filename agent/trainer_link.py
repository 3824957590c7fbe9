"""The agent's link to the trainer's job service: one DEALER socket on its own thread.

:meth:`TrainerLink.submit` records a job on disk (a small JSON file) and
returns; everything else happens on the link's thread, so the control loop
never waits on the trainer. For each job the link:

1. uploads the export (and the parent bundle, only if the trainer lacks it:
   the trainer says so), chunk by chunk from disk with a sha256 per chunk, at
   most ``credit`` chunks in flight; after a disconnect it asks the trainer
   what it already has and sends only the rest;
2. follows the job while it is queued and trains (``on_status`` gets each
   state change and the trainer's progress);
3. fetches the result: a bundle is downloaded chunk by chunk into
   ``<state_dir>/staging/job-<id>/<bundle id>`` (every chunk and every whole
   file checked), then ``on_result(bundle_dir, job_id)`` is called once, from
   the link's thread (the daemon validates the bundle off-thread);
4. acknowledges the result, after which the trainer may forget the job.

:meth:`TrainerLink.cancel` abandons a job (the daemon moved on): the link stops
uploading or following it, tells the trainer (``cancel``, retried like any
request while the trainer is away; the trainer stops training it and keeps
nothing), acknowledges a result the trainer had finished anyway, and never
hands that job's results or progress on.

While the trainer is away (no reply for ``timeout_s``) the link closes its
socket and reconnects with exponential backoff; the exports wait on disk, so
memory stays bounded however long it is away. Job records survive an agent
restart: :meth:`start` picks every unfinished job up where it was.

Statuses given to ``on_status(job_id, status, detail)``: ``waiting`` (the
trainer is unreachable), ``uploading``, ``receiving``/``queued``/``training``
(the trainer's states; ``training`` repeats with progress in ``detail``),
``downloading``, then one of ``improved``, ``no_improvement``, ``failed``; a cancelled
job reports only ``cancelled`` (detail ``trainer_state``: the state the cancel found).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from agent.bundle import META_FILE, MODEL_FILE, WEIGHTS_FILE
from agent.config import AgentConfig
from agent.jobwire import (
    PROTOCOL,
    Manifest,
    check_name,
    chunk_sha,
    manifest_of_dir,
    read_chunk,
)
from agent.link_transfer import BundleDownload, UploadWindow
from agent.wire import MAX_HEADER_BYTES, Message, WireError, decode, encode

log = logging.getLogger(__name__)

OnResult = Callable[[Path, int], None]
OnStatus = Callable[[int, str, dict[str, Any]], None]

MAX_OFFERS = 3
"""How often one result bundle is handed to on_result (re-offered at start if not imported)."""
BUNDLE_FILES = (META_FILE, MODEL_FILE, WEIGHTS_FILE)
"""What of a bundle directory is uploaded as a parent."""
_FINISHED = ("done", "no_improvement", "failed", "delivered", "acknowledged")
_FINAL = ("done", "failed", "cancelled")
"""Link phases with nothing left to do."""


@dataclass
class JobRecord:
    """What the link persists about one job (``<state_dir>/jobs/job-<id>.json``)."""

    job: int
    """The agent's job id."""
    export: str
    """Export directory (robot-agent-dataset v1)."""
    parent_id: str
    """Bundle id of the policy to fine-tune (in the agent's store)."""
    condition: str
    """Condition of the export."""
    phase: str = "upload"
    """upload, wait, fetch, deliver, ack, done or failed; cancel, then cancelled."""
    key: str = ""
    """The trainer's id of the job (once accepted)."""
    manifest: dict[str, Any] | None = None
    """The export's manifest (computed once; the export never changes)."""
    outcome: str = ""
    """improved, no_improvement or failed."""
    bundle_id: str = ""
    """Result bundle id (improved)."""
    detail: str = ""
    """The trainer's summary or reason."""
    offers: int = 0
    """Times the result bundle was handed to on_result."""
    cancelled: bool = False
    """The daemon abandoned the job: the trainer is told, nothing more is handed on."""
    fetch_failures: int = 0
    """Download rounds of the result that went wrong (a bad sha256, a stall, a lost line)."""
    refused: str = ""
    """Why the link gave the result up (sent with the ``ack``, so the trainer knows)."""
    released: bool = False
    """The daemon is done with the result (imported or refused): its staged copy is gone
    and it is never offered again."""


@dataclass
class _Live:
    """Per-connection state of a job (reset on every reconnect)."""

    awaiting: str = ""
    """Request whose reply is awaited ("submit", "status", "fetch", "ack") or ""."""
    sent_at: float = 0.0
    """When it was sent."""
    upload: UploadWindow = field(default_factory=UploadWindow)
    """Chunks to send and credit."""
    resubmit_at: float = 0.0
    """Earliest time for the next submit/status."""
    download: BundleDownload | None = None
    """The result bundle being fetched."""
    reported: str = ""
    """Last status given to on_status."""
    last_upload_report: float = 0.0
    """When "uploading" was last reported."""


def _host_id() -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64].strip(".-")
    return name or "agent"


class TrainerLink:
    """Submits fine-tune jobs to the trainer and brings their results back, on its own thread."""

    def __init__(
        self,
        cfg: AgentConfig,
        store_dir: Path,
        on_result: OnResult,
        on_status: OnStatus,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg.trainer
        self.root = cfg.data_path(cfg.trainer.state_dir)
        self.store_dir = Path(store_dir)
        self.on_result = on_result
        self.on_status = on_status
        self.agent_id = self.cfg.agent_id or _host_id()
        self._max_result_bytes = cfg.policy.max_bundle_bytes
        self._clock = clock
        self._inbox: queue.Queue[tuple[str, int, str, str]] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._records: dict[int, JobRecord] = {}
        self._redeliver: list[int] = []
        self._unimported: list[int] = []
        """Jobs whose result was never imported and cannot be offered again (reported failed)."""
        self._hold: dict[int, float] = {}
        """Per job: no download request before this time (backoff after a failed round)."""
        self._live: dict[int, _Live] = {}
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._welcomed = False
        self._credit = 1
        self._chunk_bytes = self.cfg.chunk_bytes
        self._last_rx = 0.0
        self._next_ping = 0.0
        self._next_connect = 0.0
        self._backoff = self.cfg.backoff_min_s
        self._away_reported = False
        self._rid = 0
        self._rid_job: dict[int, int] = {}
        """Job of each unanswered cancel/ack (an error reply names only the request's rid)."""
        self.stats: dict[str, int] = {
            "connects": 0,
            "chunks_sent": 0,
            "chunks_rejected": 0,
            "gets_sent": 0,
            "data_rejected": 0,
            "fetch_failures": 0,
            "results": 0,
        }
        """Counters (written by the link's thread only)."""

    # -- public API (any thread) ----------------------------------------------------------
    def start(self) -> None:
        """Load unfinished jobs from disk and start the link's thread."""
        if not self.cfg.endpoint:
            raise ValueError("trainer.endpoint is empty: there is no trainer to link to")
        (self.root / "jobs").mkdir(parents=True, exist_ok=True)
        (self.root / "staging").mkdir(parents=True, exist_ok=True)
        for f in sorted((self.root / "jobs").glob("job-*.json")):
            try:
                rec = JobRecord(**json.loads(f.read_text()))
            except (OSError, ValueError, TypeError) as exc:
                log.error("%s: unreadable job record, skipped: %s", f, exc)
                continue
            self._records[rec.job] = rec
            again = self._offer_again(rec)
            if rec.phase in _FINAL and not again:
                shutil.rmtree(self._staging(rec.job), ignore_errors=True)
        self._ctx = zmq.Context()
        self._thread = threading.Thread(target=self._run, name="trainer-link", daemon=True)
        self._thread.start()

    def _offer_again(self, rec: JobRecord) -> bool:
        """At start: a delivered bundle that never reached the store (the agent went down
        before importing it) is handed to on_result again, at most MAX_OFFERS times."""
        if rec.outcome != "improved" or rec.phase not in ("ack", "done"):
            return False
        if rec.cancelled or rec.released or (self.store_dir / rec.bundle_id).is_dir():
            return False
        staged = self._staging(rec.job) / rec.bundle_id
        if staged.is_dir() and rec.offers < MAX_OFFERS:
            self._redeliver.append(rec.job)
            return True
        self._unimported.append(rec.job)  # the daemon would wait for it for ever
        return False

    def submit(self, job_id: int, export_path: Path, parent_id: str) -> None:
        """Hand a job to the link's thread; returns at once (no I/O: safe on the control thread).

        The link's thread records it on disk before anything else. Idempotent: a job id
        already recorded is left as it is, so the daemon may offer its queued jobs again
        at every start-up.
        """
        self._inbox.put(("submit", int(job_id), str(export_path), str(parent_id)))

    def release(self, job_id: int) -> None:
        """The daemon imported or refused the job's result; returns at once (no I/O: safe on
        the control thread). The link's thread removes the staged copy; it is never offered
        again."""
        self._inbox.put(("release", int(job_id), "", ""))

    def cancel(self, job_id: int) -> None:
        """Abandon a job; returns at once (no I/O: safe on the control thread), idempotent.

        The link's thread records it (so an agent restart goes on with it), stops uploading
        or following the job and tells the trainer, retrying while it is away; the job's
        results and progress are no longer handed on. A job the link does not know, or one
        already ended, is left as it is.
        """
        self._inbox.put(("cancel", int(job_id), "", ""))

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and close the socket (unfinished jobs resume at the next start)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def phases(self) -> dict[int, str]:
        """Each known job's phase (a snapshot)."""
        with self._lock:
            return {j: r.phase for j, r in self._records.items()}

    # -- persistence ----------------------------------------------------------------------
    def _save(self, rec: JobRecord) -> None:
        path = self.root / "jobs" / f"job-{rec.job}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(asdict(rec), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        with self._lock:
            self._records[rec.job] = rec

    def _staging(self, job: int) -> Path:
        return self.root / "staging" / f"job-{job}"

    def _status(self, rec: JobRecord, status: str, detail: dict[str, Any] | None = None) -> None:
        try:
            self.on_status(rec.job, status, detail or {})
        except Exception:
            log.exception("on_status(%s, %s) raised", rec.job, status)

    # -- the thread -----------------------------------------------------------------------
    def _run(self) -> None:
        for job in self._redeliver:
            rec = self._records[job]
            log.warning(
                "job %s: bundle %s was never imported; offering it again", job, rec.bundle_id
            )
            self._deliver(rec)
        for job in self._unimported:
            rec = self._records[job]
            why = f"result {rec.bundle_id} was never imported (offered {rec.offers} times)"
            log.error("job %s: %s; the job failed", job, why)
            rec.released = True
            self._save(rec)
            shutil.rmtree(self._staging(job), ignore_errors=True)
            self._status(rec, "failed", {"error": why})
        while not self._stop.is_set():
            try:
                self._take_inbox()
                self._tick()
            except Exception:
                log.exception("trainer link: unexpected error; reconnecting")
                self._disconnect(self._clock(), "error")
        self._close_socket()

    def _take_inbox(self) -> None:
        while True:
            try:
                kind, job, export, parent_id = self._inbox.get_nowait()
            except queue.Empty:
                return
            with self._lock:
                known = self._records.get(job)
            if kind == "cancel":
                self._take_cancel(job, known)
                continue
            if kind == "release":
                if known is not None and not known.released:
                    known.released = True
                    self._save(known)
                    shutil.rmtree(self._staging(job), ignore_errors=True)
                continue
            if known is not None:
                continue
            rec = JobRecord(job, export, parent_id, "")
            try:
                index = json.loads((Path(export) / "index.json").read_text())
                if index.get("format") != "robot-agent-dataset":
                    raise ValueError("not a robot-agent-dataset export")
                rec.condition = str(index["condition"])
            except (OSError, ValueError, KeyError) as exc:
                rec.phase, rec.outcome, rec.detail = "failed", "failed", f"{export}: {exc}"
            self._save(rec)
            if rec.phase == "failed":
                self._status(rec, "failed", {"error": rec.detail})

    def _take_cancel(self, job: int, rec: JobRecord | None) -> None:
        if rec is None or rec.cancelled or rec.phase in _FINAL:
            log.info("trainer link: cancel of job %s: nothing to cancel", job)
            return
        rec.cancelled = True
        if rec.phase != "ack":  # "ack": the result was handed on already; release it
            rec.phase = "cancel"
        self._save(rec)
        self._live.pop(job, None)  # drop its upload window or download
        log.info("trainer link: job %s cancelled (trainer job %s)", job, rec.key or "not known")

    def _active(self) -> list[JobRecord]:
        with self._lock:
            return [r for r in self._records.values() if r.phase not in _FINAL]

    def _tick(self) -> None:
        now = self._clock()
        if self._sock is None:
            if not self._active():
                self._stop.wait(0.05)
                return
            if now < self._next_connect:
                self._stop.wait(min(0.05, self._next_connect - now))
                return
            self._connect(now)
        assert self._sock is not None
        if self._sock.poll(20, zmq.POLLIN):
            for _ in range(256):
                try:
                    frames = self._sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._last_rx = self._clock()
                try:
                    self._on_message(decode(frames, max_bytes=self._max_bytes))
                except WireError as exc:
                    log.warning("trainer link: malformed message from the trainer: %s", exc)
        now = self._clock()
        if now - self._last_rx > self.cfg.timeout_s:
            self._disconnect(now, f"no reply from the trainer for {self.cfg.timeout_s:.1f} s")
            return
        if not self._welcomed:
            return
        if now >= self._next_ping:
            self._next_ping = now + self.cfg.heartbeat_s
            self._send("ping", {})
        for rec in self._active():
            try:
                self._drive(rec, now)
            except OSError as exc:  # its export or parent vanished or is unreadable
                log.exception("trainer link: job %s cannot go on", rec.job)
                rec.phase, rec.outcome, rec.detail = "failed", "failed", f"{exc}"
                self._save(rec)
                self._status(rec, "failed", {"error": rec.detail})

    @property
    def _max_bytes(self) -> int:
        return max(self._chunk_bytes, self.cfg.chunk_bytes) + MAX_HEADER_BYTES

    def _connect(self, now: float) -> None:
        assert self._ctx is not None
        s = self._ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.MAXMSGSIZE, self._max_bytes)
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
        self._welcomed = False
        self._last_rx = now
        self.stats["connects"] += 1
        self._send("hello", {"protocol": PROTOCOL})

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        self._welcomed = False

    def _disconnect(self, now: float, why: str) -> None:
        if self._sock is not None:
            log.warning("trainer link: %s; retrying in %.1f s", why, self._backoff)
        self._close_socket()
        downloading = [j for j, live in self._live.items() if live.download is not None]
        self._live.clear()
        for job in downloading:  # the download starts over after the reconnect
            with self._lock:
                rec = self._records.get(job)
            if rec is not None and rec.phase == "fetch":
                self._fetch_failed(rec, f"line lost while downloading ({why})", now)
        delay = self._backoff * (0.8 + 0.4 * random.random())
        self._next_connect = now + delay
        self._backoff = min(self._backoff * 2, self.cfg.backoff_max_s)
        if not self._away_reported:
            self._away_reported = True
            for rec in self._active():
                if rec.cancelled or rec.phase == "ack":  # its verdict was told already
                    continue
                self._status(rec, "waiting", {"reason": why, "retry_in_s": round(delay, 2)})

    def _send(self, type_: str, header: dict[str, Any], data: bytes | None = None) -> bool:
        if self._sock is None:
            return False
        self._rid += 1
        head = {"agent": self.agent_id, "rid": self._rid, **header}
        arrays = None if data is None else {"data": np.frombuffer(data, dtype=np.uint8)}
        try:
            self._sock.send_multipart(
                encode(type_, head, arrays, max_bytes=self._max_bytes), zmq.NOBLOCK
            )
        except zmq.Again:
            return False
        return True

    def _live_of(self, rec: JobRecord) -> _Live:
        live = self._live.get(rec.job)
        if live is None:
            live = self._live[rec.job] = _Live()
        return live

    # -- driving each job -----------------------------------------------------------------
    def _drive(self, rec: JobRecord, now: float) -> None:
        live = self._live_of(rec)
        if live.awaiting and now - live.sent_at > self.cfg.timeout_s:
            live.awaiting = ""  # the request or its reply was lost: ask again
        if rec.phase == "upload":
            self._drive_upload(rec, live, now)
        elif rec.phase == "wait":
            if not live.awaiting and now >= live.resubmit_at and rec.key:
                live.awaiting, live.sent_at = "status", now
                live.resubmit_at = now + 5 * self.cfg.heartbeat_s
                self._send("status", {"key": rec.key})
        elif rec.phase == "fetch":
            self._drive_fetch(rec, live, now)
        elif rec.phase == "deliver":
            self._deliver(rec)
        elif rec.phase == "ack" and not live.awaiting:
            live.awaiting, live.sent_at = "ack", now
            self._send("ack", {"key": rec.key, **({"refused": rec.refused} if rec.refused else {})})
            self._remember_rid(rec)
        elif rec.phase == "cancel" and not live.awaiting and now >= live.resubmit_at:
            live.awaiting, live.sent_at = "cancel", now
            self._send("cancel", {"key": rec.key} if rec.key else {"job": rec.job})
            self._remember_rid(rec)

    def _remember_rid(self, rec: JobRecord) -> None:
        if not rec.cancelled:  # only a cancelled job's errors are matched by rid
            return
        if len(self._rid_job) > 1000:  # replies lost over a long outage: forget the oldest
            self._rid_job.clear()
        self._rid_job[self._rid] = rec.job

    def _drive_upload(self, rec: JobRecord, live: _Live, now: float) -> None:
        up = live.upload
        if up.stalled(now, self.cfg.timeout_s):
            up.clear()  # chunks or their replies lost: ask what is missing
        if not live.awaiting and up.drained:
            if now >= live.resubmit_at:
                self._send_submit(rec, live, now)
            return
        while (item := up.take(now)) is not None:
            if not self._send_chunk(rec, live, *item):
                up.unsent(item)
                break

    def _send_submit(self, rec: JobRecord, live: _Live, now: float) -> None:
        export = Path(rec.export)
        parent_dir = self.store_dir / rec.parent_id
        if not (export / "index.json").is_file() or not parent_dir.is_dir():
            what = export if not (export / "index.json").is_file() else parent_dir
            rec.phase, rec.outcome, rec.detail = "failed", "failed", f"{what} is missing"
            self._save(rec)
            self._status(rec, "failed", {"error": rec.detail})
            return
        if rec.manifest is None or rec.manifest.get("chunk_bytes") != self._chunk_bytes:
            rec.manifest = manifest_of_dir(export, self._chunk_bytes).to_json()
            self._save(rec)
        parent = manifest_of_dir(parent_dir, self._chunk_bytes, BUNDLE_FILES).to_json()
        live.awaiting, live.sent_at = "submit", now
        self._send(
            "submit",
            {
                "job": rec.job,
                "condition": rec.condition,
                "parent_id": rec.parent_id,
                "export": rec.manifest,
                "parent": parent,
            },
        )

    def _send_chunk(self, rec: JobRecord, live: _Live, blob: str, file: str, idx: int) -> bool:
        src = Path(rec.export) if blob == "export" else self.store_dir / rec.parent_id
        data = read_chunk(src / file, idx, self._chunk_bytes)
        head = {"key": rec.key, "blob": blob, "file": file, "index": idx, "sha256": chunk_sha(data)}
        ok = self._send("chunk", head, data)
        if ok:
            self.stats["chunks_sent"] += 1
            live.upload.sent_bytes += len(data)
            now = self._clock()
            if now - live.last_upload_report >= 1.0:
                live.last_upload_report = now
                total = int(sum(f["size"] for f in (rec.manifest or {}).get("files", [])))
                sent = live.upload.sent_bytes
                self._status(rec, "uploading", {"sent_bytes": sent, "export_bytes": total})
        return ok

    def _drive_fetch(self, rec: JobRecord, live: _Live, now: float) -> None:
        if now < self._hold.get(rec.job, 0.0):
            return
        dl = live.download
        if dl is None:
            if not live.awaiting:
                live.awaiting, live.sent_at = "fetch", now
                self._send("fetch", {"key": rec.key})
            return
        if dl.recover_stall(now, self.cfg.timeout_s):
            # requests or replies lost; a data frame over the socket's size cap ends the same
            self._fetch_failed(rec, f"no data for {self.cfg.timeout_s:.1f} s", now)
            return
        while (item := dl.take(self._credit, now)) is not None:
            if not self._send("get", {"key": rec.key, "file": item[0], "index": item[1]}):
                dl.unsent(item)
                break
            self.stats["gets_sent"] += 1

    def _fetch_failed(self, rec: JobRecord, why: str, now: float) -> None:
        """One download round went wrong: back off, or give the result up once the budget
        (``trainer.fetch_retries``) is spent. Failures within a pause are the same round."""
        if now < self._hold.get(rec.job, 0.0):
            return
        rec.fetch_failures += 1
        self.stats["fetch_failures"] += 1
        if rec.fetch_failures > self.cfg.fetch_retries:
            self._refuse_result(
                rec, f"result {rec.bundle_id} refused after {rec.fetch_failures} tries: {why}"
            )
            return
        delay = self.cfg.fetch_backoff_s * 2 ** min(rec.fetch_failures - 1, 30)
        delay = min(delay, self.cfg.backoff_max_s)
        self._hold[rec.job] = now + delay
        self._save(rec)
        log.warning(
            "trainer link: job %s: download of %s went wrong (%s); again in %.1f s (%d of %d)",
            rec.job,
            rec.bundle_id,
            why,
            delay,
            rec.fetch_failures,
            self.cfg.fetch_retries,
        )

    def _refuse_result(self, rec: JobRecord, why: str) -> None:
        """The result cannot be verified: the job failed (the daemon's parent serves on), the
        partial download is removed and the ``ack`` tells the trainer why."""
        log.error("trainer link: job %s: %s", rec.job, why)
        rec.outcome, rec.phase, rec.detail, rec.refused = "failed", "ack", why, why
        self._save(rec)
        self._live.pop(rec.job, None)
        self._hold.pop(rec.job, None)
        shutil.rmtree(self._staging(rec.job), ignore_errors=True)
        self._status(rec, "failed", {"error": why})

    def _deliver(self, rec: JobRecord) -> None:
        final = self._staging(rec.job) / rec.bundle_id
        self.stats["results"] += 1
        rec.offers += 1
        self._save(rec)
        try:
            self.on_result(final, rec.job)
        except Exception:
            log.exception("on_result(%s, %s) raised", final, rec.job)
        if rec.phase not in ("ack", "done"):
            rec.phase = "ack"
            self._save(rec)
        self._status(rec, "improved", {"bundle_id": rec.bundle_id, "path": str(final)})

    # -- messages from the trainer --------------------------------------------------------
    def _record(self, h: dict[str, Any]) -> JobRecord | None:
        key = h.get("key")
        job = h.get("job")
        with self._lock:
            for rec in self._records.values():
                if key and rec.key == key:
                    return rec
            rec_ = self._records.get(job) if isinstance(job, int) else None
        if rec_ is not None and rec_.key in ("", key):
            return rec_
        return None

    def _on_message(self, msg: Message) -> None:
        h = msg.header
        t = msg.type
        now = self._clock()
        if t == "welcome":
            self._welcomed = True
            self._away_reported = False
            self._backoff = self.cfg.backoff_min_s
            self._credit = max(1, int(h.get("credit", 1)))
            self._chunk_bytes = min(self.cfg.chunk_bytes, int(h.get("max_chunk_bytes", 1 << 20)))
            self._next_ping = now
            return
        if t == "pong":
            for key, state in dict(h.get("jobs", {})).items():
                rec = self._record({"key": key})
                if rec is not None and not rec.cancelled:
                    self._trainer_state(rec, str(state), {})
            return
        rec = self._record(h)
        rid = h.get("rid")
        job_of_rid = self._rid_job.pop(rid, None) if isinstance(rid, int) else None
        if rec is None and t == "error" and job_of_rid is not None:
            with self._lock:
                rec = self._records.get(job_of_rid)
        if rec is None or rec.phase in _FINAL:
            return
        live = self._live_of(rec)
        if rec.cancelled:
            self._on_cancelled_message(rec, live, t, h, now)
        elif t == "accepted":
            self._on_accepted(rec, live, h, now)
        elif t == "chunk_ok":
            live.upload.acked(int(h.get("credit", 1)), now)
            if h.get("state") != "receiving":
                self._trainer_state(rec, str(h.get("state")), h)
            elif live.upload.drained:
                live.awaiting = ""  # all sent: confirm with a submit (lists anything missing)
        elif t == "error":
            self._on_error(rec, live, h, now)
        elif t == "job":
            if live.awaiting == "status":
                live.awaiting = ""
            self._trainer_state(rec, str(h.get("state")), h)
        elif t == "progress":
            info = {k: v for k, v in h.items() if k not in ("key", "job", "rid")}
            self._status(rec, "training", info)
        elif t == "result":
            self._on_result_header(rec, live, h)
        elif t == "data":
            self._on_data(rec, live, h, msg)
        elif t == "acked":
            rec.phase = "done"
            self._save(rec)
            live.awaiting = ""

    def _on_cancelled_message(
        self, rec: JobRecord, live: _Live, t: str, h: dict[str, Any], now: float
    ) -> None:
        """A cancelled job: only the replies to ``cancel`` and ``ack`` matter; its results,
        progress and state pushes are dropped."""
        if t == "cancelled" and rec.phase == "cancel":
            live.awaiting = ""
            state = str(h.get("state"))
            if h.get("cancelled") is True or state in ("acknowledged", "cancelled"):
                self._end_cancel(rec, state)
            elif state in _FINISHED:  # it ended before the cancel: release its result
                rec.phase = "ack"
                self._save(rec)
            else:
                live.resubmit_at = now + self.cfg.heartbeat_s
        elif t == "acked" and rec.phase == "ack":
            live.awaiting = ""
            self._end_cancel(rec, str(h.get("state")))
        elif t == "error" and h.get("re") in ("cancel", "ack"):
            live.awaiting = ""
            if h.get("code") == "unknown_job":  # the trainer never had it (or forgot it)
                self._end_cancel(rec, "unknown")
            elif h.get("re") == "ack":  # a result it cannot take back: nothing to release
                self._end_cancel(rec, str(h.get("code")))
            else:
                log.warning("trainer link: cancel of job %s: %s", rec.job, h.get("message"))
                live.resubmit_at = now + self.cfg.heartbeat_s

    def _end_cancel(self, rec: JobRecord, trainer_state: str) -> None:
        rec.phase = "cancelled"
        self._save(rec)
        self._live.pop(rec.job, None)
        if rec.offers == 0:  # never handed on: a partial download is of no use
            shutil.rmtree(self._staging(rec.job), ignore_errors=True)
        self._status(rec, "cancelled", {"trainer_state": trainer_state})

    def _on_accepted(self, rec: JobRecord, live: _Live, h: dict[str, Any], now: float) -> None:
        live.awaiting = ""
        if rec.key != h.get("key"):
            rec.key = str(h.get("key"))
            self._save(rec)
        state = str(h.get("state"))
        if state != "receiving":
            self._trainer_state(rec, state, h)
            return
        self._report(rec, live, "receiving", {})
        assert rec.manifest is not None
        export_m = Manifest.from_json(
            rec.manifest, max_chunk_bytes=1 << 30, max_total_bytes=1 << 62
        )
        need = h.get("need") or {}
        live.upload.reset(need, int(h.get("credit", self._credit)), export_m.chunks, now)
        if live.upload.drained:
            live.resubmit_at = now + self.cfg.heartbeat_s

    def _on_error(self, rec: JobRecord, live: _Live, h: dict[str, Any], now: float) -> None:
        code, re_ = h.get("code"), h.get("re")
        if code == "checksum" and re_ == "chunk":
            self.stats["chunks_rejected"] += 1
            live.upload.rejected((str(h["blob"]), str(h["file"]), int(h["index"])))
            return
        if code == "whole_checksum":
            live.upload.rejected(None)
            return
        if code == "unknown_job":
            log.warning("trainer forgot job %s (%s): submitting it again", rec.job, rec.key)
            rec.key, rec.phase = "", "upload"
            self._save(rec)
            live.awaiting = ""
            live.download = None
            return
        if code == "not_ready":
            live.awaiting = ""
            if rec.phase == "fetch":
                rec.phase = "wait"
                self._save(rec)
            return
        if re_ == "submit" and code in ("too_large", "bad_request", "parent_missing"):
            rec.phase, rec.outcome, rec.detail = "failed", "failed", str(h.get("message"))
            self._save(rec)
            self._status(rec, "failed", {"error": rec.detail})
            return
        log.warning("trainer link: job %s: trainer error %s: %s", rec.job, code, h.get("message"))
        live.awaiting = ""
        live.resubmit_at = now + self.cfg.heartbeat_s

    def _report(self, rec: JobRecord, live: _Live, status: str, detail: dict[str, Any]) -> None:
        if rec.cancelled:  # a progress state in flight when the cancel was sent: nothing after it
            return
        if live.reported != status:
            live.reported = status
            self._status(rec, status, detail)

    def _trainer_state(self, rec: JobRecord, state: str, h: dict[str, Any]) -> None:
        live = self._live_of(rec)
        if state in ("receiving", "queued", "training"):
            self._report(rec, live, state, {"detail": h.get("detail", "")})
        if state == "receiving":
            if rec.phase == "wait":
                rec.phase = "upload"
                self._save(rec)
        elif state in ("queued", "training"):
            if rec.phase == "upload":
                rec.phase = "wait"
                self._save(rec)
                live.upload.clear()
        elif state == "cancelled":  # not by this link (its records were lost): it ended
            rec.phase, rec.outcome = "failed", "failed"
            rec.detail = "the trainer says the job was cancelled"
            self._save(rec)
            self._status(rec, "failed", {"error": rec.detail})
        elif state in _FINISHED and rec.phase in ("upload", "wait"):
            rec.phase = "fetch"
            self._save(rec)
            live.awaiting = ""
        elif state == "acknowledged" and rec.phase == "ack":
            rec.phase = "done"
            self._save(rec)

    def _on_result_header(self, rec: JobRecord, live: _Live, h: dict[str, Any]) -> None:
        live.awaiting = ""
        if rec.phase != "fetch" or live.download is not None:
            return
        rec.outcome = str(h.get("outcome", ""))
        rec.detail = str(h.get("detail", ""))
        manifest = h.get("manifest")
        if rec.outcome == "improved" and isinstance(manifest, dict):
            try:
                rec.bundle_id = check_name("bundle_id", h.get("bundle_id"))
                m = Manifest.from_json(
                    manifest,
                    max_chunk_bytes=self._chunk_bytes,
                    max_total_bytes=self._max_result_bytes,
                )
            except WireError as exc:  # unusable: record why, and let the trainer forget it
                rec.outcome, rec.phase, rec.detail = "failed", "ack", f"result refused: {exc}"
                self._save(rec)
                self._status(rec, "failed", {"error": rec.detail})
                return
            final = self._staging(rec.job) / rec.bundle_id
            if final.is_dir():
                rec.phase = "deliver"
                self._save(rec)
                return
            partial = self._staging(rec.job) / f"{rec.bundle_id}.partial"
            live.download = BundleDownload(m, partial, final)
            live.download.start()
            self._save(rec)
            self._report(
                rec, live, "downloading", {"bundle_id": rec.bundle_id, "bytes": m.total_bytes}
            )
            return
        outcome = rec.outcome if rec.outcome in ("no_improvement", "failed") else "failed"
        rec.outcome = outcome
        rec.phase = "ack"
        self._save(rec)
        key = "error" if outcome == "failed" else "reason"
        self._status(rec, outcome, {key: rec.detail})

    def _on_data(self, rec: JobRecord, live: _Live, h: dict[str, Any], msg: Message) -> None:
        dl = live.download
        idx = h.get("index")
        if dl is None or "data" not in msg.arrays or not isinstance(idx, int):
            return
        before = dl.rejected
        now = self._clock()
        done = dl.on_data(
            str(h.get("file")), idx, msg.arrays["data"].tobytes(), h.get("sha256"), now
        )
        if dl.rejected > before:
            self.stats["data_rejected"] += dl.rejected - before
            self._fetch_failed(rec, "a chunk or a whole file failed its sha256", now)
            return
        if done:
            live.download = None
            rec.phase = "deliver"
            self._save(rec)
            self._deliver(rec)
