"""Probation of a swapped-in policy: a truncated Bernoulli SPRT against its parent (pure numpy).

H0: the new policy succeeds at its parent's rate p0 under this condition;
H1: it succeeds at p1 = p0 - min_drop. Wald's sequential probability ratio
test adds log(p1/p0) on a success and log((1-p1)/(1-p0)) on a failure; it
*fails* probation (rollback) when the sum reaches log((1-beta)/alpha) and
*passes* when it falls to log(beta/(1-alpha)). At ``max_grasps`` without a
decision it passes (truncation only removes chances to reject, so the
false-rollback rate stays <= alpha). A decision is therefore always made
within ``max_grasps`` grasps. :func:`operating_characteristic` computes the
exact rollback probability and mean length for any true rate by dynamic
programming over (grasps, successes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

Verdict = Literal["pass", "fail"]
P_MIN, P_MAX = 0.02, 0.98


@dataclass(frozen=True)
class ProbationDesign:
    """A truncated SPRT of "as good as the parent" against "min_drop worse"."""

    p0: float
    """Parent's success rate under the condition (the reference)."""
    p1: float
    """The rate the test is tuned to catch (p0 - min_drop)."""
    alpha: float
    """Target false-rollback rate (rolling back a child as good as its parent)."""
    beta: float
    """Target rate of passing a child that is min_drop worse."""
    max_grasps: int
    """Grasps after which probation ends (passed) without a decision."""

    @property
    def on_success(self) -> float:
        return math.log(self.p1 / self.p0)

    @property
    def on_failure(self) -> float:
        return math.log((1 - self.p1) / (1 - self.p0))

    @property
    def upper(self) -> float:
        """Log-likelihood ratio at which probation fails."""
        return math.log((1 - self.beta) / self.alpha)

    @property
    def lower(self) -> float:
        """Log-likelihood ratio at which probation passes."""
        return math.log(self.beta / (1 - self.alpha))


def design_probation(
    p_parent: float, min_drop: float, alpha: float, beta: float, max_grasps: int
) -> ProbationDesign:
    """The design for a parent rate; p0 is clipped to [0.02, 0.98] and p1 kept above 0.01."""
    if not 0 < alpha < 0.5 or not 0 < beta < 0.5:
        raise ValueError("alpha and beta must be in (0, 0.5)")
    if max_grasps < 1 or not 0 < min_drop < 1:
        raise ValueError("max_grasps >= 1 and min_drop in (0, 1) required")
    p0 = min(max(p_parent, P_MIN), P_MAX)
    p1 = max(p0 - min_drop, 0.01)
    return ProbationDesign(p0, p1, alpha, beta, max_grasps)


class ProbationTest:
    """The running test for one policy: feed outcomes, get a verdict once."""

    def __init__(self, design: ProbationDesign) -> None:
        self.design = design
        self.llr = 0.0
        self.grasps = 0
        self.successes = 0
        self.verdict: Verdict | None = None

    def update(self, success: bool) -> Verdict | None:
        """Add one outcome; returns "pass" or "fail" on the grasp that decides, else None."""
        if self.verdict is not None:
            return None
        d = self.design
        self.grasps += 1
        self.successes += int(success)
        self.llr += d.on_success if success else d.on_failure
        if self.llr >= d.upper:
            self.verdict = "fail"
        elif self.llr <= d.lower or self.grasps >= d.max_grasps:
            self.verdict = "pass"
        return self.verdict

    def snapshot(self) -> dict[str, float | int | str | None]:
        d = self.design
        return {
            "parent_rate": round(d.p0, 4),
            "worse_rate": round(d.p1, 4),
            "grasps": self.grasps,
            "successes": self.successes,
            "llr": round(self.llr, 4),
            "fail_at": round(d.upper, 4),
            "pass_at": round(d.lower, 4),
            "max_grasps": d.max_grasps,
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class Characteristic:
    """Exact behaviour of a design at one true success rate."""

    p: float
    """True success rate of the policy on probation."""
    p_fail: float
    """Probability that probation fails (rollback)."""
    mean_grasps: float
    """Expected grasps until the verdict."""


def operating_characteristic(d: ProbationDesign, p: float) -> Characteristic:
    """Rollback probability and mean test length at true rate ``p`` (exact, O(max_grasps^2))."""
    alive = np.zeros(1)
    alive[0] = 1.0  # alive[k]: probability of k successes so far and no verdict yet
    p_fail = 0.0
    mean = 0.0
    for n in range(1, d.max_grasps + 1):
        nxt = np.zeros(n + 1)
        nxt[1:] += alive * p
        nxt[:-1] += alive * (1 - p)
        k = np.arange(n + 1)
        llr = k * d.on_success + (n - k) * d.on_failure
        fail = llr >= d.upper
        stop = fail | (llr <= d.lower) | (n >= d.max_grasps)
        p_fail += float(nxt[fail].sum())
        mean += n * float(nxt[stop].sum())
        nxt[stop] = 0.0
        alive = nxt
    return Characteristic(p=p, p_fail=p_fail, mean_grasps=mean)
