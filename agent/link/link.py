"""The agent's link to the trainer's job service, on its own thread.

:meth:`TrainerLink.submit` records a job and returns; everything else happens on the
link's thread, so the control loop never waits on the trainer. Per job the link uploads
the export (and the parent, if the trainer lacks it) chunk by chunk with a sha256 each
and at most ``credit`` in flight, resuming with only what the trainer lacks; removes the
export once the trainer holds the whole dataset; follows the job while it is queued and
trains; fetches the result into
``<state_dir>/staging/job-<id>/<bundle id>`` (every chunk and file checked) and calls
``on_result(bundle_dir, job_id)`` once; then acknowledges it. :meth:`TrainerLink.cancel`
abandons a job: the trainer is told (retried while it is away) and nothing of the job is
handed on after it. Records survive an agent restart (:class:`agent.link.records.Records`).

Parts: the transport is :class:`agent.link.session.Session`; what a trainer message means
for a job is :func:`agent.link.jobs.step`'s decision (this module turns messages into its
events and carries out its effects); the upload window and the download are
:mod:`agent.link.transfer`. Statuses to ``on_status(job_id, status, detail)``:
``waiting``, ``uploading``, ``receiving``/``queued``/``training`` (``training`` repeats
with progress), ``downloading``, then ``improved``, ``no_improvement`` or ``failed``; a
cancelled job reports only ``cancelled`` (detail ``trainer_state``).
"""

from __future__ import annotations

import json
import logging
import queue
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.jobwire import JobState, Manifest, check_name
from agent.link import jobs as lj
from agent.link.records import Records
from agent.link.requests import Live, Requests
from agent.link.session import Session
from agent.link.transfer import BundleDownload
from agent.wire import Message, WireError

log = logging.getLogger(__name__)

OnResult = Callable[[Path, int], None]
OnStatus = Callable[[int, str, dict[str, Any]], None]


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
        self.store_dir = Path(store_dir)
        self.on_result = on_result
        self.on_status = on_status
        self.records = Records(cfg.data_path(cfg.trainer.state_dir))
        self.session = Session(self.cfg, self.cfg.agent_id or _host_id())
        self._max_result_bytes = cfg.policy.max_bundle_bytes
        self._clock = clock
        self._inbox: queue.Queue[tuple[str, int, str, str]] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._away_reported = False
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "connects",
                "chunks_sent",
                "chunks_rejected",
                "gets_sent",
                "data_rejected",
                "fetch_failures",
                "results",
            ),
            0,
        )
        """Counters (written by the link's thread only)."""
        self.req = Requests(self.cfg, self.session, self.records, self.store_dir, self, clock)

    # -- public API (any thread) ----------------------------------------------------------
    def start(self) -> None:
        """Load the job records from disk and start the link's thread."""
        if not self.cfg.endpoint:
            raise ValueError("trainer.endpoint is empty: there is no trainer to link to")
        self.records.load()
        self.session.open()
        self._thread = threading.Thread(target=self._run, name="trainer-link", daemon=True)
        self._thread.start()

    def submit(self, job_id: int, export_path: Path, parent_id: str) -> None:
        """Hand a job to the link's thread; returns at once (no I/O: safe on the control
        thread). Idempotent: a job id already recorded is left as it is."""
        self._inbox.put(("submit", int(job_id), str(export_path), str(parent_id)))

    def release(self, job_id: int) -> None:
        """The daemon imported or refused the job's result; returns at once. The link's
        thread removes the staged copy; it is never offered again."""
        self._inbox.put(("release", int(job_id), "", ""))

    def cancel(self, job_id: int) -> None:
        """Abandon a job; returns at once, idempotent. The link's thread records it (an
        agent restart goes on with it) and tells the trainer, retrying while it is away."""
        self._inbox.put(("cancel", int(job_id), "", ""))

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and close the socket (unfinished jobs resume at the next start)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self.session.term()

    def phases(self) -> dict[int, str]:
        """Each known job's phase (a snapshot)."""
        return self.records.phases()

    # -- the job machine and its effects --------------------------------------------------
    def apply(self, rec: lj.LinkJob, event: lj.Event) -> lj.LinkJob:
        nxt, effects = lj.step(rec, event)
        self.records.put(nxt)
        for eff in effects:
            self._do(nxt, eff)
        return nxt

    def _do(self, rec: lj.LinkJob, eff: lj.Effect) -> None:
        now = self._clock()
        match eff:
            case lj.Save():
                self.records.save(rec)
            case lj.Report(status=status, detail=detail, once=once):
                if once:
                    live = self.req.live_of(rec)
                    if live.reported == status:
                        return
                    live.reported = status
                self.report(rec, status, detail)
            case lj.Offer():
                final = self.records.staging(rec.job) / rec.bundle_id
                self.stats["results"] += 1
                try:
                    self.on_result(final, rec.job)
                except Exception:
                    log.exception("on_result(%s, %s) raised", final, rec.job)
                self.report(rec, "improved", {"bundle_id": rec.bundle_id, "path": str(final)})
            case lj.DropStaging():
                shutil.rmtree(self.records.staging(rec.job), ignore_errors=True)
            case lj.DropExport():
                shutil.rmtree(rec.export, ignore_errors=True)
                log.info(
                    "trainer link: job %s: the trainer holds its dataset; export %s removed",
                    rec.job,
                    rec.export,
                )
            case lj.Upload(need=need, credit=credit):
                live = self.req.live_of(rec)
                assert rec.manifest is not None
                m = Manifest.from_json(
                    rec.manifest, max_chunk_bytes=1 << 30, max_total_bytes=1 << 62
                )
                live.upload.reset(need, credit, m.chunks, now)
                if live.upload.drained:
                    live.resubmit_at = now + self.cfg.heartbeat_s
            case lj.Download(manifest=m):
                staging = self.records.staging(rec.job)
                dl = BundleDownload(
                    m, staging / f"{rec.bundle_id}.partial", staging / rec.bundle_id
                )
                self.req.live_of(rec).download = dl
                dl.start()
                info = {"bundle_id": rec.bundle_id, "bytes": m.total_bytes}
                self._do(rec, lj.Report("downloading", info, once=True))
            case lj.Settle(later=later):
                live = self.req.live_of(rec)
                live.awaiting = ""
                if later:
                    live.resubmit_at = now + self.cfg.heartbeat_s
            case lj.ClearUpload():
                self.req.live_of(rec).upload.clear()
            case lj.ForgetLive():
                self.req.forget(rec.job)
            case lj.Hold(seconds=seconds):
                self.req.hold[rec.job] = now + seconds
                log.warning(
                    "trainer link: job %s: download of %s went wrong; again in %.1f s (%d of %d)",
                    rec.job,
                    rec.bundle_id,
                    seconds,
                    rec.fetch_failures,
                    self.cfg.fetch_retries,
                )

    def report(self, rec: lj.LinkJob, status: str, detail: dict[str, Any]) -> None:
        try:
            self.on_status(rec.job, status, detail)
        except Exception:
            log.exception("on_status(%s, %s) raised", rec.job, status)

    # -- the thread -----------------------------------------------------------------------
    def _run(self) -> None:
        for rec in self.records.all():
            staged = (
                bool(rec.bundle_id) and (self.records.staging(rec.job) / rec.bundle_id).is_dir()
            )
            in_store = bool(rec.bundle_id) and (self.store_dir / rec.bundle_id).is_dir()
            exported = bool(rec.export) and Path(rec.export).is_dir()
            self.apply(rec, lj.Started(in_store, staged, exported))
        while not self._stop.is_set():
            try:
                self._take_inbox()
                self._tick()
            except Exception:
                log.exception("trainer link: unexpected error; reconnecting")
                self._disconnect(self._clock(), "error")
        self.session.close()

    def _take_inbox(self) -> None:
        while True:
            try:
                kind, job, export, parent_id = self._inbox.get_nowait()
            except queue.Empty:
                return
            known = self.records.get(job)
            if kind == "cancel":
                if known is None or known.phase in lj.ABANDONED or known.phase in lj.FINAL:
                    log.debug("trainer link: cancel of job %s: nothing to cancel", job)
                    continue
                self.apply(known, lj.Cancel())
                log.info("trainer link: job %s cancelled (trainer job %s)", job, known.key or "-")
            elif kind == "release" and known is not None:
                self.apply(known, lj.Release())
            elif kind == "submit" and known is None:
                self._take_submit(job, export, parent_id)

    def _take_submit(self, job: int, export: str, parent_id: str) -> None:
        try:
            index = json.loads((Path(export) / "index.json").read_text())
            if index.get("format") != "robot-agent-dataset":
                raise ValueError("not a robot-agent-dataset export")
            rec = lj.LinkJob(job, export, parent_id, str(index["condition"]))
        except (OSError, ValueError, KeyError) as exc:
            self.apply(lj.LinkJob(job, export, parent_id, ""), lj.Unusable(f"{export}: {exc}"))
            return
        self.records.save(rec)

    def _tick(self) -> None:
        s = self.session
        now = self._clock()
        if not s.connected:
            if not self.records.active():
                self._stop.wait(0.05)
                return
            if s.due_in(now) > 0:
                self._stop.wait(min(0.05, s.due_in(now)))
                return
            s.connect(now)
            self.stats["connects"] += 1
        for msg in s.receive(self._clock):
            if msg.type == "welcome":
                self._away_reported = False
            else:
                self._on_message(msg)
        now = self._clock()
        if s.silent(now):
            self._disconnect(now, f"no reply from the trainer for {self.cfg.timeout_s:.1f} s")
            return
        if not s.welcomed:
            return
        s.heartbeat(now)
        for rec in self.records.active():
            try:
                self.req.drive(rec, now)
            except OSError as exc:  # its export or parent vanished or is unreadable
                log.exception("trainer link: job %s cannot go on", rec.job)
                self.apply(rec, lj.Unusable(f"{exc}"))

    def _disconnect(self, now: float, why: str) -> None:
        delay = self.session.disconnect(now, why)
        downloading = [j for j, live in self.req.live.items() if live.download is not None]
        self.req.live.clear()
        for job in downloading:  # the download starts over after the reconnect
            rec = self.records.get(job)
            if rec is not None and rec.phase is lj.Phase.FETCH:
                self.fetch_failed(rec, f"line lost while downloading ({why})", now)
        if not self._away_reported:
            self._away_reported = True
            for rec in self.records.active():
                self.apply(rec, lj.Away(why, delay))

    def fetch_failed(self, rec: lj.LinkJob, why: str, now: float) -> None:
        """One download round went wrong (failures within a pause are the same round)."""
        if self.req.held(rec.job, now):
            return
        self.stats["fetch_failures"] += 1
        c = self.cfg
        rec = self.apply(
            rec, lj.FetchFailed(why, c.fetch_retries, c.fetch_backoff_s, c.backoff_max_s)
        )
        if rec.refused:
            log.error("trainer link: job %s: %s", rec.job, rec.refused)

    # -- messages from the trainer --------------------------------------------------------
    def _on_message(self, msg: Message) -> None:
        h, t = msg.header, msg.type
        if t == "pong":
            for key, state in dict(h.get("jobs", {})).items():
                if (rec := self.records.find({"key": key})) is not None:
                    self.apply(rec, lj.TrainerState(str(state)))
            return
        rec = self.records.find(h)
        rid = h.get("rid")
        job_of_rid = self.req.rid_job.pop(rid, None) if isinstance(rid, int) else None
        if rec is None and t == "error" and job_of_rid is not None:
            rec = self.records.get(job_of_rid)
        if rec is None or rec.phase in lj.FINAL:
            return
        live = self.req.live_of(rec)
        on = rec.phase not in lj.ABANDONED  # a cancelled job's pushes and results are dropped
        state, detail = str(h.get("state")), str(h.get("detail", ""))
        if t == "accepted":
            need, credit = h.get("need") or {}, int(h.get("credit", self.session.credit))
            self.apply(rec, lj.Accepted(str(h.get("key")), state, need, max(1, credit)))
        elif t == "cancelled":
            self.apply(rec, lj.CancelReply(h.get("cancelled") is True, state))
        elif t == "chunk_ok" and on:
            live.upload.acked(int(h.get("credit", 1)), self._clock())
            if state != JobState.RECEIVING:
                self.apply(rec, lj.TrainerState(state, detail))
            elif live.upload.drained:
                live.awaiting = ""  # all sent: confirm with a submit (lists anything missing)
        elif t == "error":
            self._on_error(rec, live, h, on)
        elif t == "job" and on:
            if live.awaiting == "status":
                live.awaiting = ""
            self.apply(rec, lj.TrainerState(state, detail))
        elif t == "progress":
            self.apply(
                rec, lj.Progress({k: v for k, v in h.items() if k not in ("key", "job", "rid")})
            )
        elif t == "result" and on:
            self._on_result_header(rec, live, h)
        elif t == "data" and on:
            self._on_data(rec, live, h, msg)
        elif t == "acked":
            self.apply(rec, lj.Acked(state))

    def _on_error(self, rec: lj.LinkJob, live: Live, h: dict[str, Any], on: bool) -> None:
        code, re_ = str(h.get("code")), str(h.get("re"))
        if on and code == "checksum" and re_ == "chunk":
            self.stats["chunks_rejected"] += 1
            live.upload.rejected((str(h["blob"]), str(h["file"]), int(h["index"])))
            return
        if on and code == "whole_checksum":
            live.upload.rejected(None)
            return
        if code == "unknown_job" and on:
            log.warning("trainer forgot job %s (%s): submitting it again", rec.job, rec.key)
        elif code not in ("unknown_job", "not_ready"):
            log.warning(
                "trainer link: job %s: trainer error %s: %s", rec.job, code, h.get("message")
            )
        self.apply(rec, lj.TrainerError(code, re_, str(h.get("message"))))

    def _on_result_header(self, rec: lj.LinkJob, live: Live, h: dict[str, Any]) -> None:
        if rec.phase is not lj.Phase.FETCH or live.download is not None:
            live.awaiting = ""
            return
        outcome, detail = str(h.get("outcome", "")), str(h.get("detail", ""))
        manifest, bid, error, m = h.get("manifest"), "", "", None
        if outcome == "improved" and isinstance(manifest, dict):
            try:
                bid = check_name("bundle_id", h.get("bundle_id"))
                cap = self.session.chunk_bytes
                m = Manifest.from_json(
                    manifest, max_chunk_bytes=cap, max_total_bytes=self._max_result_bytes
                )
            except WireError as exc:  # unusable: the job failed, and the trainer may forget it
                error = str(exc)
        staged = bool(bid) and (self.records.staging(rec.job) / bid).is_dir()
        self.apply(rec, lj.Result(outcome, detail, bid, error, staged, m))

    def _on_data(self, rec: lj.LinkJob, live: Live, h: dict[str, Any], msg: Message) -> None:
        dl, idx = live.download, h.get("index")
        if dl is None or "data" not in msg.arrays or not isinstance(idx, int):
            return
        before, now = dl.rejected, self._clock()
        done = dl.on_data(
            str(h.get("file")), idx, msg.arrays["data"].tobytes(), h.get("sha256"), now
        )
        if dl.rejected > before:
            self.stats["data_rejected"] += dl.rejected - before
            self.fetch_failed(rec, "a chunk or a whole file failed its sha256", now)
        elif done:
            live.download = None
            rec = self.apply(rec, lj.Downloaded())
            self.apply(rec, lj.Deliver())
