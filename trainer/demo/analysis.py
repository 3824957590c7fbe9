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
    """alarm, condition (the agent marked a new one), job, job_result (improved), refused
    (no improvement or failed: no child), swap, rollback, rejected, probation, or start (the
    first policy loaded)."""
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
            out.append(Marker("rejected", idx, f"rejected {pol}", pol, str(d.get("reason", ""))))
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
        elif e.topic == "agent.policy.swapped" and str(d.get("reason", "")).startswith("trained"):
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


def _explore_span(a: Arc, total: int) -> range:
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
    """Grasp index where the segment's first own exploration ended in a job submission
    (an exploration begun in an earlier segment counts there, see ``carried``)."""
    swap: int | None
    """Grasp index of the first trained swap in the segment."""
    swapped_policy: str | None
    """The policy that swap put in."""
    rollbacks: tuple[int, ...] = ()
    """Grasp indices of rollbacks in the segment."""
    job_results: tuple[str, ...] = ()
    """Outcomes of the jobs of the explorations begun in the segment."""
    false_alarms: int = 0
    """Success-drop alarms in the first segment (no change happened)."""
    alarms: tuple[int, ...] = ()
    """Grasp indices of every success-drop alarm in the segment."""
    explorations: tuple[Arc, ...] = ()
    """Explorations begun in the segment."""
    carried: tuple[Arc, ...] = ()
    """Explorations begun in an earlier segment and still running at this change."""
    swap_from: str | None = None
    """The world condition whose exploration produced the first trained swap."""
    min_drop: float = 0.15
    """The detector's smallest drop worth detecting (the agent's detector.min_drop)."""

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
    def small_drop(self) -> bool:
        """A drop (see :attr:`dropped`) smaller than the detector's ``min_drop``: what the
        detector is not designed to catch."""
        b, m = self.before, self.between
        if not self.dropped or b is None or b.rate is None or m.rate is None:
            return False
        return b.rate - m.rate < self.min_drop

    @property
    def missed(self) -> bool:
        """A drop of at least ``min_drop`` with no alarm at all in the segment and no
        exploration running across its change (one begun earlier collects the new
        condition's grasps too)."""
        return (
            self.before is not None
            and self.dropped
            and not self.small_drop
            and not self.alarms
            and not self.carried
        )

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
class Stop:
    """Why a run ended before its grasp budget."""

    at: int
    """Grasps logged when it stopped."""
    of: int
    """The planned grasps."""
    reason: str
    """Why, in a few words ("the time limit (30 min) was reached", ...)."""

    def text(self) -> str:
        return f"stopped early at grasp {self.at} of {self.of}, because {self.reason}"


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
    stopped: Stop | None = None
    """Set when the run ended before its grasp budget."""
    not_reached: tuple[str, ...] = ()
    """Scheduled conditions the run never reached."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (intervals as dicts, derived figures included)."""
        segs = []
        for s in self.segments:
            d = asdict(s)
            d["detection_delay"] = s.detection_delay
            d["recovered"] = s.recovered
            d["dropped"] = s.dropped
            d["missed"] = s.missed
            d["small_drop"] = s.small_drop
            segs.append(d)
        changes = self.segments[1:]
        return {
            "complete": self.stopped is None,
            "stopped": None if self.stopped is None else asdict(self.stopped),
            "stopped_text": None if self.stopped is None else self.stopped.text(),
            "grasps": self.grasps,
            "overall": asdict(self.overall),
            "changes_detected": sum(s.alarm is not None for s in changes),
            "changes_missed": [s.condition for s in changes if s.missed],
            "changes_without_drop": [
                s.condition for s in changes if s.alarm is None and not s.dropped
            ],
            "changes_inside_exploration": [s.condition for s in changes if s.carried],
            "changes_small_drop": [
                s.condition for s in changes if s.alarm is None and s.small_drop and not s.carried
            ],
            "changes": len(changes),
            "not_reached": list(self.not_reached),
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
    grasps: Sequence[Grasp],
    events: Sequence[Event],
    schedule: Sequence[tuple[int, str]],
    planned: int | None = None,
    stop_reason: str | None = None,
    min_drop: float = 0.15,
) -> Summary:
    """Segments, intervals, explorations and markers of a run (grasps in log order, schedule
    by count). ``planned`` and ``stop_reason``: a run that ended before ``planned`` grasps
    is marked stopped with that reason; ``min_drop``: the agent's detector.min_drop."""
    ms = markers(events, grasps)
    all_arcs = arcs(ms, events, grasps, schedule)
    segs: list[Segment] = []
    prev_from: int | None = None
    for name, start, end in segment_bounds(schedule, len(grasps)):
        trained = [m for m in _within(ms, "swap", start, end) if m.detail.startswith("trained")]
        swap = trained[0] if trained else None
        drops = [m for m in _within(ms, "alarm", start, end) if m.detail == "success_drop"]
        marks = _within(ms, "condition", start, end)
        own = tuple(a for a in all_arcs if start <= a.marked < end)
        carried = tuple(
            a for a in all_arcs if segs and a.marked < start and start in _explore_span(a, end)
        )
        source = next((a for a in all_arcs if swap and a.swap == swap.index), None)
        submitted = [a.submitted for a in own if a.submitted is not None]
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
                job=submitted[0] if submitted else None,
                swap=swap.index if swap else None,
                swapped_policy=swap.policy if swap else None,
                rollbacks=tuple(m.index for m in _within(ms, "rollback", start, end)),
                job_results=tuple(a.result for a in own if a.result is not None),
                false_alarms=len(drops) if not segs else 0,
                alarms=tuple(m.index for m in drops),
                explorations=own,
                carried=carried,
                swap_from=source.world if source else None,
                min_drop=min_drop,
            )
        )
        prev_from = swap.index if swap else start
    stopped = None
    if planned is not None and len(grasps) < planned:
        stopped = Stop(len(grasps), planned, stop_reason or "the agent stopped before its budget")
    reached = {s.condition for s in segs}
    later = [n for c, n in schedule if c >= len(grasps) and n not in reached]
    return Summary(len(grasps), rate_of(grasps), tuple(segs), tuple(ms), stopped, tuple(later))


def summary_text(s: Summary) -> str:
    """The summary as a few lines for the terminal and summary.txt."""
    lines = []
    if s.stopped is not None:
        lines.append(s.stopped.text().upper()[:1] + s.stopped.text()[1:])
        if s.not_reached:
            lines.append(f"never reached: {', '.join(s.not_reached)}")
    lines.append(f"{s.grasps} grasps, overall success {s.overall.text()}")
    for seg in s.segments:
        lines.append(f"{seg.condition}: grasps {seg.start}-{seg.end - 1}")
        if seg.before is None:
            lines.append(f"  success           {seg.between.text()}")
            lines.append(f"  false alarms      {seg.false_alarms}")
        else:
            lines.append(f"  before the change {seg.before.text()}")
            lines.append(f"  change -> swap    {seg.between.text()}")
            after = seg.after.text() if seg.after else "   -   (no swap)"
            lines.append(f"  after the swap    {after}")
            delay = seg.detection_delay
            lines.append(
                f"  alarm after {delay} grasps (at {seg.alarm})"
                if delay is not None
                else "  no alarm"
            )
        for a in seg.carried:
            lines.append(
                f"  the exploration begun at {a.marked} under {a.world} was still running at "
                f"this change ({a.marked}-{a.submitted if a.submitted is not None else '...'})"
                f": its job trained on both conditions"
            )
        for a in seg.explorations:
            lines.append("  " + a.story())
        extra = [i for i in seg.alarms if not any(a.marked == i for a in seg.explorations)]
        if seg.before is not None and seg.alarm in extra:
            extra.remove(seg.alarm)  # already printed as the segment's alarm
        if extra:
            lines.append(
                f"  {len(extra)} alarm(s) the agent did not act on (exploring, training or "
                f"on probation): at {', '.join(map(str, extra[:8]))}"
                + (" ..." if len(extra) > 8 else "")
            )
        if seg.swap is not None and seg.swap_from and seg.swap_from != seg.condition:
            lines.append(
                f"  the swap at {seg.swap} came from the exploration under {seg.swap_from}"
            )
        if seg.rollbacks:
            lines.append(f"  rollbacks at {', '.join(map(str, seg.rollbacks))}")
        rec = seg.recovered
        if rec is not None:
            lines.append(f"  recovered {rec:.0%} of the drop")
    changes = s.segments[1:]
    if changes:
        found = [seg.condition for seg in changes if seg.alarm is not None]
        missed = [seg.condition for seg in changes if seg.missed]
        inside = [seg.condition for seg in changes if seg.alarm is None and seg.carried]
        quiet = [
            seg for seg in changes if seg.alarm is None and not seg.dropped and not seg.carried
        ]
        small = [
            seg
            for seg in changes
            if seg.alarm is None and seg.small_drop and not seg.carried and seg.before is not None
        ]
        lines.append(
            f"changes detected (an alarm in the segment): {len(found)} of {len(changes)}"
            + (f"; missed (a drop with no alarm): {', '.join(missed)}" if missed else "")
            + (
                f"; inside an exploration begun earlier (no alarm of its own): {', '.join(inside)}"
                if inside
                else ""
            )
            + "".join(
                f"; no drop to detect: {q.condition} ({q.between.text().split('[')[0].strip()}"
                f" after the change vs {q.before.text().split('[')[0].strip()} before)"
                for q in quiet
                if q.before is not None
            )
            + "".join(
                f"; a drop below the detector's min_drop ({q.min_drop:.0%}), not alarmed by"
                f" design: {q.condition} ({q.between.text().split('[')[0].strip()} after the"
                f" change vs {q.before.text().split('[')[0].strip()} before)"
                for q in small
                if q.before is not None
            )
        )
    if s.stopped is not None:
        lines.append(s.stopped.text())
    return "\n".join(lines)
