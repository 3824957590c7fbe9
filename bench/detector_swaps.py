"""False alarms of the detector right after swaps, on grasps that come in object sets.

Usage: python -m bench.detector_swaps [--model beta|bad-sets] [--phi 2.5] [--p0 0.7]
           [--parent-phi PHI] [--arl0 5000] [--after 1000] [--swaps 80] [--seed 3]

The loop re-references after every swap, condition and returned job, so its chart mostly
runs on young references. Each swap here is the daemon's watch
(:class:`agent.watch.OutcomeWatch`, the real detector): probation of the child against 200
parent grasps, then ``reset`` on the child's probation grasps (the reference completed from
the stream, 200 grasps, growing), then ``--after`` grasps under an unchanged world; after an
alarm the watch re-references on the 200 grasps that follow (``on_alarm = "alert"``, as the
daemon does). Outcomes come in 20-grasp sets at a random phase: ``beta``: each set's rate
drawn from a Beta law with mean p0 and dispersion phi; ``bad-sets``: 15% of sets succeed at
15%, the others at the rate that keeps the mean p0 (heavier tail, phi ~3.4 at p0 0.7). One
watch serves all the swaps, as one daemon does (the detector pools the dispersion of the
references it has dropped): before each swap the parent's 200 grasps are its reference, with
``--parent-phi`` (default: the child's) for a parent whose grasps cluster differently.
Reported: monitored grasps per alarm over the configured ARL0, and the mean probation
length. Last line of stdout: one JSON object.
"""

from __future__ import annotations

import json
import time

import numpy as np

from agent.config import DetectorConfig, ProbationConfig
from agent.watch import OutcomeWatch
from bench.flags import flags, parser


def stream(rng: np.random.Generator, n: int, model: str, p0: float, phi: float) -> list[bool]:
    """``n`` outcomes in 20-grasp sets, starting at a random phase."""
    sets = n // 20 + 2
    if model == "bad-sets":
        q, bad = 0.15, 0.15
        ps = np.where(rng.random(sets) < q, bad, (p0 - q * bad) / (1 - q))
    elif phi > 1:
        k = 1 / ((phi - 1) / 19) - 1
        ps = rng.beta(p0 * k, (1 - p0) * k, sets)
    else:
        ps = np.full(sets, p0)
    x = rng.random((sets, 20)) < ps[:, None]
    return [bool(v) for v in x.ravel()[int(rng.integers(20)) :][:n]]


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--model", choices=["beta", "bad-sets"], default="beta")
    ap.add_argument("--parent-phi", type=float, default=None, help="the parent's (beta model)")
    flags(ap, phi=2.5, p0=0.7, arl0=5000.0, after=1000, swaps=80, seed=3)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    t0 = time.monotonic()
    alarms = monitored = 0
    probation = []
    cfg = DetectorConfig(arl0=a.arl0, min_drop=0.15, reference_grasps=200)
    parent_phi = a.phi if a.parent_phi is None else a.parent_phi
    watch = OutcomeWatch(cfg, ProbationConfig())
    for _ in range(a.swaps):
        parent = stream(rng, 200, "beta" if a.parent_phi is not None else a.model, a.p0, parent_phi)
        x = stream(rng, a.after + 250, a.model, a.p0, a.phi)
        watch.reset(parent)  # the parent served and had its own reference
        watch.start_probation(parent, [])
        i = 0
        while watch.probation is not None:
            watch.update(x[i])
            i += 1
        probation.append(i)
        watch.reset(x[:i])
        for k in range(i, len(x)):
            armed = not watch.detector.calibrating
            j = watch.update(x[k])
            monitored += armed
            if j is not None:
                alarms += 1
                watch.reset([])  # the daemon recalibrates on the grasps after an alert
    per = monitored / max(alarms, 1)
    out = {
        "bench": "detector_swaps",
        "model": a.model,
        "phi": a.phi if a.model == "beta" else None,
        "parent_phi": a.parent_phi,
        "p0": a.p0,
        "arl0": a.arl0,
        "after": a.after,
        "swaps": a.swaps,
        "alarms": alarms,
        "monitored": monitored,
        "grasps_per_alarm": round(per, 1),
        "x_arl0": round(per / a.arl0, 3),
        "probation_mean": round(float(np.mean(probation)), 1),
        "seconds": round(time.monotonic() - t0, 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
