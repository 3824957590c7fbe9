"""What the demo run did, from its grasp log and the sim schedule (pure: no files, no sockets).

The sim world changes by itself at scheduled grasp counts; the agent is never told. Grasp
``i`` (0-based, in log order) ran in the world's condition at count ``i``, so the schedule
splits the log into one segment per condition. Within each segment after the first:

- **before**: the grasps just before the change (the previous segment, from its trained
  swap on if it had one): how well the agent did before the world changed;
- **between**: from the change to the first trained swap in the segment (or its end):
  the old policy under the new condition (detection, exploration, training time);
- **after**: from that swap to the segment's end: the fine-tuned policy (with rounds, the
  later rounds' races and winners too);
- **final**: from the segment's last trained swap (a later round's winner) to its end.

A trained swap is a child swapped in at once or one that won its race against its parent.
The rounds and races of each condition the agent marked (:mod:`trainer.demo.races`) belong
to the segment where it was marked, as its explorations do.

Each with N and a Wilson 95% interval. Events (alarms, jobs, swaps, rollbacks) are placed at
the grasp index they happened at: the number of grasps finished when they were recorded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from trainer.demo.races import Race, Rounds, rounds_of
from trainer.demo.timeline import (
    Arc,
    Event,
    Grasp,
    Marker,
    arcs,
    explore_span,
    markers,
    trained_swap,
)

Z95 = 1.959963984540054
"""Two-sided 95% normal quantile."""
Z_ONE_SIDED_95 = 1.6448536269514722
"""One-sided 95% normal quantile."""


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
    rounds: tuple[Rounds, ...] = ()
    """The rounds (jobs, races, why they stopped) under the conditions the agent marked in
    the segment (with its explorations: they belong where they began)."""
    last_swap: int | None = None
    """Grasp index of the last trained swap in the segment (a later round's winner)."""
    final: Interval | None = None
    """Success from the last trained swap to the segment's end (None without a swap)."""

    @property
    def rounds_taken(self) -> int:
        """Rounds (fine-tune jobs) begun under the segment's conditions."""
        return sum(r.taken for r in self.rounds)

    @property
    def races(self) -> tuple[Race, ...]:
        """Its races, in order."""
        return tuple(x for r in self.rounds for x in r.races)

    @property
    def race_cost(self) -> int:
        """Grasps under the arms that lost their races."""
        return sum(r.cost for r in self.rounds)

    @property
    def recovered_final(self) -> float | None:
        """Share of the drop won back by the last swapped-in policy (final - between)."""
        if self.before is None or self.final is None:
            return None
        b, m, a = self.before.rate, self.between.rate, self.final.rate
        if b is None or m is None or a is None or b - m <= 0:
            return None
        return (a - m) / (b - m)

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
    rounds: tuple[Rounds, ...] = ()
    """The rounds and races of every agent condition that had any."""

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
            d["rounds_taken"] = s.rounds_taken
            d["races"] = [_race_json(r) for r in s.races]
            d["race_cost"] = s.race_cost
            d["rounds_ended"] = [r.ended.reason for r in s.rounds if r.ended is not None]
            d["recovered_final"] = s.recovered_final
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
            "rounds_taken": sum(r.taken for r in self.rounds),
            "races": [_race_json(x) for r in self.rounds for x in r.races],
            "race_cost": sum(r.cost for r in self.rounds),
        }


def _race_json(r: Race) -> dict[str, Any]:
    """A race as JSON, with its result and whether the child won."""
    return {**asdict(r), "result": r.result(), "child_won": r.child_won}


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
    all_rounds = rounds_of(events, grasps)
    marked = {a.condition for a in all_arcs}
    segs: list[Segment] = []
    prev_from: int | None = None
    for name, start, end in segment_bounds(schedule, len(grasps)):
        trained = [m for m in _within(ms, "swap", start, end) if trained_swap(m.detail)]
        swap = trained[0] if trained else None
        last = trained[-1] if trained else None
        drops = [m for m in _within(ms, "alarm", start, end) if m.detail == "success_drop"]
        marks = _within(ms, "condition", start, end)
        own = tuple(a for a in all_arcs if start <= a.marked < end)
        names = {a.condition for a in own}
        mine = tuple(
            r
            for r in all_rounds
            if r.condition in names
            or (r.condition not in marked and r.first is not None and start <= r.first < end)
        )
        carried = tuple(
            a for a in all_arcs if segs and a.marked < start and start in explore_span(a, end)
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
                rounds=mine,
                last_swap=last.index if last else None,
                final=rate_of(grasps[last.index : end]) if last else None,
            )
        )
        prev_from = swap.index if swap else start
    stopped = None
    if planned is not None and len(grasps) < planned:
        stopped = Stop(len(grasps), planned, stop_reason or "the agent stopped before its budget")
    reached = {s.condition for s in segs}
    later = [n for c, n in schedule if c >= len(grasps) and n not in reached]
    return Summary(
        len(grasps),
        rate_of(grasps),
        tuple(segs),
        tuple(ms),
        stopped,
        tuple(later),
        tuple(all_rounds),
    )
