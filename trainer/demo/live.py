"""The demo's terminal view of the agent's PUB events (pure: events in, text out).

:meth:`LiveView.apply` takes one event and returns the lines worth printing on their own
(alarms, conditions, jobs, rounds, races, swaps, rollbacks, rejections, errors);
:meth:`LiveView.status` is the one-line status: grasps, the world's condition (from the
schedule: the agent does not know it), the agent's phase and condition, rolling success, the
round under way, each arm's race grasps while a trained child races its parent, and a
progress bar while a job trains.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

BAR = 20
"""Width of the training progress bar in characters."""


@dataclass
class LiveView:
    """What the demo knows about the run so far, from the event stream."""

    schedule: Sequence[tuple[int, str]]
    """The world's schedule (grasp count, condition)."""
    total: int
    """The run's grasp budget."""
    window: int = 50
    """Grasps in the rolling success rate."""
    grasps: int = 0
    """Grasps seen (agent.grasp events)."""
    last_id: int = 0
    """Grasp id of the latest grasp event (ids count from 1 in a fresh log)."""
    phase: str = "serving"
    """The agent's phase as the events tell it."""
    condition: str = ""
    """The agent's name for its current condition."""
    policy: str = ""
    """The serving policy."""
    alarms: int = 0
    """Alarms seen."""
    swaps: int = 0
    """Swaps seen (trained or promoted)."""
    rollbacks: int = 0
    """Rollbacks seen."""
    job: int | None = None
    """The job in flight."""
    job_status: str = ""
    """Its latest status."""
    progress: tuple[str, int, int] | None = None
    """(phase, step, max_steps) of the job while it trains (phase: the trainer's, e.g. probe)."""
    recent: collections.deque[bool] = field(default_factory=collections.deque)
    """The last ``window`` outcomes."""
    job_lines: dict[int, str] = field(default_factory=dict)
    """The last status printed per job (a status is printed once)."""
    muted_alarms: int = 0
    """Success-drop alarms while exploring or training since the phase began (the first is
    printed, the rest counted)."""
    round: int = 0
    """The round under way under the agent's condition (0: none; it counts from 1)."""
    race: dict[str, list[int]] | None = None
    """While a race runs: [grasps, successes] per policy, the parent first."""

    def _set_phase(self, phase: str) -> None:
        if phase != self.phase:
            self.muted_alarms = 0
        self.phase = phase

    def world(self) -> str:
        """The world's condition at the current grasp count (what the agent must find)."""
        name = self.schedule[0][1] if self.schedule else "?"
        for count, cond in self.schedule:
            if count <= self.last_id:
                name = cond
        return name

    def rate(self) -> float | None:
        return sum(self.recent) / len(self.recent) if self.recent else None

    def apply(self, topic: str, data: dict[str, Any]) -> list[str]:
        """Fold one event in; returns the lines to print for it (most events: none)."""
        if topic == "agent.grasp":
            self.grasps += 1
            self.last_id = int(data.get("id") or self.last_id + 1)
            self.recent.append(bool(data.get("success")))
            while len(self.recent) > self.window:
                self.recent.popleft()
            self.policy = str(data.get("policy") or self.policy)
            self.condition = str(data.get("condition") or self.condition)
            if data.get("mode") == "explore":
                self._set_phase("exploring")
            if self.phase == "racing" and self.race is not None and self.policy in self.race:
                arm = self.race[self.policy]
                arm[0] += 1
                arm[1] += int(bool(data.get("success")))
            return []
        at = f"[grasp {self.last_id:>5}, world: {self.world()}]"
        if topic == "agent.alarm":
            self.alarms += 1
            if data.get("kind") == "job_failed":
                self.job, self.progress = None, None
                self._set_phase("exploring")
            if self.phase in ("exploring", "training") and data.get("kind") == "success_drop":
                # the agent does not act on these while it explores or trains: one line each time
                self.muted_alarms += 1
                if self.muted_alarms > 1:
                    return []
            rate = data.get("recent_rate")
            ref = data.get("reference")
            figures = (
                f" (recent {rate:.0%} vs reference {ref:.0%})"
                if isinstance(rate, int | float) and isinstance(ref, int | float)
                else ""
            )
            line = f"{at} ALARM {data.get('kind', '?')}: {data.get('reason', '')}{figures}"
            if self.muted_alarms == 1:
                line += f" (while {self.phase}: further ones only counted)"
            return [line]
        if topic == "agent.condition":
            self.condition = str(data.get("condition", ""))
            self.round, self.race = 0, None
            self._set_phase("exploring")
            return [f"{at} new condition {self.condition!r} ({data.get('source', '')}); exploring"]
        if topic == "agent.job":
            return self._job(at, data)
        if topic == "agent.race":
            return self._race(at, data)
        if topic == "agent.round":
            return self._round(at, data)
        if topic == "agent.policy.swapped":
            self.swaps += 1
            self.policy = str(data.get("policy", ""))
            self._set_phase("probation" if data.get("probation_parent") else "serving")
            self.job, self.progress = None, None
            return [f"{at} SWAP to {self.policy} ({data.get('reason', '')})"]
        if topic == "agent.policy.rolled_back":
            self.rollbacks += 1
            self.policy = str(data.get("policy", ""))
            self._set_phase("serving")
            return [f"{at} ROLLBACK to {self.policy} ({data.get('reason', '')})"]
        if topic == "agent.policy.rejected":
            if data.get("purpose") == "trained":  # the job ends with it (the parent serves on)
                self.job, self.progress = None, None
            what = "child" if str(data.get("reason", "")).startswith("lost the race") else "bundle"
            return [f"{at} {what} {data.get('policy')} rejected: {data.get('reason', '')}"]
        if topic == "agent.policy.probation":
            if self.phase == "probation":
                self._set_phase("serving")
            return [
                f"{at} probation of {data.get('policy')}: {data.get('verdict')} "
                f"({data.get('successes')}/{data.get('grasps')} vs parent "
                f"{data.get('parent_rate')})"
            ]
        if topic == "agent.error":
            return [f"{at} agent error in {data.get('where')}: {data.get('message', '')}"]
        return []

    def _race(self, at: str, data: dict[str, Any]) -> list[str]:
        event = data.get("event")
        if event == "started":
            parent = str(data.get("parent", ""))
            listed = data.get("candidates")
            children = [str(c) for c in listed] if isinstance(listed, list) else []
            self.race = {parent: [0, 0], **{c: [0, 0] for c in children}}
            self.job, self.progress = None, None  # the job is settled: its child races
            if isinstance(data.get("round"), int) and data["round"] > 0:
                self.round = int(data["round"])
            self._set_phase("racing")
            return [
                f"{at} RACE round {data.get('round')}: child {', '.join(children)} vs parent "
                f"{parent} on alternate grasps"
            ]
        if event == "eliminated":
            return [f"{at} race: {data.get('policy')} eliminated ({data.get('reason', '')})"]
        if event == "decided":
            self.race = None
            self._set_phase("serving")  # a swap or the next round's events follow
            winner, kept = data.get("winner"), data.get("parent")
            rows = data.get("arms")
            arms = [a for a in rows if isinstance(a, dict)] if isinstance(rows, list) else []
            figures = ", ".join(
                f"{'parent' if a.get('policy') == kept else 'child'} "
                f"{a.get('successes')}/{a.get('grasps')}"
                for a in arms
            )
            who = f"child {winner} won" if winner != kept else f"parent {kept} kept"
            return [
                f"{at} RACE decided: {who} ({data.get('reason', '')}; {figures}), "
                f"cost {data.get('cost')} grasps"
            ]
        if event == "abandoned":
            self.race = None
            return [
                f"{at} race abandoned after {data.get('grasps')} grasps ({data.get('reason', '')})"
            ]
        return []

    def _round(self, at: str, data: dict[str, Any]) -> list[str]:
        event, n = data.get("event"), data.get("round")
        if event == "started":
            self.round = int(n) if isinstance(n, int) else self.round + 1
            return [f"{at} round {n}: job sent (parent {data.get('parent')})"]
        if event == "collecting":
            self._set_phase("exploring")
            return [
                f"{at} round {n}: collecting grasps for its job "
                f"({data.get('grasps')} grasps since the change)"
            ]
        if event == "ended":
            self.round = 0
            self._set_phase("serving")
            level, before = data.get("level"), data.get("level_before")
            levels = ""
            if isinstance(level, int | float):
                levels = f"level {level:.0%}"
                if isinstance(before, int | float):
                    levels += f" vs {before:.0%} before the change"
                levels += "; "
            return [
                f"{at} rounds ended after {data.get('rounds')} round(s): {data.get('reason')} "
                f"({levels}{data.get('grasps')} grasps since the change, race cost "
                f"{data.get('cost')} grasps)"
            ]
        return []

    def _job(self, at: str, data: dict[str, Any]) -> list[str]:
        status = str(data.get("status", ""))
        job = data.get("job")
        raw = data.get("detail")
        detail: dict[str, Any] = raw if isinstance(raw, dict) else {}
        if status == "exporting":
            self.job, self.progress = int(job or 0), None
            self._set_phase("training")
        self.job_status = status
        if status == "training":
            step, top = detail.get("step"), detail.get("max_steps")
            if isinstance(step, int) and isinstance(top, int) and top > 0:
                self.progress = (str(detail.get("phase") or "train"), step, top)
                return []  # progress repeats: shown in the status line only
        if status in ("no_improvement",):
            self.job, self.progress = None, None
            self._set_phase("serving")
        elif status == "failed":
            self.job, self.progress = None, None
            self._set_phase("exploring")
        elif status == "cancelled":
            self.job, self.progress = None, None
        extra = ""
        if status == "queued" and "grasps" in data:
            extra = f" ({data.get('grasps')} grasps, {data.get('transitions')} transitions)"
        elif detail:
            why = detail.get("reason") or detail.get("error") or ""
            extra = f" ({str(why)[:120]})" if why else ""
        key = int(job) if isinstance(job, int) else -1
        if status == self.job_lines.get(key):
            return []
        self.job_lines[key] = status
        return [f"{at} job {job}: {status}{extra}"]

    def job_in_flight(self) -> bool:
        """A job's data is exported and the trainer has it (until its result is settled)."""
        return self.job is not None and self.job_status != "exporting"

    def status(self) -> str:
        """The one-line status."""
        rate = self.rate()
        parts = [
            f"grasp {self.last_id:>5}/{self.total}",
            f"world {self.world():<14}",
            f"agent {self.phase:<9}",
            f"success(last {len(self.recent)}) {'-' if rate is None else f'{rate:4.0%}'}",
            f"alarms {self.alarms} swaps {self.swaps} rollbacks {self.rollbacks}",
        ]
        if self.round:
            parts.append(f"round {self.round}")
        if self.phase == "racing" and self.race is not None:
            arms = list(self.race.values())
            tally = ", ".join(
                f"{'parent' if i == 0 else 'child'} {s}/{n}" for i, (n, s) in enumerate(arms)
            )
            parts.append(f"race {sum(n for n, _ in arms)} grasps: {tally}")
        if self.job is not None:
            if self.progress is not None:
                phase, step, top = self.progress
                done = min(BAR, round(BAR * step / top))
                bar = f"[{'#' * done}{'.' * (BAR - done)}]"
                parts.append(f"job {self.job} {phase} {bar} {step}/{top}")
            else:
                parts.append(f"job {self.job} {self.job_status}")
        return " | ".join(parts)
