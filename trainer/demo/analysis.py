"""What the demo run did, from its grasp log and the sim schedule (pure: no files, no sockets).

The sim world changes by itself at scheduled grasp counts; the agent is never told. Grasp
``i`` (0-based, in log order) ran in the world's condition at count ``i``, so the schedule
splits the log into one segment per condition. Within each segment after the first:

- **before**: the grasps just before the change (the previous segment, from its trained
  swap on if it had one): how well the agent did before the world changed;
- **between**: from the change to the first trained swap in the segment (or its end):
  the old policy under the new condition (detection, exploration, training time);
- **after**: from that swap to the segment's end: the fine-tuned policy.

Each with N and a Wilson 95% interval. Events (alarms, jobs, swaps, rollbacks) are placed at
the grasp index they happened at: the number of grasps finished when they were recorded.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

Z95 = 1.959963984540054
Z_ONE_SIDED_95 = 1.6448536269514722
"""Two-sided 95% normal quantile."""


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
    """alarm, condition (the agent marked a new one), job, job_result, swap, rollback,
    rejected, probation, or start (the first policy loaded)."""
    index: int
    """Grasps finished when it happened."""
    label: str
    """A few words for the legend and the text summary."""
    policy: str = ""
    """The policy it concerns (swaps, rollbacks, rejections, probation)."""
    detail: str = ""
    """Its code: the alarm kind, the job status, the swap reason, the probation verdict."""


@dataclass(frozen=True)
class Interval:
    """A success rate with its Wilson 95% interval."""

    successes: int
    """Successful grasps."""
    n: int
    """Grasps."""
    rate: float | None
    """successes / n (None when n = 0)."""
    low: float | None
    """Lower end of the 95% interval."""
    high: float | None
    """Upper end of the 95% interval."""

    def text(self) -> str:
        if self.n == 0 or self.rate is None or self.low is None or self.high is None:
            return "   -   (n=0)"
        return f"{self.rate:6.1%} [{self.low:.1%}, {self.high:.1%}] (n={self.n})"


def wilson(successes: int, n: int, z: float = Z95) -> Interval:
    """Wilson score interval of ``successes`` out of ``n`` (n = 0 gives an empty interval)."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return Interval(0, 0, None, None, None)
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return Interval(successes, n, p, max(0.0, centre - half), min(1.0, centre + half))


def rate_of(grasps: Sequence[Grasp]) -> Interval:
    return wilson(sum(g.success for g in grasps), len(grasps))


def rolling(outcomes: Sequence[bool], window: int) -> list[float]:
    """Trailing mean of the last ``window`` outcomes at every index (shorter at the start)."""
    if window < 1:
        raise ValueError("window must be >= 1")
    out: list[float] = []
    total = 0
    for i, ok in enumerate(outcomes):
        total += int(ok)
        if i >= window:
            total -= int(outcomes[i - window])
        out.append(total / min(i + 1, window))
    return out


def place(events: Sequence[Event], grasps: Sequence[Grasp]) -> list[tuple[int, Event]]:
    """Each event with the number of grasps finished by its time (events in time order)."""
    ends = [g.t_end for g in grasps]
    return [(bisect.bisect_right(ends, e.t), e) for e in sorted(events, key=lambda e: e.t)]


def markers(events: Sequence[Event], grasps: Sequence[Grasp]) -> list[Marker]:
    """The drawable events: alarms, job submissions and results, swaps, rollbacks, rejections,
    probation verdicts."""
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
            elif status in ("improved", "no_improvement", "failed"):
                out.append(Marker("job_result", idx, f"job {job} {status}", "", status))
        elif e.topic == "agent.policy.swapped":
            reason = str(d.get("reason", ""))
            kind = "swap" if d.get("previous") else "start"  # the first policy loaded
            out.append(Marker(kind, idx, f"{kind} {pol} ({reason})", pol, reason))
        elif e.topic == "agent.policy.rolled_back":
            reason = str(d.get("reason", ""))
            out.append(Marker("rollback", idx, f"rollback to {pol} ({reason})", pol, reason))
        elif e.topic == "agent.policy.rejected":
            out.append(Marker("rejected", idx, f"rejected {pol}", pol, str(d.get("reason", ""))))
        elif e.topic == "agent.policy.probation":
            verdict = str(d.get("verdict") or "")
            out.append(Marker("probation", idx, f"probation {verdict} ({pol})", pol, verdict))
    return out


@dataclass(frozen=True)
class Segment:
    """One scheduled condition's grasps and what happened in them."""

    condition: str
    """The world's condition (the sim schedule's name)."""
    start: int
    """First grasp index under it."""
    end: int
    """One past its last grasp index (the next change or the end of the log)."""
    before: Interval | None
    """Success just before the change (None for the first segment)."""
    between: Interval
    """Success from the change to the first trained swap (or the segment's end)."""
    after: Interval | None
    """Success from that swap to the segment's end (None without a swap)."""
    alarm: int | None
    """Grasp index of the first success-drop alarm in the segment."""
    marked: int | None
    """Grasp index where the agent marked a new condition in the segment (its alarm acted
    on); None when it did not (e.g. it was still exploring or training)."""
    job: int | None
    """Grasp index of the first job submission in the segment."""
    swap: int | None
    """Grasp index of the first trained swap in the segment."""
    swapped_policy: str | None
    """The policy that swap put in."""
    rollbacks: tuple[int, ...] = ()
    """Grasp indices of rollbacks in the segment."""
    job_results: tuple[str, ...] = ()
    """Job outcomes recorded in the segment (improved, no_improvement, failed)."""
    false_alarms: int = 0
    """Success-drop alarms in the first segment (no change happened)."""

    @property
    def detection_delay(self) -> int | None:
        """Grasps from the change to the alarm."""
        return None if self.alarm is None else self.alarm - self.start

    @property
    def dropped(self) -> bool:
        """Whether success fell at the change: "between" below "before", one-sided
        two-proportion z-test at 5% (a change that costs nothing leaves nothing to detect)."""
        b, m = self.before, self.between
        if b is None or b.n == 0 or m.n == 0:
            return False
        pooled = (b.successes + m.successes) / (b.n + m.n)
        se = math.sqrt(pooled * (1 - pooled) * (1 / b.n + 1 / m.n))
        return se > 0 and (b.successes / b.n - m.successes / m.n) / se > Z_ONE_SIDED_95

    @property
    def recovered(self) -> float | None:
        """Share of the drop (before - between) won back after the swap (after - between)."""
        if self.before is None or self.after is None:
            return None
        b, m, a = self.before.rate, self.between.rate, self.after.rate
        if b is None or m is None or a is None or b - m <= 0:
            return None
        return (a - m) / (b - m)


@dataclass(frozen=True)
class Summary:
    """The whole run."""

    grasps: int
    """Grasps logged."""
    overall: Interval
    """Success over the whole run."""
    segments: tuple[Segment, ...]
    """One per scheduled condition reached."""
    markers: tuple[Marker, ...] = field(default=())
    """Every drawable event."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (intervals as dicts, derived figures included)."""
        segs = []
        for s in self.segments:
            d = asdict(s)
            d["detection_delay"] = s.detection_delay
            d["recovered"] = s.recovered
            d["dropped"] = s.dropped
            d["rollbacks"] = list(s.rollbacks)
            d["job_results"] = list(s.job_results)
            segs.append(d)
        changes = self.segments[1:]
        return {
            "grasps": self.grasps,
            "overall": asdict(self.overall),
            "changes_detected": sum(s.marked is not None for s in changes),
            "changes_missed": [s.condition for s in changes if s.marked is None and s.dropped],
            "changes_without_drop": [
                s.condition for s in changes if s.marked is None and not s.dropped
            ],
            "changes": len(changes),
            "conditions": segs,
            "markers": [asdict(m) for m in self.markers],
        }


def segment_bounds(schedule: Sequence[tuple[int, str]], total: int) -> list[tuple[str, int, int]]:
    """(condition, start, end) of each scheduled condition reached within ``total`` grasps."""
    out: list[tuple[str, int, int]] = []
    for i, (count, name) in enumerate(schedule):
        if count >= total and i > 0:
            break
        nxt = schedule[i + 1][0] if i + 1 < len(schedule) else total
        out.append((name, count, min(nxt, total)))
    return out


def _within(ms: Sequence[Marker], kind: str, lo: int, hi: int) -> list[Marker]:
    return [m for m in ms if m.kind == kind and lo <= m.index < hi]


def summarise(
    grasps: Sequence[Grasp], events: Sequence[Event], schedule: Sequence[tuple[int, str]]
) -> Summary:
    """Segments, intervals and markers of a run (grasps in log order, schedule by count)."""
    ms = markers(events, grasps)
    segs: list[Segment] = []
    prev_from: int | None = None
    for name, start, end in segment_bounds(schedule, len(grasps)):
        trained = [m for m in _within(ms, "swap", start, end) if m.detail.startswith("trained")]
        swap = trained[0] if trained else None
        drops = [m for m in _within(ms, "alarm", start, end) if m.detail == "success_drop"]
        jobs = _within(ms, "job", start, end)
        marks = _within(ms, "condition", start, end)
        cut = swap.index if swap else end
        segs.append(
            Segment(
                condition=name,
                start=start,
                end=end,
                before=None if prev_from is None else rate_of(grasps[prev_from:start]),
                between=rate_of(grasps[start:cut]),
                after=rate_of(grasps[cut:end]) if swap else None,
                alarm=drops[0].index if drops else None,
                marked=marks[0].index if marks else None,
                job=jobs[0].index if jobs else None,
                swap=swap.index if swap else None,
                swapped_policy=swap.policy if swap else None,
                rollbacks=tuple(m.index for m in _within(ms, "rollback", start, end)),
                job_results=tuple(m.detail for m in _within(ms, "job_result", start, end)),
                false_alarms=len(drops) if not segs else 0,
            )
        )
        prev_from = swap.index if swap else start
    return Summary(len(grasps), rate_of(grasps), tuple(segs), tuple(ms))


def summary_text(s: Summary) -> str:
    """The summary as a few lines for the terminal and summary.txt."""
    lines = [f"{s.grasps} grasps, overall success {s.overall.text()}"]
    for seg in s.segments:
        lines.append(f"{seg.condition}: grasps {seg.start}-{seg.end - 1}")
        if seg.before is None:
            lines.append(f"  success           {seg.between.text()}")
            lines.append(f"  false alarms      {seg.false_alarms}")
            continue
        lines.append(f"  before the change {seg.before.text()}")
        lines.append(f"  change -> swap    {seg.between.text()}")
        lines.append(f"  after the swap    {seg.after.text() if seg.after else '   -   (no swap)'}")
        delay = seg.detection_delay
        lines.append(
            "  alarm "
            + (f"after {delay} grasps" if delay is not None else "none")
            + f"; new condition marked at {seg.marked if seg.marked is not None else '-'}"
            + f"; job at {seg.job if seg.job is not None else '-'}"
            + f"; swap at {seg.swap if seg.swap is not None else '-'}"
            + (f" ({seg.swapped_policy})" if seg.swapped_policy else "")
            + (f"; results {', '.join(seg.job_results)}" if seg.job_results else "")
            + (f"; rollbacks at {', '.join(map(str, seg.rollbacks))}" if seg.rollbacks else "")
        )
        rec = seg.recovered
        if rec is not None:
            lines.append(f"  recovered {rec:.0%} of the drop")
    changes = s.segments[1:]
    if changes:
        found = [seg.condition for seg in changes if seg.marked is not None]
        missed = [seg.condition for seg in changes if seg.marked is None and seg.dropped]
        quiet = [seg for seg in changes if seg.marked is None and not seg.dropped]
        lines.append(
            f"changes detected (a new condition marked): {len(found)} of {len(changes)}"
            + (f"; missed: {', '.join(missed)}" if missed else "")
            + "".join(
                f"; no drop to detect: {q.condition} ({q.between.text().split('[')[0].strip()}"
                f" after the change vs {q.before.text().split('[')[0].strip()} before)"
                for q in quiet
                if q.before is not None
            )
        )
    return "\n".join(lines)
