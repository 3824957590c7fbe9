"""The job service's job table and worker glue: every job event goes through here.

:class:`JobDesk` applies :mod:`trainer.jobs` events to the rows of
:class:`trainer.jobstore.JobStore` and carries out their effects (persist, tell
the agent, drop an upload), keeps the :class:`trainer.jobworker.Worker` on one
job at a time (FIFO by queue position), recovers after a crash, removes what a
cancelled job left once no run uses it, expires abandoned uploads and forwards
training progress. It knows no socket: what an agent is told goes through the
``push`` callable it is given.
"""

from __future__ import annotations

import logging
import queue
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer import jobs as jl
from trainer.jobs import Job, JobState
from trainer.jobstore import JobStore
from trainer.jobworker import Worker, WorkSpec, store_bundle
from trainer.service_config import TrainerServiceConfig
from trainer.uploads import BLOBS, Uploads

log = logging.getLogger(__name__)

Push = Callable[[str, str, dict[str, Any]], None]
"""Send (agent, message type, header) to an agent if it is connected; never raises."""


def job_header(job: Job) -> dict[str, Any]:
    """What an agent is told about ``job`` (the ``job`` message and most replies)."""
    return {
        "key": job.key,
        "job": job.agent_job,
        "state": job.state.value,
        "outcome": job.outcome,
        "bundle_id": job.bundle_id,
        "detail": job.detail,
    }


class JobDesk:
    """The job table, the uploads and the worker of one service (see the module doc)."""

    def __init__(self, cfg: TrainerServiceConfig, push: Push) -> None:
        self.s = cfg.service
        self.store = JobStore(cfg.data_root())
        self.uploads = Uploads(self.store, cfg.service)
        self.worker: Worker | None = None
        self.running: str | None = None
        """Key of the job the worker holds (None: idle)."""
        self.next_expiry = 0.0
        """Monotonic time of the next abandoned-upload check."""
        self._push = push
        self._last_progress: dict[str, float] = {}

    def open(self, worker: Worker) -> None:
        """Open the store, install the base bundle, recover what a crash left."""
        self.worker = worker
        self.store.open()
        if self.s.base_bundle:
            store_bundle(Path(self.s.base_bundle), self.store.root / "bundles")
        self._recover()

    def stop_worker(self) -> None:
        """Wait for the run in progress; a job it left training is marked interrupted."""
        if self.worker is None:
            return
        self.worker.join(timeout=30.0)
        if self.running is not None and not self.worker.busy and self.store.is_open:
            self._drain_events()
            job = self.store.get(self.running) if self.running else None
            if job is not None and job.state is JobState.TRAINING:
                self.apply(job, jl.Interrupted())

    def close(self) -> None:
        self.store.close()

    # -- recovery and scheduling ----------------------------------------------------------
    def _recover(self) -> None:
        for job in self.store.jobs():
            if job.state is JobState.CANCELLED:
                self.clean_cancelled(job)  # the trainer went down before it was removed
            elif job.state is JobState.TRAINING:
                log.warning("job %s was training when the trainer went down: resuming", job.key)
                self.apply(job, jl.Restarted(self.s.max_attempts))
            elif job.state is JobState.RECEIVING:
                self.queue_if_complete(job)

    def schedule(self) -> None:
        """Start the next queued job when the worker is free."""
        assert self.worker is not None
        if self.worker.busy or self.running is not None:
            return
        job = self.store.next_queued()
        if job is None:
            return
        job = self.apply(job, jl.Started())
        self.running = job.key
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

    def drain_worker(self, stopping: bool) -> None:
        """Apply the worker's events; unless ``stopping``, start the next job."""
        assert self.worker is not None
        self._drain_events()
        if stopping:
            return  # shutting down: start nothing new
        if self.running is not None and not self.worker.busy and self.worker.events.empty():
            self._release(self.running)  # a run ended without an event (stopped, cancelled)
        self.schedule()

    def _drain_events(self) -> None:
        assert self.worker is not None
        while True:
            try:
                key, event = self.worker.events.get_nowait()
            except queue.Empty:
                return
            job = self.store.get(key)
            if job is not None:
                self.apply(job, event)
            if key == self.running:
                self._release(key)

    def _release(self, key: str) -> None:
        """The worker let go of ``key``: a cancelled job's files can go now."""
        self.running = None
        job = self.store.get(key)
        if job is not None and job.state is JobState.CANCELLED:
            self.clean_cancelled(job)

    def clean_cancelled(self, job: Job) -> None:
        """Remove what a cancelled job left (upload, run directory, lineage entry): its data
        is no prior of later jobs. Only while no run uses it."""
        lineage = self.store.lineage_root(job.agent)
        for d in (self.store.job_dir(job.key), lineage / job.key, lineage / f".tmp-{job.key}"):
            if d.exists():
                shutil.rmtree(d, ignore_errors=True)
                log.info("job %s (cancelled): removed %s", job.key, d)

    def cancel(self, job: Job) -> Job:
        """End ``job`` as cancelled (it must be cancellable): its run stops at its next step,
        and its files go now when no run holds it."""
        job = self.apply(job, jl.Cancelled())
        assert self.worker is not None
        if self.worker.cancel(job.key):
            log.info("job %s cancelled while training: stopping its run", job.key)
        elif job.key != self.running:
            self.clean_cancelled(job)
        return job

    def expire_uploads(self) -> None:
        """Fail uploads untouched for ``abandon_upload_s`` (checked once a minute)."""
        now = time.monotonic()
        if now < self.next_expiry:
            return
        self.next_expiry = now + 60.0
        for job in self.store.stale_uploads(time.time() - self.s.abandon_upload_s):
            log.warning(
                "job %s: upload untouched for %.0f s, abandoned", job.key, self.s.abandon_upload_s
            )
            self.apply(job, jl.Failed(f"upload abandoned after {self.s.abandon_upload_s:.0f} s"))

    def forward_progress(self) -> None:
        """Push the latest progress of a training job to its agent (rate-limited per job)."""
        assert self.worker is not None
        now = time.monotonic()
        for key, info in self.worker.take_progress().items():
            if now - self._last_progress.get(key, -1e9) < self.s.progress_interval_s:
                continue
            self._last_progress[key] = now
            job = self.store.get(key)
            if job is not None and job.state is JobState.TRAINING:  # not once cancelled
                self._push(job.agent, "progress", {"key": key, "job": job.agent_job, **info})

    def apply(self, job: Job, event: jl.Event) -> Job:
        """Step ``job`` by ``event`` and carry out the effects; returns the new row.
        Raises :class:`trainer.jobs.JobError` when the event does not apply."""
        nxt, effects = jl.step(job, event)
        for eff in effects:
            if isinstance(eff, jl.Persist):
                self.store.save(nxt)
            elif isinstance(eff, jl.NotifyAgent):
                self._push(nxt.agent, "job", job_header(nxt))
            elif isinstance(eff, jl.DropIncoming):
                for blob in BLOBS:
                    shutil.rmtree(self.store.incoming_dir(nxt.key, blob), ignore_errors=True)
                self.store.forget_chunks(nxt.key)
        if nxt.state is JobState.ACKNOWLEDGED and job.state is not JobState.ACKNOWLEDGED:
            shutil.rmtree(self.store.job_dir(nxt.key), ignore_errors=True)
        if nxt.state is not job.state:
            log.info("job %s: %s -> %s %s", nxt.key, job.state, nxt.state, nxt.detail)
        return nxt

    def queue_if_complete(self, job: Job) -> Job:
        """Queue the job once every file of its upload is verified (also after a crash)."""
        if self.uploads.complete(job):
            return self.apply(job, jl.DataComplete(self.store.next_seq()))
        return job
