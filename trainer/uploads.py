"""Receiving a job's upload on the trainer: manifests, chunks, whole-file checks (no sockets).

:class:`Uploads` turns ``submit`` and ``chunk`` requests into rows and files through the
:class:`trainer.jobstore.JobStore`: a job row is committed before it is acknowledged, a chunk
is recorded only once its bytes are fsynced, a file whose last chunk landed is checked
against its whole sha256 (a mismatch forgets every chunk of it), and :meth:`Uploads.complete`
says when every file of a job is verified, also after a crash between those steps. The
service turns the verdicts into replies and the job lifecycle's events.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Any

from agent.jobwire import Manifest, PartFile, check_int, check_name, chunk_sha, need_of
from agent.wire import WireError
from trainer.jobs import Job, JobState
from trainer.jobstore import JobStore
from trainer.service_config import ServiceConfig

log = logging.getLogger(__name__)

BLOBS = ("export", "parent")
"""The two uploads of a job: the dataset export and (if the trainer lacks it) the parent."""


class Verdict(StrEnum):
    """What became of one chunk."""

    STORED = "stored"
    """Written and recorded."""
    FILE_DONE = "file_done"
    """Written, and its file is now complete and verified."""
    DUPLICATE = "duplicate"
    """Already held: acknowledged, not written again."""
    CHECKSUM = "checksum"
    """Size or sha256 wrong: nothing written, send it again."""
    WHOLE_CHECKSUM = "whole_checksum"
    """The completed file failed its whole sha256: every chunk of it must come again."""


class Uploads:
    """Upload bookkeeping over a job store (used by the service loop's thread only)."""

    def __init__(self, store: JobStore, cfg: ServiceConfig) -> None:
        self.store = store
        self.cfg = cfg

    def accept(self, h: dict[str, Any]) -> tuple[Job, bool]:
        """The job a ``submit`` names, created (and committed) if new; (job, created)."""
        agent = check_name("agent", h.get("agent"))
        agent_job = check_int("job", h.get("job"))
        condition = check_name("condition", h.get("condition"))
        parent_id = check_name("parent_id", h.get("parent_id"))
        caps = {
            "max_chunk_bytes": self.cfg.max_chunk_bytes,
            "max_total_bytes": self.cfg.max_job_bytes,
        }
        export = Manifest.from_json(h.get("export"), **caps)
        key = f"{agent}-{agent_job}-{export.digest()[:12]}"
        job = self.store.get(key)
        if job is not None:
            return job, False
        parent = None
        if not self.store.bundle_dir(parent_id).is_dir():
            if h.get("parent") is None:
                raise WireError(
                    "parent_missing", f"the trainer lacks bundle {parent_id}; send 'parent'"
                )
            parent = Manifest.from_json(h.get("parent"), **caps)
            if export.total_bytes + parent.total_bytes > self.cfg.max_job_bytes:
                raise WireError("too_large", "export plus parent exceed max_job_bytes")
        job = Job(key, agent, agent_job, condition, parent_id)
        self.store.add(job, export, parent)  # committed before the reply
        self.store.count("parent.already_held" if parent is None else "parent.upload")
        log.info("job %s accepted from %s (%d bytes)", key, agent, export.total_bytes)
        return job, True

    def need(self, job: Job) -> dict[str, Any]:
        """Missing chunks per upload and file, as ranges (empty once the data is complete)."""
        if job.state is not JobState.RECEIVING:
            return {}
        need: dict[str, Any] = {}
        export_m, parent_m = self.store.manifests(job.key)
        for blob, m in (("export", export_m), ("parent", parent_m)):
            if m is not None and (n := need_of(m, self.store.have(job.key, blob))):
                need[blob] = n
        return need

    def receive(self, job: Job, h: dict[str, Any], data: bytes) -> tuple[Verdict, int]:
        """Take one chunk of a receiving job; (verdict, index). Raises WireError if malformed."""
        blob = h.get("blob")
        if blob not in BLOBS:
            raise WireError("bad_request", f"blob must be one of {BLOBS}")
        file = check_name("file", h.get("file"))
        export_m, parent_m = self.store.manifests(job.key)
        m = export_m if blob == "export" else parent_m
        if m is None:
            raise WireError("bad_request", "this job does not upload its parent")
        entry = m.entry(file)
        index = check_int("index", h.get("index"), 0, m.chunks(file) - 1)
        want = m.chunk_size(file, index)
        if len(data) > want:
            self.store.count("chunks.too_large")
            raise WireError("too_large", f"chunk {index} of {file}: {len(data)} bytes > {want}")
        if len(data) != want or chunk_sha(data) != h.get("sha256"):
            self.store.count("chunks.rejected")
            return Verdict.CHECKSUM, index
        if self.store.has_chunk(job.key, blob, file, index):
            self.store.count("chunks.duplicate")
            return Verdict.DUPLICATE, index
        PartFile(self.store.incoming_dir(job.key, blob) / file, entry, m.chunk_bytes).write(
            index, data
        )
        self.store.record_chunk(job.key, blob, file, index)
        self.store.count("chunks.written")
        if self.store.chunk_count(job.key, blob, file) < m.chunks(file):
            return Verdict.STORED, index
        if not self._finish_file(job.key, blob, m, file):
            return Verdict.WHOLE_CHECKSUM, index
        return Verdict.FILE_DONE, index

    def _finish_file(self, key: str, blob: str, m: Manifest, file: str) -> bool:
        pf = PartFile(self.store.incoming_dir(key, blob) / file, m.entry(file), m.chunk_bytes)
        if pf.finish():
            self.store.mark_file_done(key, blob, file)
            return True
        self.store.clear_file(key, blob, file)
        self.store.count("files.rejected")
        log.warning("job %s: %s/%s failed its whole-file checksum", key, blob, file)
        return False

    def complete(self, job: Job) -> bool:
        """True once every file of a receiving job is verified (finishing any a crash left)."""
        if job.state is not JobState.RECEIVING:
            return False
        export_m, parent_m = self.store.manifests(job.key)
        if parent_m is not None and self.store.bundle_dir(job.parent_id).is_dir():
            self.store.drop_parent_manifest(job.key)  # another job brought it meanwhile
            parent_m = None
        for blob, m in (("export", export_m), ("parent", parent_m)):
            if m is None:
                continue
            done = self.store.files_done(job.key, blob)
            have = self.store.have(job.key, blob)
            for f in m.files:
                if f.name in done:
                    continue
                if len(have.get(f.name, ())) < m.chunks(f.name):
                    return False
                final = self.store.incoming_dir(job.key, blob) / f.name
                if final.is_file() and not final.with_name(f.name + ".part").exists():
                    self.store.mark_file_done(job.key, blob, f.name)  # renamed before a crash
                elif not self._finish_file(job.key, blob, m, f.name):
                    return False
        return True
