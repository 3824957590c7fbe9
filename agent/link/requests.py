"""What the trainer link asks next for each job, by its phase, and the connection's state
of each job (:class:`Live`: the awaited reply, the upload window, the download).

Contract (the link's thread only): :meth:`Requests.drive` sends at most what one job's
phase calls for now: ``submit`` then chunks within the credit (UPLOAD), ``status`` every
five heartbeats (WAIT), ``fetch`` then ``get`` within the credit (FETCH, not during a
backoff hold), ``ack`` (ACK, RELEASE) or ``cancel`` (CANCEL); a request whose reply does
not come within ``timeout_s`` is sent again. The connection's state is dropped on every
reconnect (:meth:`Requests.reset`); nothing here is persisted but an export's manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from agent.bundle import BUNDLE_FILES
from agent.config import TrainerConfig
from agent.jobwire import chunk_sha, manifest_of_dir, read_chunk
from agent.link import jobs as lj
from agent.link.records import Records
from agent.link.session import Session
from agent.link.transfer import BundleDownload, UploadWindow


@dataclass
class Live:
    """Per-connection state of a job (reset on every reconnect)."""

    awaiting: str = ""
    """Request whose reply is awaited ("submit", "status", "fetch", "ack", "cancel") or ""."""
    sent_at: float = 0.0
    upload: UploadWindow = field(default_factory=UploadWindow)
    resubmit_at: float = 0.0
    """Earliest time for the next submit, status or cancel."""
    download: BundleDownload | None = None
    reported: str = ""
    """Last state reported (a state is reported once per change)."""
    last_upload_report: float = 0.0


class Host(Protocol):
    """What the requests need from the link."""

    @property
    def stats(self) -> dict[str, int]: ...
    def apply(self, rec: lj.LinkJob, event: lj.Event) -> lj.LinkJob: ...
    def report(self, rec: lj.LinkJob, status: str, detail: dict[str, Any]) -> None: ...
    def fetch_failed(self, rec: lj.LinkJob, why: str, now: float) -> None: ...


class Requests:
    """The link's requests for every job, and each job's state on this connection."""

    def __init__(
        self,
        cfg: TrainerConfig,
        session: Session,
        records: Records,
        store_dir: Path,
        host: Host,
        clock: Callable[[], float],
    ) -> None:
        self._clock = clock
        self.cfg = cfg
        self.session = session
        self.records = records
        self.store_dir = store_dir
        self.host = host
        self.live: dict[int, Live] = {}
        self.hold: dict[int, float] = {}
        """Per job: no download request before this time (backoff after a failed round)."""
        self.rid_job: dict[int, int] = {}
        """Job of each unanswered cancel/ack (an error reply names only the request's rid)."""

    def live_of(self, rec: lj.LinkJob) -> Live:
        live = self.live.get(rec.job)
        if live is None:
            live = self.live[rec.job] = Live()
        return live

    def forget(self, job: int) -> None:
        self.live.pop(job, None)
        self.hold.pop(job, None)

    def held(self, job: int, now: float) -> bool:
        return now < self.hold.get(job, 0.0)

    def drive(self, rec: lj.LinkJob, now: float) -> None:
        live = self.live_of(rec)
        if live.awaiting and now - live.sent_at > self.cfg.timeout_s:
            live.awaiting = ""  # the request or its reply was lost: ask again
        p, send = rec.phase, self.session.send
        if p is lj.Phase.UPLOAD:
            self._drive_upload(rec, live, now)
        elif p is lj.Phase.WAIT:
            if not live.awaiting and now >= live.resubmit_at and rec.key:
                live.awaiting, live.sent_at = "status", now
                live.resubmit_at = now + 5 * self.cfg.heartbeat_s
                send("status", {"key": rec.key})
        elif p is lj.Phase.FETCH:
            self._drive_fetch(rec, live, now)
        elif p is lj.Phase.DELIVER:
            self.host.apply(rec, lj.Deliver())
        elif p in (lj.Phase.ACK, lj.Phase.RELEASE) and not live.awaiting:
            live.awaiting, live.sent_at = "ack", now
            send("ack", {"key": rec.key, **({"refused": rec.refused} if rec.refused else {})})
            self._remember_rid(rec)
        elif p is lj.Phase.CANCEL and not live.awaiting and now >= live.resubmit_at:
            live.awaiting, live.sent_at = "cancel", now
            send("cancel", {"key": rec.key} if rec.key else {"job": rec.job})
            self._remember_rid(rec)

    def _remember_rid(self, rec: lj.LinkJob) -> None:
        if rec.phase not in lj.ABANDONED:  # only a cancelled job's errors are matched by rid
            return
        if len(self.rid_job) > 1000:  # replies lost over a long outage: forget the oldest
            self.rid_job.clear()
        self.rid_job[self.session.rid] = rec.job

    def _drive_upload(self, rec: lj.LinkJob, live: Live, now: float) -> None:
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

    def _send_submit(self, rec: lj.LinkJob, live: Live, now: float) -> None:
        export, parent_dir = Path(rec.export), self.store_dir / rec.parent_id
        if not (export / "index.json").is_file() or not parent_dir.is_dir():
            what = export if not (export / "index.json").is_file() else parent_dir
            self.host.apply(rec, lj.Unusable(f"{what} is missing"))
            return
        size = self.session.chunk_bytes
        if rec.manifest is None or rec.manifest.get("chunk_bytes") != size:
            rec = replace(rec, manifest=manifest_of_dir(export, size).to_json())
            self.records.save(rec)
        parent = manifest_of_dir(parent_dir, size, BUNDLE_FILES).to_json()
        live.awaiting, live.sent_at = "submit", now
        head = {"job": rec.job, "condition": rec.condition, "parent_id": rec.parent_id}
        self.session.send("submit", {**head, "export": rec.manifest, "parent": parent})

    def _send_chunk(self, rec: lj.LinkJob, live: Live, blob: str, file: str, idx: int) -> bool:
        src = Path(rec.export) if blob == "export" else self.store_dir / rec.parent_id
        data = read_chunk(src / file, idx, self.session.chunk_bytes)
        head = {"key": rec.key, "blob": blob, "file": file, "index": idx, "sha256": chunk_sha(data)}
        ok = self.session.send("chunk", head, data)
        if ok:
            self.host.stats["chunks_sent"] += 1
            live.upload.sent_bytes += len(data)
            now = self._clock()
            if now - live.last_upload_report >= 1.0:
                live.last_upload_report = now
                total = int(sum(f["size"] for f in (rec.manifest or {}).get("files", [])))
                sent = live.upload.sent_bytes
                self.host.report(rec, "uploading", {"sent_bytes": sent, "export_bytes": total})
        return ok

    def _drive_fetch(self, rec: lj.LinkJob, live: Live, now: float) -> None:
        if now < self.hold.get(rec.job, 0.0):
            return
        dl = live.download
        if dl is None:
            if not live.awaiting:
                live.awaiting, live.sent_at = "fetch", now
                self.session.send("fetch", {"key": rec.key})
            return
        if dl.recover_stall(now, self.cfg.timeout_s):
            # requests or replies lost; a data frame over the socket's size cap ends the same
            self.host.fetch_failed(rec, f"no data for {self.cfg.timeout_s:.1f} s", now)
            return
        while (item := dl.take(self.session.credit, now)) is not None:
            if not self.session.send("get", {"key": rec.key, "file": item[0], "index": item[1]}):
                dl.unsent(item)
                break
            self.host.stats["gets_sent"] += 1
