"""Where do the fingers land? A data-driven action shift for a changed robot (pure torch, no I/O).

A gripper mounted on an offset bracket lands a fixed distance from the
commanded point. The parent network still knows what a good grasp looks like
at the landing point; only the mapping from command to landing point moved.
:func:`search_shift` scores the parent on the new condition's training grasps
with the logged actions moved by each cell-frame shift on a grid (coarse, then
fine around the best) and returns the shift that ranks the logged outcomes
best. It is adopted only when it beats no shift by more than
``max(min_gain, se_margin x SE)`` (paired bootstrap over grasps), and only
when the shifted score comes back to the parent's score on prior data (the
shift explains the drop), so a scene change (nothing moved) keeps shift 0.
The search picks the best of ~100 shifts on the same grasps it scores them on,
so its gain is biased upwards: with held-out grasps given, the chosen shift must
also beat no shift there by ``max(min_gain, confirm_margin x SE)`` (in the demo a
checkerboard scene "found" a 4 x 7 cm shift at 4 SE on the search grasps; the
child served no better and probation rolled it back).
Nothing here knows a condition's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from trainer import early_stop
from trainer.dataset import Batch
from trainer.early_stop import Measure
from trainer.qnet import QNet


@dataclass(frozen=True)
class ShiftSearch:
    """The grid and the acceptance rule."""

    range_m: float = 0.12
    """Largest shift searched along x and y (metres)."""
    coarse_m: float = 0.03
    """Coarse grid spacing (metres)."""
    fine_m: float = 0.01
    """Fine grid spacing around the coarse best (metres), out to one coarse step."""
    min_gain: float = 0.02
    """Smallest gain of the measure over no shift that counts."""
    se_margin: float = 2.0
    """The gain must also exceed this many bootstrap standard errors."""
    restore_tolerance: float = 0.05
    """The shifted score must come within this of the parent's score on prior data."""
    confirm_margin: float = 1.0
    """On held-out grasps the shift must beat no shift by this many SE (and min_gain)."""


@torch.no_grad()
def _probs(net: QNet, batch: Batch, shifts_m: list[tuple[float, float]]) -> npt.NDArray[np.float64]:
    """P(success) [len(shifts), B] of the logged actions moved by each shift."""
    was = net.training
    net.eval()
    device = next(net.parameters()).device
    spec = net.spec
    out = np.zeros((len(shifts_m), len(batch)), np.float64)
    delta = torch.tensor(
        [[sx / spec.workspace_x_m, sy / spec.workspace_y_m, 0.0] for sx, sy in shifts_m],
        dtype=torch.float32,
        device=device,
    )
    for i in range(0, len(batch), 64):
        images = torch.from_numpy(np.ascontiguousarray(batch.images[i : i + 64])).to(device)
        acts = torch.from_numpy(batch.actions[i : i + 64]).to(device, torch.float32)
        enc = net.encode(images)
        cand = acts.unsqueeze(1) + delta.unsqueeze(0)  # [b, S, 3]
        out[:, i : i + 64] = torch.sigmoid(net.logits_from(enc, cand)).T.double().cpu().numpy()
    net.train(was)
    return out


def search_shift(
    net: QNet,
    batch: Batch,
    measure: Measure,
    cfg: ShiftSearch,
    reference: float,
    seed: int = 0,
    held: Batch | None = None,
) -> tuple[tuple[float, float], dict[str, Any]]:
    """The adopted shift (metres; (0, 0) unless the data show one) and a JSON-ready record.

    Adopted when it beats no shift by more than ``max(min_gain, se_margin x SE)``
    and brings the score on the new data back to within ``restore_tolerance``
    of ``reference`` (the parent's score on held-out prior data): the shift must
    explain the drop, not merely rank a confusing scene a little better; and, with
    ``held`` (held-out grasps of the new condition), when it also wins there.
    """
    y = (batch.rewards > 0.5).astype(np.float64)
    k = round(cfg.range_m / cfg.coarse_m)
    coarse = [
        (i * cfg.coarse_m, j * cfg.coarse_m) for i in range(-k, k + 1) for j in range(-k, k + 1)
    ]
    p = _probs(net, batch, coarse)
    scores = [early_stop.score(measure, p[s], y) for s in range(len(coarse))]
    bx, by = coarse[int(np.argmax(scores))]
    m = round(cfg.coarse_m / cfg.fine_m)
    fine = [
        (bx + i * cfg.fine_m, by + j * cfg.fine_m)
        for i in range(-m, m + 1)
        for j in range(-m, m + 1)
    ]
    fine = [(round(a, 4), round(b, 4)) for a, b in fine]
    pf = _probs(net, batch, [(0.0, 0.0), *fine])
    fscores = [early_stop.score(measure, pf[s + 1], y) for s in range(len(fine))]
    best = int(np.argmax(fscores))
    score0 = early_stop.score(measure, pf[0], y)
    se = early_stop.paired_se(measure, pf[best + 1], pf[0], y, None, 200, seed)
    gain = fscores[best] - score0
    restores = fscores[best] >= reference - cfg.restore_tolerance
    adopted = early_stop.beats(gain, se, cfg.min_gain, cfg.se_margin) and restores
    confirm: dict[str, Any] = {}
    if held is not None and adopted:
        yh = (held.rewards > 0.5).astype(np.float64)
        ph = _probs(net, held, [(0.0, 0.0), fine[best]])
        h_gain = early_stop.score(measure, ph[1], yh) - early_stop.score(measure, ph[0], yh)
        h_se = early_stop.paired_se(measure, ph[1], ph[0], yh, None, 200, seed + 1)
        confirmed = early_stop.beats(h_gain, h_se, cfg.min_gain, cfg.confirm_margin)
        confirm = {
            "held_out_gain": round(h_gain, 5),
            "held_out_se": round(h_se, 5),
            "held_out_n": len(yh),
            "confirmed": confirmed,
        }
        adopted = confirmed
    shift = fine[best] if adopted else (0.0, 0.0)
    record = {
        "adopted": adopted,
        "shift_m": list(shift),
        "best_m": list(fine[best]),
        "score_no_shift": round(score0, 5),
        "score_best": round(fscores[best], 5),
        "gain": round(gain, 5),
        "se": round(se, 5),
        "reference": round(reference, 5),
        "restores": restores,
        "n": len(y),
        "successes": int(y.sum()),
        **confirm,
    }
    return shift, record
