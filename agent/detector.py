"""Success-drop detector: a Bernoulli CUSUM with a computed threshold (pure numpy).

The statistic is the CUSUM of the log-likelihood ratio of "success rate p1"
against "reference rate p0" (p1 = p0 - min_drop). The two increments are
scaled to integers (``down`` on a success, ``up`` on a failure, their ratio
matching the LLR ratio to within 1/(2 up)), so the detector is an integer
Markov chain and its in-control average run length (mean grasps between false
alarms, ARL0) is computed *exactly* (:mod:`agent.runlength`).

Known p0 (:func:`design_cusum`): the threshold is the smallest whose ARL0 at p0
reaches the target. Estimated p0 (:func:`design_from_counts`, what the daemon
does: s successes in the policy's first n grasps): a chart tuned on the point
estimate misses the target badly (2 points off turns 1,000 grasps between false
alarms into ~370 or ~3,100; over references, 650 alarms-worth instead of 1,000).
Instead the threshold is the smallest whose false-alarm *rate* averaged over the
posterior of the true rate, Beta(s+1/2, n-s+1/2) (Jeffreys' prior), is at most
1/ARL0: ``sum_k w_k / ARL(h; p_k) <= 1 / arl0`` on a quadrature grid. Then alarms
per monitored grasp, over the references a robot (or a fleet) draws, match the
configured rate at every true p0 (within 4% for n = 100, exact chain); a single
reference's own rate still varies with its luck (``bench/detector.py`` reports the
spread). One banded factorisation gives every threshold's ARL at once, and designs
are cached by (s, n): re-tuning costs ~10-100 ms once per distinct reference.

:class:`SuccessDropDetector` wraps one design: it first collects the reference
rate from the active policy's own record, then monitors, growing the reference in
fixed whole windows (100 -> 200 -> ... -> 1,600 grasps) and re-tuning as it goes.

Grasps are not independent: objects come in sets (a tote, the sim's 5 objects refreshed
every 20 grasps), and a hard set fails grasp after grasp. The outcomes are overdispersed
(measured in the demo: the variance of 20-grasp block means 1.0x the binomial one on
baseline, 1.9-3.3x after fine-tuning), and a chart that assumes independence alarms
several times too often. With ``block`` > 1 the detector estimates the dispersion
``phi`` from its own reference (:func:`dispersion`: the variance of block means over the
binomial variance, in [1, ``max_dispersion``]) and treats the reference as ``n / phi``
effective grasps and the stream's increments as ``phi`` times as variable: the chart is
designed for ``(s / phi, n / phi)`` and its threshold is multiplied by ``phi`` (a CUSUM's
log ARL0 scales with threshold over variance, diffusion approximation).

The loop re-references often (swaps, conditions, alerts), and a dispersion from a young
reference's 5-20 blocks is so noisy that the convex false-alarm rate follows its low draws
(0.46-0.55x ARL0 after swaps at phi 2.5-3.4). The detector therefore keeps a pool of the
blocks of the references it has dropped (:attr:`SuccessDropDetector.pool`, across resets)
and a new reference's estimate borrows up to ``POOL_WEIGHT`` blocks' worth of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import numpy.typing as npt

from agent.runlength import ArlCurve, arl_curve, arl_markov, arl_simulate, run_lengths

__all__ = [
    "Alarm",
    "CusumDesign",
    "SuccessDropDetector",
    "arl_curve",
    "arl_markov",
    "arl_simulate",
    "block_stats",
    "design_cusum",
    "design_from_counts",
    "dispersion",
    "integer_steps",
    "llr_increments",
    "posterior_grid",
    "run_lengths",
]

P_MIN, P_MAX = 0.02, 0.98
RESOLUTION = 12
"""Integer step of the statistic on a success (sets the chain's size)."""
QUADRATURE_POINTS = 31
"""Grid points over the posterior of the reference rate (+-7 standard deviations, in logit)."""
MAX_THRESHOLD = 1 << 13
"""Largest threshold searched for an estimated reference (integer units)."""
SEARCH_BLOCK = 32
"""Thresholds computed per step of the threshold search."""
PRIOR = 0.5
"""Beta(PRIOR, PRIOR) prior of the reference rate (0.5: Jeffreys; 1: uniform, Laplace)."""
POOL_WEIGHT = 20.0
"""Most blocks' worth of weight the pooled dispersion of earlier references gets in a new
reference's estimate (its own blocks count in full)."""
POOL_MEMORY = 400.0
"""Blocks the pool keeps: beyond this, older references fade as newer ones join."""


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
    """Mean grasps between false alarms: exact at a known p0; for an estimated p0, one over
    the alarm rate averaged over the posterior of the true rate."""
    reference_grasps: int = 0
    """Grasps p0 was estimated from (0: p0 was given as known)."""
    arl0_at_estimate: float = 0.0
    """ARL0 if the true rate were exactly p0 (equals arl0 for a known p0)."""

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
    a = arl(hi)
    return CusumDesign(p0, p1, down, up, threshold=hi, arl0=a, arl0_at_estimate=a)


def posterior_grid(
    successes: int, grasps: int, points: int = QUADRATURE_POINTS
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(rates, weights): quadrature of the true rate's posterior given s of n, Beta(s+a, n-s+a).

    The grid is uniform in logit(p), where the density, p^(s+a) (1-p)^(n-s+a), is smooth
    and bell-shaped even when s = n (in p it is unbounded there under Jeffreys' prior).
    """
    a, b = successes + PRIOR, grasps - successes + PRIOR
    centre, sd = math.log(a / b), math.sqrt(1 / a + 1 / b)
    theta = np.linspace(centre - 7 * sd, centre + 7 * sd, points)
    rates = 1.0 / (1.0 + np.exp(-theta))
    logw = a * np.log(rates) + b * np.log1p(-rates)
    w = np.exp(logw - logw.max())
    keep = (rates > 1e-9) & (rates < 1 - 1e-9)
    return rates[keep], w[keep] / w[keep].sum()


def design_from_counts(
    successes: int, grasps: int, min_drop: float, arl0: float, resolution: int = RESOLUTION
) -> CusumDesign:
    """The CUSUM for a reference of ``successes`` in ``grasps``, calibrated for the estimate.

    p0 is the posterior mean (s+1/2)/(n+1); the threshold is the smallest whose
    posterior-averaged false-alarm rate is <= 1/arl0 (module docstring).
    Cached by its arguments.
    """
    if grasps < 1 or not 0 <= successes <= grasps:
        raise ValueError(f"need 0 <= successes <= grasps, grasps >= 1: {successes}/{grasps}")
    return _design_counts(int(successes), int(grasps), float(min_drop), float(arl0), resolution)


@lru_cache(maxsize=1024)
def _design_counts(s: int, n: int, min_drop: float, arl0: float, resolution: int) -> CusumDesign:
    p0 = round(min(max((s + PRIOR) / (n + 2 * PRIOR), P_MIN), P_MAX), 4)
    p1 = round(max(p0 - min_drop, P_MIN / 2), 4)
    down, up = integer_steps(p0, p1, resolution)
    rates, weights = posterior_grid(s, n)
    curve = ArlCurve(down, up, np.append(rates, p0))  # last row: p0 itself
    while True:  # the rate falls with the threshold: walk up until it is low enough
        block = curve.extend(SEARCH_BLOCK)
        rate = weights @ (1.0 / block[:-1])  # posterior-mean alarm rate per threshold
        ok = np.flatnonzero(rate <= 1.0 / arl0)
        if ok.size or curve.thresholds >= MAX_THRESHOLD:
            i = int(ok[0]) if ok.size else SEARCH_BLOCK - 1  # best effort past the cap
            h = curve.thresholds - SEARCH_BLOCK + 1 + i
            return CusumDesign(p0, p1, down, up, h, float(1.0 / rate[i]), n, float(block[-1, i]))


def block_stats(outcomes: list[bool], block: int) -> tuple[float, int]:
    """(ss, dof) of the ``k`` consecutive ``block``-grasp blocks: the sum of squared deviations
    of the block means from their mean, in units of the binomial variance p(1-p)/block, and
    k - 1 (so ss/dof estimates the dispersion); (0, 0) with fewer than 2 blocks, with
    ``block`` <= 1, or when every outcome is the same."""
    k = len(outcomes) // block if block > 1 else 0
    if k < 2:
        return 0.0, 0
    x = np.asarray(outcomes[: k * block], dtype=np.float64).reshape(k, block)
    p = float(x.mean())
    if not 0 < p < 1:
        return 0.0, 0
    ss = float(((x.mean(axis=1) - p) ** 2).sum()) / (p * (1 - p) / block)
    return ss, k - 1


def dispersion(
    outcomes: list[bool],
    block: int,
    max_dispersion: float = 4.0,
    prior: tuple[float, float] = (0.0, 0.0),
) -> float:
    """The dispersion of ``outcomes`` in ``block``-grasp blocks: (ss + prior ss) / (dof +
    prior dof + 2) (:func:`block_stats`; the +2 shrinks a few blocks' estimate, which errs
    upwards once clipped at 1), clipped to [1, max_dispersion]. ``prior`` = (ss, dof) pooled
    from earlier references (:class:`SuccessDropDetector` keeps it). The outcomes' own blocks
    count from 4 blocks on; 1.0 with fewer than 4 blocks in all."""
    ss, dof = block_stats(outcomes, block)
    if dof < 3:
        ss, dof = 0.0, 0
    total = dof + prior[1]
    if total < 3:
        return 1.0
    phi = (ss + prior[0]) / (total + 2)
    return min(max(phi, 1.0), max_dispersion)


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
    threshold: int = 0
    """The alarm level in force: the design's threshold times the dispersion."""
    dispersion: float = 1.0
    """Overdispersion of the reference (1: independent grasps)."""


class SuccessDropDetector:
    """Collects the reference rate from the policy's own record, then runs the CUSUM.

    A reference counted from grasps (the stream, ``history`` or ``reference_counts``) gets
    the estimate-calibrated threshold of :func:`design_from_counts`; a ``reference`` rate
    given as known gets :func:`design_cusum` (``method`` applies to that case only).

    A reference taken from the policy's own stream keeps growing while it monitors: each
    time as many grasps have been monitored since the last design as the reference holds,
    all of them join the reference and the chart is re-tuned for the larger counts
    (100 -> 200 -> 400 ... up to ``max_reference``), the statistic carried over in
    log-likelihood units. The estimate sharpens, so the calibrated threshold falls towards
    the known-p0 one and detection gets faster. The windows are fixed in advance and taken
    whole (a window chosen by its outcomes, e.g. "no alarm in it", biases p0 upwards and
    cost a third more false alarms in the bench); the price: after an alarm that is not
    acted on (``on_alarm = "alert"``), a lasting drop is folded into the reference at the
    next re-tune, which stops the repeated alarms.
    """

    def __init__(
        self,
        arl0: float,
        min_drop: float,
        reference_grasps: int,
        method: Literal["markov", "simulate"] = "markov",
        max_reference: int | None = None,
        block: int = 1,
        max_dispersion: float = 4.0,
    ) -> None:
        self.block = block
        self.max_dispersion = max_dispersion
        self.arl0 = arl0
        self.min_drop = min_drop
        self.reference_grasps = reference_grasps
        self.method: Literal["markov", "simulate"] = method
        self.max_reference = 16 * reference_grasps if max_reference is None else max_reference
        self.pool = (0.0, 0.0)
        """(ss, dof) of the blocks of earlier references (:func:`block_stats`), kept across
        resets: the prior of a young reference's dispersion."""
        self._ref = (0, 0)
        self._ref_outcomes: list[bool] = []
        self.reset()

    def reset(
        self,
        history: list[bool] | None = None,
        reference: float | None = None,
        reference_counts: tuple[int, int] | None = None,
    ) -> None:
        """Start over. The reference comes from one of: ``reference_counts`` = (successes,
        grasps) of a record (e.g. the parent's, on probation), a known rate ``reference``,
        or ``history`` (the policy's recent record; completed from the stream when shorter
        than ``reference_grasps``). The reference being dropped joins the dispersion pool."""
        self._retire()
        self.design: CusumDesign | None = None
        self.phi = 1.0
        self.limit = 0  # the threshold in force: design.threshold x phi
        self._calib: list[bool] = []
        self._ref_outcomes = []  # the reference's outcomes, for the dispersion
        self.statistic = 0
        self.monitored = 0
        self._run_n = 0
        self._run_s = 0
        self._ref = (0, 0)  # (successes, grasps) of a reference that may still grow
        self._window = (0, 0)  # monitored since the last design, no alarm among them
        if reference_counts is not None:
            self._set(design_from_counts(*reference_counts, self.min_drop, self.arl0))
        elif reference is not None:
            self._fix(reference)
        else:
            for x in (history or [])[-self.reference_grasps :]:
                self.update(x)

    @property
    def calibrating(self) -> bool:
        return self.design is None

    def _fix(self, p: float) -> None:
        self._set(design_cusum(p, self.min_drop, self.arl0, self.method))

    def _set(self, design: CusumDesign, phi: float = 1.0) -> None:
        self.design, self.phi = design, phi
        self.limit = math.ceil(design.threshold * phi)

    def _retire(self) -> None:
        """Add the reference's blocks (those the chart was designed on, not the grasps
        monitored since, which may hold the drop that ended it) to the pool."""
        ss, dof = block_stats(self._ref_outcomes[: self._ref[1]], self.block)
        if dof < 1:
            return
        pss, pdof = self.pool[0] + ss, self.pool[1] + dof
        fade = min(1.0, POOL_MEMORY / pdof)
        self.pool = (pss * fade, pdof * fade)

    def _prior(self) -> tuple[float, float]:
        ss, dof = self.pool
        w = min(1.0, POOL_WEIGHT / dof) if dof > 0 else 0.0
        return ss * w, dof * w

    def _design_own(self, s: int, n: int) -> None:
        """Design from the reference's own outcomes, overdispersion included."""
        phi = dispersion(self._ref_outcomes, self.block, self.max_dispersion, self._prior())
        s_eff, n_eff = round(s / phi), max(round(n / phi), 1)
        self._set(design_from_counts(s_eff, n_eff, self.min_drop, self.arl0), phi)

    def update(self, success: bool) -> Alarm | None:
        """Feed one grasp outcome; returns an Alarm when the chart fires (then restarts at 0)."""
        if self.design is None:
            self._calib.append(bool(success))
            if len(self._calib) >= self.reference_grasps:
                n, s = len(self._calib), sum(self._calib)
                self._ref_outcomes = list(self._calib)
                self._design_own(s, n)
                self._ref = (s, n)
            return None
        d = self.design
        self.monitored += 1
        self.statistic = max(self.statistic - d.down, 0) if success else self.statistic + d.up
        if self.statistic == 0:
            self._run_n = self._run_s = 0
        else:
            self._run_n += 1
            self._run_s += int(success)
        alarm = None
        if self.statistic >= self.limit:
            alarm = Alarm(
                reference=d.p0,
                recent_rate=self._run_s / max(self._run_n, 1),
                grasps=self.monitored,
                statistic=self.statistic,
                design=d,
                threshold=self.limit,
                dispersion=self.phi,
            )
            self.statistic = self._run_n = self._run_s = 0
        self._grow_reference(success)
        return alarm

    def _grow_reference(self, success: bool) -> None:
        ref_s, ref_n = self._ref
        if not 0 < ref_n < self.max_reference:
            return
        win_s, win_n = self._window[0] + int(success), self._window[1] + 1
        self._window = (win_s, win_n)
        self._ref_outcomes.append(bool(success))
        if win_n < ref_n or self.design is None:
            return
        old = self.design
        self._ref = (ref_s + win_s, ref_n + win_n)
        self._window = (0, 0)
        self._design_own(*self._ref)
        new = self.design
        nats = self.statistic * llr_increments(old.p0, old.p1)[1] / old.up
        self.statistic = round(nats * new.up / llr_increments(new.p0, new.p1)[1])

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
            "threshold": self.limit if d else None,
            "dispersion": round(self.phi, 3),
            "arl0": d.arl0 if d else None,
            "arl0_at_p0": d.arl0_at_estimate if d else None,
            "reference_n": d.reference_grasps if d else None,
            "monitored": self.monitored,
        }
