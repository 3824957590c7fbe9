"""Real outcome streams of the loop replayed through the pure detector (cheap to iterate).

Usage: python -m bench.replay_false_alarms STREAM.json [...] [--arl0 1000 5000]
           [--resampled 400000] [--seed 0]

A stream is what ``bench/loop_false_alarms.py`` saves per run (success, policy, world per
grasp; the sim loads a fresh object set every ``refresh_every`` grasps from grasp 0). With
``on_alarm = "alert"`` the outcomes do not depend on the detector, so the daemon's detector
is replayed exactly: the child's first grasps are its probation (``--probation`` grasps,
then ``OutcomeWatch.reset`` with the child's record so far, as ``Outcomes.reset_detector``
does), and after each alarm the watch recalibrates on the ``reference_grasps`` outcomes that follow.

``as_recorded``: the child's stream as it came. ``resampled``: a long stream of the child's
whole object sets drawn with replacement from the recorded ones (the clustering kept, sets
independent), the detector starting at a random phase: many more alarms-worth than the
recording holds, for the rate at each ``--arl0``. Reported per ARL0: monitored grasps per
alarm and its ratio to the ARL0. Last line of stdout: one JSON object.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from agent.config import DetectorConfig, ProbationConfig
from agent.watch import OutcomeWatch
from bench.flags import flags, parser

ROOT = Path(__file__).resolve().parents[1]


def replay(
    outcomes: list[bool], arl0: float, probation: int, reference: int, parent: list[bool]
) -> dict[str, int]:
    """Alarms and monitored grasps of the daemon's watch over one policy's stream, after
    the parent's reference (its first ``reference`` grasps, as the daemon designed it)."""
    watch = OutcomeWatch(
        DetectorConfig(arl0=arl0, min_drop=0.15, reference_grasps=reference),
        ProbationConfig(enabled=False),
    )
    watch.reset(parent[:reference])
    watch.reset(outcomes[:probation])
    alarms = monitored = 0
    for i in range(probation, len(outcomes)):
        armed = not watch.detector.calibrating
        j = watch.update(outcomes[i])
        monitored += armed
        if j is not None and j.kind == "alarm":
            alarms += 1
            watch.reset([])  # the daemon recalibrates on the grasps after an alert
    return {"alarms": alarms, "monitored": monitored}


def child_stream(path: Path) -> tuple[list[bool], int, list[bool]]:
    """(the child's outcomes, the grasp index of its first, the parent's outcomes before it)
    from a saved stream."""
    d = json.loads(path.read_text())
    pol = d["policy"]
    first = next(i for i, p in enumerate(pol) if p != pol[0])
    ok = [bool(x) for x in d["success"]]
    return ok[first:], first, ok[:first]


def sets_of(outcomes: list[bool], first: int, every: int) -> list[list[bool]]:
    """The whole object sets of the stream (sets start at multiples of ``every``)."""
    start = -first % every
    out = []
    for a in range(start, len(outcomes) - every + 1, every):
        out.append(outcomes[a : a + every])
    return out


def dispersion_aligned(sets: list[list[bool]]) -> float:
    x = np.asarray(sets, dtype=np.float64)
    p = x.mean()
    return float(x.mean(axis=1).var(ddof=1) / (p * (1 - p) / x.shape[1]))


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("streams", nargs="+", type=Path)
    ap.add_argument("--arl0", type=float, nargs="+", default=[1000.0, 5000.0])
    flags(ap, resampled=400_000, probation=13, reference=200, seed=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    streams = [child_stream(p) for p in a.streams]
    sets = [s for o, f, _ in streams for s in sets_of(o, f, 20)]
    out: dict[str, Any] = {
        "bench": "replay_false_alarms",
        "child_grasps": sum(len(o) for o, _, _ in streams),
        "child_success": round(float(np.mean([x for o, _, _ in streams for x in o])), 4),
        "sets": len(sets),
        "dispersion_aligned_sets": round(dispersion_aligned(sets), 3),
    }
    for arl0 in a.arl0:
        rec = [replay(o, arl0, a.probation, a.reference, par) for o, _, par in streams]
        n_al = sum(r["alarms"] for r in rec)
        mon = sum(r["monitored"] for r in rec)
        # resampled: several independent daemons, each from a random phase in a random set
        al = mo = 0
        per = 20_000
        for _ in range(max(a.resampled // per, 1)):
            idx = rng.integers(len(sets), size=per // 20 + 1)
            long = [x for k in idx for x in sets[k]][int(rng.integers(20)) :][:per]
            r = replay(long, arl0, a.probation, a.reference, streams[0][2])
            al, mo = al + r["alarms"], mo + r["monitored"]
        out[f"arl0_{int(arl0)}"] = {
            "as_recorded": {"alarms": n_al, "monitored": mon, "per_alarm": mon / max(n_al, 1)},
            "resampled": {
                "alarms": al,
                "monitored": mo,
                "per_alarm": round(mo / max(al, 1), 1),
                "x_arl0": round(mo / max(al, 1) / arl0, 3),
            },
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
