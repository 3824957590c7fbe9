"""Judging the success stream: probation of a swapped-in policy, then the drop detector.

:class:`OutcomeWatch` holds the detector (:mod:`agent.detector`) and, while the
active policy is on probation, its SPRT (:mod:`agent.probation`). During probation
the detector is idle; after a verdict it recalibrates on the active policy. Pure:
the caller passes outcome histories read from the grasp log and acts on the
:class:`Judgement` returned (a lifecycle step, an event).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.config import DetectorConfig, ProbationConfig
from agent.detector import SuccessDropDetector
from agent.probation import ProbationTest, design_probation


@dataclass(frozen=True)
class Judgement:
    """A verdict on the stream: ``kind`` is "pass", "fail" (probation) or "alarm"."""

    kind: str
    """"pass", "fail" or "alarm"."""
    details: dict[str, Any]
    """Figures for the event payloads."""
    reason: str = ""
    """A sentence for a failed probation."""


class OutcomeWatch:
    """The detector and the probation test of the active policy."""

    def __init__(self, dcfg: DetectorConfig, pcfg: ProbationConfig) -> None:
        self.dcfg = dcfg
        self.pcfg = pcfg
        self.detector = SuccessDropDetector(
            dcfg.arl0,
            dcfg.min_drop,
            dcfg.reference_grasps,
            dcfg.threshold_method,
            block=dcfg.block_grasps,
            max_dispersion=dcfg.max_dispersion,
        )
        self.probation: ProbationTest | None = None
        self.active = dcfg.enabled
        """Whether the detector watches the stream now."""

    def reset(self, history: list[bool] | None, exploring: bool = False) -> None:
        """No probation; the detector calibrates on ``history`` (None: nothing serves).
        ``exploring``: a new condition is being explored or trained, so the chart watches
        for a second change at ``explore_arl0`` (0: it does not watch)."""
        self.probation = None
        self.active = self.dcfg.enabled and not (exploring and self.dcfg.explore_arl0 == 0)
        self.detector.arl0 = self.dcfg.explore_arl0 if exploring and self.active else self.dcfg.arl0
        if history is None:
            self.detector.reset()
        else:
            self.detector.reset(history=history)

    def start_probation(
        self, parent_history: list[bool], child_history: list[bool]
    ) -> Judgement | None:
        """Put the active policy on probation against the parent's outcomes; replays the
        child's outcomes so far (a restart mid-probation). Returns a verdict reached at once
        (probation disabled or no parent history: "pass")."""
        if not self.pcfg.enabled or not parent_history:
            self.probation = None
            why = "probation disabled" if not self.pcfg.enabled else "no parent history"
            return Judgement("pass", {"verdict": "pass", "skipped": why})
        rate = (sum(parent_history) + 1) / (len(parent_history) + 2)
        p = self.pcfg
        self.probation = ProbationTest(
            design_probation(rate, self.dcfg.min_drop, p.alpha, p.beta, p.max_grasps)
        )
        for ok in child_history:
            if (j := self._probation_update(ok)) is not None:
                return j
        return None

    def update(self, success: bool) -> Judgement | None:
        """Feed one outcome of the active policy."""
        if self.probation is not None:
            return self._probation_update(success)
        if not self.active:
            return None
        alarm = self.detector.update(success)
        if alarm is None:
            return None
        details = {
            "reference": alarm.reference,
            "recent_rate": alarm.recent_rate,
            "grasps": alarm.grasps,
            "threshold": alarm.threshold,
            "dispersion": round(alarm.dispersion, 3),
            "arl0": alarm.design.arl0,
        }
        return Judgement("alarm", details)

    def _probation_update(self, success: bool) -> Judgement | None:
        t = self.probation
        assert t is not None
        verdict = t.update(success)
        if verdict is None:
            return None
        details = t.snapshot()
        self.probation = None
        if verdict == "pass":
            return Judgement("pass", details)
        d = t.design
        reason = (
            f"worse than its parent: {t.successes}/{t.grasps} against the parent's "
            f"{d.p0:.2f} (SPRT alpha {d.alpha})"
        )
        return Judgement("fail", details, reason)

    def snapshot(self) -> tuple[dict[str, object], dict[str, Any] | None]:
        """(detector, probation) for status replies."""
        prob = None if self.probation is None else self.probation.snapshot()
        return self.detector.snapshot(), prob
