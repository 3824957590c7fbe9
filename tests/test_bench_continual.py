"""python -m bench.continual --quick runs the whole loop per mode and reports every figure."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from testkit.procs import bench_json


@pytest.mark.timeout(240)
def test_bench_continual_quick_reports_recovery_per_mode(tmp_path: Path) -> None:
    res, progress = bench_json("bench.continual", "--quick", "--out", str(tmp_path), timeout=230)
    assert res == json.loads((tmp_path / "continual.json").read_text())
    assert (tmp_path / "continual.png").stat().st_size > 10_000
    assert res["checkpoints"] == [20, 40, 80, 160]
    row = res["challenges"]["checkerboard"]
    assert row["drop"] > 0  # checkerboard costs the base policy half its grasps
    assert set(row["modes"]) == {"rounds", "oneshot"}
    for mode in row["modes"].values():
        assert mode["complete"] and mode["grasps"] == 360 and mode["wall_s"] > 0
        assert mode["rounds"] >= 1  # the change was detected and a job submitted
        assert mode["race_cost"] is None or mode["race_cost"] >= 0
        assert [p["since_change"] for p in mode["checkpoints"]] == res["checkpoints"]
        # the quick recipe's gate passes any child: one is swapped in and evaluated
        assert mode["first_child"] is not None
        for p in [*mode["checkpoints"], mode["first_child"], mode["final"]]:
            r, (lo, hi) = p["recovery"], p["recovery_ci95"]
            assert math.isfinite(r) and -2 <= r <= 3 and lo <= r <= hi
            assert p["success"]["n"] == 32
    assert "checkerboard/oneshot" in progress and "loop done" in progress
