"""Many CUSUM charts run over simulated Bernoulli streams at once (vectorised numpy).

Test support for the detector: the daemon runs one chart grasp by grasp
(:class:`agent.detector.SuccessDropDetector`); this runs thousands to check its
figures against the exact run lengths of :mod:`agent.runlength`, and the binomial weights
of the reference counts a robot may start from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class StreamRun:
    """Outcome of :func:`simulate_streams`, one entry per stream."""

    alarms: npt.NDArray[np.int64]
    """Alarms raised before ``change_at`` (the chart restarts at 0 after each, as the daemon's)."""
    first_alarm: npt.NDArray[np.int64]
    """1-based grasp of the first alarm; ``steps`` when none (censored)."""
    delay: npt.NDArray[np.int64]
    """Grasps from ``change_at`` to the first alarm at or after it; censored at the horizon."""


def simulate_streams(
    down: npt.ArrayLike,
    up: npt.ArrayLike,
    threshold: npt.ArrayLike,
    p_before: float,
    steps: int,
    rng: np.random.Generator,
    change_at: int | None = None,
    p_after: float | None = None,
    streams: int = 0,
) -> StreamRun:
    """Simulate streams that each run their own chart (per-stream ``down``, ``up``, ``threshold``).

    The success rate is ``p_before`` for the first ``change_at`` grasps (default: all of
    them) and ``p_after`` from then on; after ``change_at`` the simulation continues until
    every stream has alarmed once or ``steps`` grasps have passed. ``streams`` > 0
    broadcasts scalar designs to that many streams.
    """
    d = np.asarray(down, dtype=np.int64)
    u = np.asarray(up, dtype=np.int64)
    h = np.asarray(threshold, dtype=np.int64)
    d, u, h = np.broadcast_arrays(d, u, h, *([np.zeros(streams, np.int64)] if streams else []))[:3]
    n = d.size
    change = steps if change_at is None else int(change_at)
    p_late = p_before if p_after is None else p_after
    s = np.zeros(n, dtype=np.int64)
    alarms = np.zeros(n, dtype=np.int64)
    first = np.full(n, steps, dtype=np.int64)
    delay = np.full(n, max(steps - change, 0), dtype=np.int64)
    waiting = np.ones(n, dtype=bool)  # no alarm yet at or after the change
    chunk = 512
    for start in range(0, steps, chunk):
        m = min(chunk, steps - start)
        u01 = rng.random((m, n))
        for k in range(m):
            t = start + k
            success = u01[k] < (p_before if t < change else p_late)
            hit = chart_step(s, success, t, change, d, u, h, alarms, delay, waiting)
            first[hit & (first == steps)] = t + 1
        if start + m >= change and not waiting.any():
            break
    return StreamRun(alarms=alarms, first_alarm=first, delay=delay)


def chart_step(
    stat: npt.NDArray[np.int64],
    success: npt.NDArray[np.bool_],
    t: int,
    change: int,
    down: npt.NDArray[np.int64],
    up: npt.NDArray[np.int64],
    threshold: npt.NDArray[np.int64],
    alarms: npt.NDArray[np.int64],
    delay: npt.NDArray[np.int64],
    waiting: npt.NDArray[np.bool_],
) -> npt.NDArray[np.bool_]:
    """Grasp ``t`` (0-based) of every chart, in place: ``stat`` moves down on a success and up
    on a failure, and a chart at its threshold alarms and restarts at 0 (as the daemon's). An
    alarm before ``change`` counts in ``alarms``; the first at or after it sets ``delay``
    and clears ``waiting``. Returns which charts alarmed."""
    stat[:] = np.where(success, np.maximum(stat - down, 0), stat + up)
    hit = stat >= threshold
    if hit.any():
        if t < change:
            alarms += hit
        else:
            new = hit & waiting
            delay[new] = t + 1 - change
            waiting &= ~hit
        stat[hit] = 0
    return hit


def binomial_weights(
    n: int, p: float, min_weight: float = 1e-9
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """The reference counts s ~ Binomial(n, p) whose probability exceeds ``min_weight``, and
    their probabilities renormalised to sum to 1 (computed in logs: n reaches thousands)."""
    s = np.arange(n + 1)
    logw = np.array(
        [
            math.lgamma(n + 1)
            - math.lgamma(k + 1)
            - math.lgamma(n - k + 1)
            + k * math.log(p)
            + (n - k) * math.log1p(-p)
            for k in s
        ]
    )
    w = np.exp(logw)
    keep = w > min_weight
    return s[keep], w[keep] / w[keep].sum()
