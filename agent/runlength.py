"""Run lengths of an integer Bernoulli CUSUM: exact (Markov chain) and simulated (pure numpy).

The chart: statistic S starts at 0; on a success S <- max(S - down, 0), on a failure
S <- S + up; it alarms when S >= threshold. With threshold h the states 0..h-1 are
transient and the mean run length from 0 solves ``(I - P_h) L = 1``.

:func:`arl_curve` gets the mean run length for *every* threshold 0..H at once, for a
batch of success rates: ``I - P_h`` is the leading h x h block of ``I - P_H``, so one
banded LU factorisation ``L U`` without pivoting (it exists: the blocks are nonsingular
M-matrices) serves them all. With ``y = L^-1 1`` and ``w = U^-T e_0`` (both computed by
forward sweeps, so their first h entries belong to the h-block), ``ARL(h) = sum_{i<h} w_i y_i``.
Cost O(H * down * up) per rate instead of one dense O(h^3) solve per threshold.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

ARL_CAP = 1e12
"""Run lengths are reported up to this (beyond it float64 elimination loses precision)."""


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


class ArlCurve:
    """Exact mean run lengths from 0 for thresholds 1, 2, 3, ..., computed on demand.

    The elimination of row k only involves rows k..k+down and columns k..k+down+up, so a
    window of that size slides along an open-ended matrix: :meth:`extend` continues where
    the last call stopped, and a threshold search pays only for the thresholds it looks at.
    """

    def __init__(self, down: int, up: int, p_success: npt.ArrayLike) -> None:
        p = np.atleast_1d(np.asarray(p_success, dtype=np.float64))
        if not np.all((p > 0) & (p < 1)):
            raise ValueError("success rates must be in (0, 1)")
        self.down, self.up, self._p, self._q = down, up, p, 1.0 - p
        n = p.size
        win = np.zeros((n, down + 1, down + up + 2))  # rows k..k+down, columns k.. (+1 spare)
        for r in range(down + 1):
            win[:, r, 0] -= p  # a success from state r <= down lands in state 0
            win[:, r, r] += 1.0
            win[:, r, r + up] -= self._q
        self._win = win
        self._y = np.ones((n, down + 1))  # L^-1 1 for rows k..k+down
        self._acc = np.zeros((n, up + 1))  # U^T w = e_0, partial sums for columns k..k+up
        self._acc[:, 0] = -1.0
        self._total = np.zeros(n)
        self.thresholds = 0
        """Thresholds computed so far (the next :meth:`extend` starts at this + 1)."""

    def extend(self, count: int) -> npt.NDArray[np.float64]:
        """ARL for the next ``count`` thresholds, ``[len(p_success), count]``, capped at ARL_CAP."""
        down, up, p, q = self.down, self.up, self._p, self._q
        win, y, acc = self._win, self._y, self._acc
        out = np.empty((p.size, count))
        with np.errstate(over="ignore", invalid="ignore"):
            for j in range(count):
                piv = win[:, 0, : up + 1]  # row k of U: columns k..k+up
                w = -acc[:, 0] / piv[:, 0]
                acc[:, 1:] += piv[:, 1:] * w[:, None]
                factor = win[:, 1:, 0] / piv[:, 0, None]
                win[:, 1:, : up + 1] -= factor[:, :, None] * piv[:, None, :]
                y[:, 1:] -= factor * y[:, 0, None]
                # each term is >= 0 in exact arithmetic; past ~1e12 the pivots lose precision
                term = np.nan_to_num(w * y[:, 0], nan=ARL_CAP)
                self._total += np.maximum(term, 0.0)
                out[:, j] = self._total
                win[:, :-1, :-1] = win[:, 1:, 1:]  # slide: row k+down+1 enters
                win[:, -1, :] = 0.0
                win[:, :, -1] = 0.0
                win[:, -1, 0] -= p
                win[:, -1, down] += 1.0
                win[:, -1, down + up] -= q
                y[:, :-1] = y[:, 1:]
                y[:, -1] = 1.0
                acc[:, :-1] = acc[:, 1:]
                acc[:, -1] = 0.0
        self.thresholds += count
        return np.minimum(out, ARL_CAP)


def arl_curve(
    down: int, up: int, max_threshold: int, p_success: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Exact mean run lengths from 0, ``[len(p_success), max_threshold + 1]``.

    Entry ``[k, h]`` is the ARL with threshold ``h`` at success rate ``p_success[k]``
    (equal to :func:`arl_markov` ``(down, up, h, p_success[k])``; threshold 0 gives 1),
    capped at :data:`ARL_CAP`. Every rate must be in (0, 1).
    """
    curve = ArlCurve(down, up, p_success)
    first = np.ones((curve._p.size, 1))
    if max_threshold <= 0:
        return first
    return np.concatenate([first, curve.extend(int(max_threshold))], axis=1)


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
