"""Success-drop detector: a Bernoulli CUSUM with a computed threshold (pure numpy).

The statistic is the CUSUM of the log-likelihood ratio of "success rate p1"
against "reference rate p0" (p1 = p0 - min_drop). The two increments are
scaled to integers (``down`` on a success, ``up`` on a failure, their ratio
matching the LLR ratio to within 1/(2 up)), so the detector is an integer
Markov chain and its in-control average run length (mean grasps between false
alarms, ARL0) is computed *exactly* by solving ``(I - P) L = 1``; the threshold
is the smallest one whose ARL0 reaches the target. ``simulate`` estimates the
same figure by Monte Carlo, vectorised over streams.

:class:`SuccessDropDetector` wraps one design: it first collects the reference
rate from the active policy's own record, then monitors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import numpy.typing as npt

P_MIN, P_MAX = 0.02, 0.98
RESOLUTION = 12
"""Integer step of the statistic on a success (sets the chain's size)."""


@dataclass(frozen=True)
class CusumDesign:
    """A Bernoulli CUSUM in integer units: alarm when the statistic reaches ``threshold``."""

    p0: float
    """Reference (in-control) success rate."""
    p1: float
    """Success rate the chart is tuned to detect."""
    down: int
    """Decrease of the statistic on a success."""
    up: int
    """Increase of the statistic on a failure."""
    threshold: int
    """Alarm level."""
    arl0: float
    """Mean grasps between false alarms at p0 (exact for this integer chart)."""

    @property
    def threshold_nats(self) -> float:
        """Threshold in log-likelihood units."""
        return self.threshold * math.log((1 - self.p1) / (1 - self.p0)) / self.up


def llr_increments(p0: float, p1: float) -> tuple[float, float]:
    """LLR of a success and of a failure for H1: p1 against H0: p0 (p1 < p0)."""
    return math.log(p1 / p0), math.log((1 - p1) / (1 - p0))


def integer_steps(p0: float, p1: float, resolution: int = RESOLUTION) -> tuple[int, int]:
    """(down, up): integer increments approximating the LLRs, down = resolution."""
    s, f = llr_increments(p0, p1)
    if not (s < 0 < f):
        raise ValueError(f"p1 = {p1} must be below p0 = {p0}")
    return resolution, max(1, round(resolution * f / -s))


def arl_markov(down: int, up: int, threshold: int, p_success: float) -> float:
    """Exact mean run length from 0 of the integer CUSUM at success rate ``p_success``."""
    h = threshold
    if h <= 0:
        return 1.0
    idx = np.arange(h)
    mat = np.eye(h)
    np.subtract.at(mat, (idx, np.maximum(idx - down, 0)), p_success)
    ok = idx + up < h
    np.subtract.at(mat, (idx[ok], idx[ok] + up), 1 - p_success)
    return float(np.linalg.solve(mat, np.ones(h))[0])


def run_lengths(
    down: int,
    up: int,
    thresholds: npt.ArrayLike,
    p_success: float | npt.NDArray[np.float64],
    streams: int,
    max_steps: int,
    rng: np.random.Generator,
    change_at: int = 0,
    p_before: float = 0.0,
) -> npt.NDArray[np.int64]:
    """Simulated alarm times [len(thresholds), streams] of the integer CUSUM.

    All thresholds share one path per stream (the path does not depend on the
    threshold until it is crossed). The success rate is ``p_before`` for steps
    < ``change_at`` and ``p_success`` after. Streams not alarmed by
    ``max_steps`` report ``max_steps`` (censored). Times are 1-based.
    """
    th = np.atleast_1d(np.asarray(thresholds, dtype=np.int64))
    out = np.full((th.size, streams), max_steps, dtype=np.int64)
    s = np.zeros(streams, dtype=np.int64)
    peak = np.zeros(streams, dtype=np.int64)
    pending = np.ones((th.size, streams), dtype=bool)
    chunk = 256
    for start in range(0, max_steps, chunk):
        n = min(chunk, max_steps - start)
        t = start + np.arange(n)
        p = np.where(t < change_at, p_before, p_success)[:, None]
        success = rng.random((n, streams)) < p
        for k in range(n):
            s = np.where(success[k], np.maximum(s - down, 0), s + up)
            np.maximum(peak, s, out=peak)
            hit = pending & (peak[None, :] >= th[:, None])
            if hit.any():
                out[hit] = start + k + 1
                pending &= ~hit
        if not pending.any():
            break
    return out


def arl_simulate(
    down: int, up: int, threshold: int, p_success: float, streams: int = 4000, seed: int = 0
) -> float:
    """Monte Carlo estimate of the mean run length (censoring at 50 x the Markov figure)."""
    guess = arl_markov(down, up, threshold, p_success)
    rng = np.random.default_rng(seed)
    rl = run_lengths(down, up, [threshold], p_success, streams, int(50 * guess) + 100, rng)
    return float(rl.mean())


def design_cusum(
    p0: float,
    min_drop: float,
    arl0: float,
    method: Literal["markov", "simulate"] = "markov",
    resolution: int = RESOLUTION,
) -> CusumDesign:
    """The smallest-threshold CUSUM for a drop of ``min_drop`` from ``p0`` with ARL0 >= arl0."""
    p0 = min(max(p0, P_MIN), P_MAX)
    p1 = max(p0 - min_drop, P_MIN / 2)
    return _design(round(p0, 4), round(p1, 4), float(arl0), method, resolution)


@lru_cache(maxsize=256)
def _design(p0: float, p1: float, arl0: float, method: str, resolution: int) -> CusumDesign:
    down, up = integer_steps(p0, p1, resolution)

    def arl(h: int) -> float:
        if method == "simulate":
            return arl_simulate(down, up, h, p0)
        return arl_markov(down, up, h, p0)

    lo, hi = 0, max(up, 1)
    while arl(hi) < arl0:
        lo, hi = hi, hi * 2
        if hi > 1 << 16:
            raise ValueError(f"cannot reach ARL0 {arl0} for p0={p0}, p1={p1}")
    while hi - lo > 1:  # arl is non-decreasing in the threshold
        mid = (lo + hi) // 2
        if arl(mid) >= arl0:
            hi = mid
        else:
            lo = mid
    return CusumDesign(p0=p0, p1=p1, down=down, up=up, threshold=hi, arl0=arl(hi))


@dataclass(frozen=True)
class Alarm:
    """The detector fired."""

    reference: float
    """Reference success rate p0."""
    recent_rate: float
    """Success rate since the statistic last left zero."""
    grasps: int
    """Grasps monitored since the reference was fixed."""
    statistic: int
    """Statistic at the alarm (integer units)."""
    design: CusumDesign
    """The chart that fired."""


class SuccessDropDetector:
    """Collects the reference rate from the policy's own record, then runs the CUSUM."""

    def __init__(
        self,
        arl0: float,
        min_drop: float,
        reference_grasps: int,
        method: Literal["markov", "simulate"] = "markov",
    ) -> None:
        self.arl0 = arl0
        self.min_drop = min_drop
        self.reference_grasps = reference_grasps
        self.method: Literal["markov", "simulate"] = method
        self.reset()

    def reset(self, history: list[bool] | None = None, reference: float | None = None) -> None:
        """Start over; ``history`` is the policy's recent record, ``reference`` a known p0."""
        self.design: CusumDesign | None = None
        self._calib: list[bool] = []
        self.statistic = 0
        self.monitored = 0
        self._run_n = 0
        self._run_s = 0
        if reference is not None:
            self._fix(reference)
        else:
            for x in (history or [])[-self.reference_grasps :]:
                self.update(x)

    @property
    def calibrating(self) -> bool:
        return self.design is None

    def _fix(self, p: float) -> None:
        self.design = design_cusum(p, self.min_drop, self.arl0, self.method)

    def update(self, success: bool) -> Alarm | None:
        """Feed one grasp outcome; returns an Alarm when the chart fires (then restarts at 0)."""
        if self.design is None:
            self._calib.append(bool(success))
            if len(self._calib) >= self.reference_grasps:
                n, s = len(self._calib), sum(self._calib)
                self._fix((s + 1) / (n + 2))  # Laplace: never exactly 0 or 1
            return None
        d = self.design
        self.monitored += 1
        self.statistic = max(self.statistic - d.down, 0) if success else self.statistic + d.up
        if self.statistic == 0:
            self._run_n = self._run_s = 0
        else:
            self._run_n += 1
            self._run_s += int(success)
        if self.statistic < d.threshold:
            return None
        alarm = Alarm(
            reference=d.p0,
            recent_rate=self._run_s / max(self._run_n, 1),
            grasps=self.monitored,
            statistic=self.statistic,
            design=d,
        )
        self.statistic = self._run_n = self._run_s = 0
        return alarm

    def snapshot(self) -> dict[str, object]:
        """JSON-ready state for status replies."""
        d = self.design
        return {
            "calibrating": d is None,
            "reference_progress": len(self._calib) if d is None else self.reference_grasps,
            "reference_grasps": self.reference_grasps,
            "p0": d.p0 if d else None,
            "p1": d.p1 if d else None,
            "statistic": self.statistic,
            "threshold": d.threshold if d else None,
            "arl0": d.arl0 if d else None,
            "monitored": self.monitored,
        }
