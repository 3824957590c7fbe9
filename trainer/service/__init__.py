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

Modules: :mod:`.server` (:class:`JobService`: the socket, the loop, :func:`serve`),
:mod:`.requests` (one handler per request) and :mod:`.desk` (the job table and
the worker glue).
"""

from trainer.service.server import JobService, serve

__all__ = ["JobService", "serve"]
