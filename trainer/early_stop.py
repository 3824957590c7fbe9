"""Validation measures and the early-stopping rule of fine-tuning (pure numpy, no I/O).

A candidate (the network after some number of steps; the parent is candidate
zero) is scored on held-out grasps by comparing its predicted P(success) of
the logged action with the logged outcome. Measures, all "higher is better":

- ``auc``: probability that a held-out success is ranked above a held-out
  failure (ties count half). Insensitive to calibration: it asks whether the
  network tells good grasps from bad ones, which is what the CEM argmax uses.
- ``bce``: minus the binary cross-entropy (the training loss on held-out data).
- ``brier``: minus the mean squared error of the probability.

Selection (:func:`choose`): among candidates whose prior-data score did not
drop by more than ``prior_tolerance`` below the parent's (the forgetting
rule), take the best new-data score; it wins only if it beats the parent by
more than ``max(min_gain, se_margin * SE)``, SE being the paired bootstrap
standard error of the difference over held-out episodes. The race gate
(``trainer.finetune.selection.ship``) is a filter instead: the best eligible
candidate (:func:`top_candidate`) ships unless it is clearly worse than the
parent (:func:`clearly_worse`), and the robot's race between the two decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

Measure = Literal["auc", "bce", "brier"]
MEASURES: tuple[Measure, ...] = ("auc", "bce", "brier")

F64 = npt.NDArray[np.float64]


def auc(p: F64, y: F64) -> float:
    """Rank AUC of scores ``p`` for binary labels ``y`` (0.5 when one class is missing)."""
    pos = y > 0.5
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return 0.5
    _, inv, counts = np.unique(p, return_inverse=True, return_counts=True)
    avg = np.cumsum(counts) - (counts - 1) / 2.0  # average 1-based rank of each tied group
    ranks = avg[inv]
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def bce(p: F64, y: F64) -> float:
    """Mean binary cross-entropy of probabilities ``p`` against targets ``y``."""
    q = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def score(measure: Measure, p: F64, y: F64) -> float:
    """The measure as "higher is better"."""
    if measure == "auc":
        return auc(p, y)
    if measure == "bce":
        return -bce(p, y)
    return -float(np.mean((p - y) ** 2))


def summary(p: F64, y: F64) -> dict[str, float]:
    """Every measure (in its natural sign) plus mean prediction and success rate, for logs."""
    return {
        "auc": round(auc(p, y), 5),
        "bce": round(bce(p, y), 5),
        "brier": round(float(np.mean((p - y) ** 2)), 5),
        "mean_q": round(float(np.mean(p)), 5),
        "success": round(float(np.mean(y > 0.5)), 5),
        "n": float(len(y)),
    }


def paired_se(
    measure: Measure,
    p_a: F64,
    p_b: F64,
    y: F64,
    groups: npt.NDArray[np.int64] | None = None,
    resamples: int = 200,
    seed: int = 0,
) -> float:
    """Bootstrap SE of ``score(a) - score(b)`` on the same held-out rows (resampling groups)."""
    rng = np.random.default_rng(seed)
    g = np.arange(len(y)) if groups is None else groups
    uniq, inv = np.unique(g, return_inverse=True)
    members = [np.flatnonzero(inv == k) for k in range(len(uniq))]
    diffs = []
    for _ in range(resamples):
        pick = rng.integers(0, len(uniq), size=len(uniq))
        rows = np.concatenate([members[k] for k in pick])
        diffs.append(score(measure, p_a[rows], y[rows]) - score(measure, p_b[rows], y[rows]))
    return float(np.std(diffs))


@dataclass(frozen=True)
class Candidate:
    """One scored candidate."""

    step: int
    """Gradient steps of the candidate (0: the parent)."""
    new: float
    """Score on held-out new-condition data (higher is better)."""
    prior: float
    """Score on the held-out prior slice (higher is better)."""
    prior_slack: float = 0.0
    """Noise allowance of the forgetting rule for this candidate (see :func:`eligible`)."""
    prior_bce: float = 0.0
    """BCE on the held-out prior slice (0: no prior data)."""
    new_auc: float = 1.0
    """AUC on the held-out new data."""


@dataclass(frozen=True)
class Trade:
    """How much prior-data score a candidate may give for new-data score."""

    share: float = 0.0
    """Allowed prior-score fall as a share of the candidate's new-score gain over the parent."""
    cap: float = 0.0
    """Largest prior-score fall the trade allows."""

    def allowance(self, c: Candidate, parent: Candidate) -> float:
        """The prior-score fall this trade allows ``c``."""
        return min(self.cap, self.share * max(c.new - parent.new, 0.0))


NO_TRADE = Trade()


def eligible(
    c: Candidate,
    parent: Candidate,
    prior_tolerance: float,
    bce_ratio: float = float("inf"),
    trade: Trade = NO_TRADE,
) -> bool:
    """The forgetting rule: the prior-data score may fall at most the largest of
    ``prior_tolerance``, noise, and ``trade``'s share of the new-data gain; and the
    prior-data BCE may rise at most to ``bce_ratio`` x the parent's.

    The noise allowance is the candidate's ``prior_slack`` (``se_margin`` x the
    bootstrap SE of its prior-score difference to the parent), set when scored.
    The BCE bound catches forgetting that ranking hides: a network can keep
    ranking prior grasps while growing confidently wrong about them.
    """
    tol = max(prior_tolerance, c.prior_slack, trade.allowance(c, parent))
    if c.prior < parent.prior - tol:
        return False
    return not (parent.prior_bce > 0 and c.prior_bce > bce_ratio * parent.prior_bce)


def best_candidate(
    cands: Sequence[Candidate],
    parent: Candidate,
    prior_tolerance: float,
    bce_ratio: float = float("inf"),
    trade: Trade = NO_TRADE,
) -> Candidate:
    """The eligible candidate with the best new-data score (earliest on ties); parent if none."""
    best = parent
    for c in cands:
        ok = eligible(c, parent, prior_tolerance, bce_ratio, trade)
        if c.step != parent.step and ok and c.new > best.new:
            best = c
    return best


def beats(gain: float, se: float, min_gain: float, se_margin: float) -> bool:
    """Whether a gain over the parent counts as an improvement."""
    return gain > max(min_gain, se_margin * se)


def choose(
    cands: Sequence[Candidate],
    parent: Candidate,
    prior_tolerance: float,
    min_gain: float,
    se: float,
    se_margin: float,
    bce_ratio: float = float("inf"),
    min_auc: float = 0.0,
    trade: Trade = NO_TRADE,
) -> Candidate | None:
    """The winning candidate, or None when none beats the parent (no improvement).

    The winner must also rank held-out new grasps better than chance
    (``new_auc >= min_auc``): beating a parent that ranks them *worse* than
    chance is not enough.
    """
    best = best_candidate(cands, parent, prior_tolerance, bce_ratio, trade)
    if best.step == parent.step or best.new_auc < min_auc:
        return None
    return best if beats(best.new - parent.new, se, min_gain, se_margin) else None


def top_candidate(
    cands: Sequence[Candidate],
    parent: Candidate,
    prior_tolerance: float,
    bce_ratio: float = float("inf"),
    trade: Trade = NO_TRADE,
) -> Candidate | None:
    """The eligible non-parent candidate with the best new-data score (earliest on ties),
    even below the parent's; None when no candidate passes the forgetting rule."""
    top: Candidate | None = None
    for c in cands:
        if c.step == parent.step or not eligible(c, parent, prior_tolerance, bce_ratio, trade):
            continue
        if top is None or c.new > top.new:
            top = c
    return top


def clearly_worse(
    c: Candidate, parent: Candidate, se: float, se_margin: float, min_auc: float
) -> bool:
    """Whether ``c`` is clearly worse than the parent on the held-out new data: its score
    is below the parent's by more than ``se_margin`` x ``se`` (the paired bootstrap SE of
    the difference), or its new-data AUC is below ``min_auc``."""
    return c.new - parent.new < -se_margin * se or c.new_auc < min_auc
