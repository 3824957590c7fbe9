"""The demo's summary as text: what the terminal shows at the end and summary.txt holds."""

from __future__ import annotations

from trainer.demo.analysis import Segment, Summary


def _rounds_lines(seg: Segment) -> list[str]:
    """The segment's rounds, races, their cost, and the last winner's figures."""
    lines = []
    for r in seg.rounds:
        if r.taken:
            lines.append(f"  rounds under {r.condition}: {r.taken} ({'; '.join(r.round_lines())})")
        lines += ["  " + x.story() for x in r.races]
        if r.ended is not None:
            lines.append("  " + r.ended.text())
        elif r.taken:
            lines.append("  the rounds were still going when the log ended")
    if seg.races:
        won = sum(x.child_won for x in seg.races)
        open_ = sum(x.outcome != "decided" for x in seg.races)
        lines.append(
            f"  races {len(seg.races)} (a child won {won}"
            + (f"; {open_} undecided" if open_ else "")
            + f"), race cost {seg.race_cost} grasps (served under the arms that lost)"
        )
    if seg.final is not None and seg.last_swap is not None and seg.last_swap != seg.swap:
        lines.append(f"  after the last swap (at {seg.last_swap}) {seg.final.text()}")
        if seg.recovered_final is not None:
            lines.append(
                f"  the last swapped-in policy recovered {seg.recovered_final:.0%} of the drop"
            )
    return lines


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
            rounds = [r for prev in s.segments for r in prev.rounds if r.condition == a.condition]
            lines.append(
                f"  the exploration begun at {a.marked} under {a.world} was still running at "
                f"this change ({a.marked}-{a.submitted if a.submitted is not None else '...'})"
                f": its job trained on both conditions"
                + (f" (its rounds and races are listed under {a.world})" if rounds else "")
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
        lines += _rounds_lines(seg)
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
