"""An in-process twin of the trainer's side of one job, for the link's pure job machine.

The twin keeps the trainer's own job machine (:mod:`trainer.jobs`) and answers each
request the link would send in its current phase (``submit``, ``status``, ``fetch``,
``ack``, ``cancel``) with the event the link's session would make of the trainer's reply.
:func:`converse` runs the link's :func:`agent.link.jobs.step` against it, with no socket,
no thread and no file: every effect is collected, and the two that stand for transfers
(``Download``, then the session's ``Deliver``) are completed at once unless told not to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.link import jobs as lj
from trainer import jobs as tj


@dataclass
class Twin:
    """The trainer, holding one job."""

    job: tj.Job = field(default_factory=lambda: tj.Job("robot-1-abcdef", "robot", 1, "c", "p"))
    missing: int = 3
    """Chunks it still lacks (0: the data is complete)."""
    acks: list[dict[str, Any]] = field(default_factory=list)
    """Each ``ack`` it got (``refused``: why the link gave the result up)."""

    def step(self, event: tj.Event) -> None:
        self.job, _ = tj.step(self.job, event)

    def receive(self, chunks: int) -> None:
        """``chunks`` arrived; the last one completes the data (queued)."""
        self.missing = max(0, self.missing - chunks)
        if self.missing == 0:
            self.step(tj.DataComplete(seq=1))

    def train(self, outcome: str, bundle_id: str = "", detail: str = "") -> None:
        self.step(tj.Started())
        if outcome == "failed":
            self.step(tj.Failed(detail or "the runner raised"))
        else:
            self.step(tj.Finished(outcome, bundle_id, detail))

    @property
    def state(self) -> str:
        return self.job.state.value

    def answer(self, rec: lj.LinkJob) -> lj.Event | None:
        """The event the link's session makes of the trainer's reply to its next request."""
        j, p = self.job, rec.phase
        if p is lj.Phase.UPLOAD:
            need = {"export": {"data.npy": [[0, self.missing]]}} if self.missing else {}
            return lj.Accepted(j.key, self.state, need, 4)
        if p is lj.Phase.WAIT:
            return lj.TrainerState(self.state, j.detail)
        if p is lj.Phase.FETCH:
            if j.state not in tj.FINISHED and j.state is not tj.JobState.DELIVERED:
                return lj.TrainerError("not_ready", "fetch")
            self.step(tj.Fetched())
            return lj.Result(j.outcome, j.detail, j.bundle_id, manifest="manifest")
        if p in (lj.Phase.ACK, lj.Phase.RELEASE):
            self.acks.append({"refused": rec.refused})
            self.step(tj.Acknowledged())
            return lj.Acked(self.state)
        if p is lj.Phase.CANCEL:
            before = self.state
            self.step(tj.Cancelled())
            done = self.job.state is tj.JobState.CANCELLED
            return lj.CancelReply(done, self.state if done else before)
        return None


@dataclass
class Talk:
    """What one conversation produced."""

    rec: lj.LinkJob
    effects: list[lj.Effect] = field(default_factory=list)

    @property
    def reports(self) -> list[tuple[str, dict[str, Any]]]:
        return [(e.status, e.detail) for e in self.effects if isinstance(e, lj.Report)]

    @property
    def offers(self) -> int:
        return sum(isinstance(e, lj.Offer) for e in self.effects)


def apply(talk: Talk, event: lj.Event) -> None:
    """One event into the link's machine; its effects are collected."""
    talk.rec, eff = lj.step(talk.rec, event)
    talk.effects.extend(eff)


def converse(talk: Talk, twin: Twin, turns: int = 20, download_ok: bool = True) -> Talk:
    """Let the link ask and the twin answer until the job is final or nothing changes."""
    for _ in range(turns):
        if talk.rec.phase in lj.FINAL:
            break
        before = talk.rec
        if talk.rec.phase is lj.Phase.DELIVER:
            apply(talk, lj.Deliver())
            continue
        event = twin.answer(talk.rec)
        if event is None:
            break
        n = len(talk.effects)
        apply(talk, event)
        if download_ok and any(isinstance(e, lj.Download) for e in talk.effects[n:]):
            apply(talk, lj.Downloaded())
        if talk.rec == before:
            break
    return talk
