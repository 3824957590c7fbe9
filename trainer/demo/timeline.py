"""What happened when in a demo run: its grasps, the agent's events placed at grasp indices,
the markers worth drawing and the explorations they form (pure: no files, no sockets).

An event is placed at the number of grasps finished when it was recorded. An exploration
(:class:`Arc`) runs from the agent marking a new condition to its job's export, and is
followed to the job's result, the child's swap, its probation and a rollback.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Grasp:
    """One logged grasp."""

    index: int
    """0-based position in the log (= the sim's attempt count when it started)."""
    t_end: float
    """When it finished (unix seconds)."""
    success: bool
    """Object lifted and held."""
    policy: str
    """Policy that chose it."""
    mode: str
    """"serve" or "explore"."""


@dataclass(frozen=True)
class Event:
    """One event of the agent's events table."""

    t: float
    """When it was recorded (unix seconds)."""
    topic: str
    """Dotted topic, e.g. "agent.alarm"."""
    data: dict[str, Any]
    """Its payload."""


@dataclass(frozen=True)
class Marker:
    """Something worth drawing, placed at a grasp index."""

    kind: str
    """alarm, condition (the agent marked a new one), job, job_result (improved), refused
    (no improvement or failed: no child), swap (a trained child, one that won its race, or a
    promote), rollback, rejected, race_lost (a child that lost its race), round (a round's job
    went out), probation, or start (the first policy loaded)."""
    index: int
    """Grasps finished when it happened."""
    label: str
    """A few words for the legend and the text summary."""
    policy: str = ""
    """The policy it concerns (swaps, rollbacks, rejections, probation)."""
    detail: str = ""
    """Its code: the alarm kind, the job status, the swap reason, the probation verdict."""


def trained_swap(reason: str) -> bool:
    """A swap that put in a trained child: swapped in at once (``trained in condition ...``,
    without a race) or after winning its race (``won the race in condition ...``)."""
    return reason.startswith(("trained", "won the race"))


def place(events: Sequence[Event], grasps: Sequence[Grasp]) -> list[tuple[int, Event]]:
    """Each event with the number of grasps finished by its time (events in time order)."""
    ends = [g.t_end for g in grasps]
    return [(bisect.bisect_right(ends, e.t), e) for e in sorted(events, key=lambda e: e.t)]


def markers(events: Sequence[Event], grasps: Sequence[Grasp]) -> list[Marker]:
    """The drawable events: alarms, job submissions and results, rounds, swaps, rollbacks,
    rejections, probation verdicts."""
    out: list[Marker] = []
    for idx, e in place(events, grasps):
        d = e.data
        pol = str(d.get("policy") or "")
        if e.topic == "agent.alarm":
            kind = str(d.get("kind", "?"))
            out.append(Marker("alarm", idx, f"alarm ({kind})", pol, kind))
        elif e.topic == "agent.condition":
            src = str(d.get("source", ""))
            name = d.get("condition")
            out.append(Marker("condition", idx, f"condition {name} marked ({src})", "", src))
        elif e.topic == "agent.job":
            status, job = str(d.get("status", "")), d.get("job")
            if status == "exporting":
                out.append(Marker("job", idx, f"job {job} submitted", "", status))
            elif status == "improved":
                out.append(Marker("job_result", idx, f"job {job} {status}", "", status))
            elif status in ("no_improvement", "failed"):  # the parent serves on
                out.append(Marker("refused", idx, f"job {job} {status}", "", status))
        elif e.topic == "agent.policy.swapped":
            reason = str(d.get("reason", ""))
            kind = "swap" if d.get("previous") else "start"  # the first policy loaded
            out.append(Marker(kind, idx, f"{kind} {pol} ({reason})", pol, reason))
        elif e.topic == "agent.policy.rolled_back":
            reason = str(d.get("reason", ""))
            out.append(Marker("rollback", idx, f"rollback to {pol} ({reason})", pol, reason))
        elif e.topic == "agent.policy.rejected":
            why = str(d.get("reason", ""))
            if why.startswith("lost the race"):  # the race's band shows it
                out.append(Marker("race_lost", idx, f"{pol} lost its race", pol, why))
            else:
                out.append(Marker("rejected", idx, f"rejected {pol}", pol, why))
        elif e.topic == "agent.round" and d.get("event") == "started":
            n = d.get("round")
            out.append(Marker("round", idx, f"round {n}: job sent", "", str(n)))
        elif e.topic == "agent.policy.probation":
            verdict = str(d.get("verdict") or "")
            out.append(Marker("probation", idx, f"probation {verdict} ({pol})", pol, verdict))
    return out


@dataclass(frozen=True)
class Arc:
    """One exploration and what came of it: the agent marked a new condition (its alarm or an
    operator), explored, sent a job, and the job ended (a child swapped in, or not)."""

    condition: str
    """The agent's name for the condition it marked."""
    source: str
    """What marked it: "alarm" or "operator"."""
    marked: int
    """Grasp index of the mark (the exploration starts there)."""
    world: str
    """The world's condition at the mark."""
    job: int | None = None
    """The job its exploration became."""
    submitted: int | None = None
    """Grasp index when the exploration ended and its export began."""
    result: str | None = None
    """improved, no_improvement, failed, cancelled or kept (no trainer)."""
    result_at: int | None = None
    """Grasp index of that result."""
    swap: int | None = None
    """Grasp index of the child's swap."""
    policy: str | None = None
    """The child swapped in."""
    rejected: int | None = None
    """Grasp index where the agent refused the child's bundle."""
    probation: str | None = None
    """The child's probation verdict (pass or fail)."""
    rollback: int | None = None
    """Grasp index of the child's rollback."""
    crossed: tuple[str, ...] = ()
    """World conditions that began while it explored (its job trained on grasps of each)."""
    superseded: int | None = None
    """Grasp index where a newer mark ended it before its job (the world changed again)."""

    def story(self) -> str:
        """One line: mark, exploration, job, result, swap, verdict."""
        end = self.submitted if self.submitted is not None else self.superseded
        out = f"explored {self.marked}-{'...' if end is None else end} (marked by {self.source})"
        if self.superseded is not None and self.submitted is None:
            out += "; ended by a newer mark before its job"
        if self.job is not None:
            out += f"; job {self.job}"
            if self.result is not None:
                out += f" {_RESULT_WORDS.get(self.result, self.result)} at {self.result_at}"
        if self.rejected is not None:
            out += f"; child bundle refused by the agent at {self.rejected}"
        if self.swap is not None:
            out += f"; swapped in at {self.swap} ({self.policy})"
        if self.probation:
            out += f", probation {self.probation}"
        if self.rollback is not None:
            out += f"; rolled back at {self.rollback}"
        if self.crossed:
            out += (
                f"; the exploration ran past the change to {', '.join(self.crossed)}: "
                f"its job trained on {self.world} and {', '.join(self.crossed)} grasps"
            )
        return out


_RESULT_WORDS = {
    "improved": "improved",
    "no_improvement": "refused (no improvement: the parent serves on)",
    "failed": "failed (the parent serves on)",
    "cancelled": "cancelled (a newer condition came first)",
    "kept": "kept (no trainer)",
}


def arcs(
    ms: Sequence[Marker],
    events: Sequence[Event],
    grasps: Sequence[Grasp],
    schedule: Sequence[tuple[int, str]],
) -> list[Arc]:
    """Every exploration of the run, from the condition marks and what followed each."""
    out: list[dict[str, Any]] = []
    by_job: dict[int, dict[str, Any]] = {}
    by_cond: dict[str, dict[str, Any]] = {}
    by_child: dict[str, dict[str, Any]] = {}
    for idx, e in place(events, grasps):
        d = e.data
        if e.topic == "agent.condition":
            a: dict[str, Any] = {
                "condition": str(d.get("condition", "")),
                "source": str(d.get("source", "")),
                "marked": idx,
                "world": world_at(schedule, idx),
            }
            out.append(a)
            by_cond[a["condition"]] = a
        elif e.topic == "agent.job":
            job, status = d.get("job"), str(d.get("status", ""))
            if not isinstance(job, int):
                continue
            if status == "exporting":
                a2 = by_cond.get(str(d.get("condition", "")))
                if a2 is not None and "job" not in a2:
                    a2 |= {"job": job, "submitted": idx}
                    by_job[job] = a2
            elif job in by_job and status in _RESULT_WORDS and "result" not in by_job[job]:
                by_job[job] |= {"result": status, "result_at": idx}
        elif e.topic == "agent.policy.swapped" and trained_swap(str(d.get("reason", ""))):
            a3 = by_cond.get(str(d.get("condition", "")))
            if a3 is not None and "swap" not in a3:
                a3 |= {"swap": idx, "policy": str(d.get("policy") or "")}
                by_child[a3["policy"]] = a3
        elif e.topic == "agent.policy.rejected" and d.get("purpose") == "trained":
            pending = [x for x in out if "job" in x and "swap" not in x and "rejected" not in x]
            if pending:
                pending[-1]["rejected"] = idx
        elif e.topic == "agent.policy.probation":
            a4 = by_child.get(str(d.get("policy") or ""))
            if a4 is not None and "probation" not in a4:
                a4["probation"] = str(d.get("verdict") or "")
        elif e.topic == "agent.policy.rolled_back":
            a5 = by_child.get(str(d.get("previous") or ""))
            if a5 is not None and "rollback" not in a5:
                a5["rollback"] = idx
    done: list[Arc] = []
    for i, a in enumerate(out):
        later = out[i + 1]["marked"] if i + 1 < len(out) else None
        superseded = later if "submitted" not in a else None
        stop = a.get("submitted", len(grasps) if later is None else later)
        crossed = tuple(n for c, n in schedule if a["marked"] < c < stop)
        done.append(Arc(**a, crossed=crossed, superseded=superseded))
    return done


def explore_span(a: Arc, total: int) -> range:
    """Grasp indices an exploration ran over."""
    stop = a.submitted if a.submitted is not None else a.superseded
    return range(a.marked, total if stop is None else stop)


def world_at(schedule: Sequence[tuple[int, str]], index: int) -> str:
    """The world's condition at grasp ``index``."""
    name = schedule[0][1] if schedule else "?"
    for count, cond in schedule:
        if count <= index:
            name = cond
    return name
