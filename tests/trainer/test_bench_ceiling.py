"""python -m bench.ceiling: the same bin under both conditions, candidates per object, bins."""

from __future__ import annotations

from pathlib import Path

from bench import ceiling

ROOT = Path(__file__).resolve().parents[2]


def test_ceiling_scores_the_same_bin_under_both_conditions() -> None:
    rows = {
        cond: ceiling.run_scenes(([7000], cond, [str(ROOT / "policies" / "base")], 1))[0]
        for cond in ("baseline", "extend_gripper")
    }
    base, ext = rows["baseline"], rows["extend_gripper"]
    # Identical bin: the same visible objects get the same number of candidate grasps.
    assert len(base["liftable"]) == len(ext["liftable"]) >= 1
    assert base["tries"] == ext["tries"] == len(base["liftable"])  # one candidate per object
    assert base["scripted"] == base["liftable"]  # with one candidate the two agree
    assert len(base["policies"]) == len(ext["policies"]) == 1
    fig = ceiling.figure(3, 4)
    assert fig["n"] == 4 and fig["ci95"][0] < fig["success"] == 0.75 < fig["ci95"][1]


def test_ceiling_candidates_are_six_grasps_per_visible_object() -> None:
    from drivers.sim.cell import SimCell
    from drivers.sim.config import SimConfig

    with SimCell(SimConfig(split="test", seed=7001)) as cell:
        cell.observe()
        cands = ceiling.candidates(cell.privileged(), cell.spec)
    assert cands and all(len(c) == 6 for c in cands)
    first = cands[0]
    # The jittered grasps keep the scripted yaw and sit 1 cm either side of it.
    x0, y0, yaw0 = cell.spec.to_metric(first[0])
    x1, y1, yaw1 = cell.spec.to_metric(first[4])
    assert abs(yaw1 - yaw0) < 1e-5
    assert abs(((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5 - ceiling.JITTER_M) < 1e-3
