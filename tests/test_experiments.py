"""Every experiments/ script's --quick mode runs end to end and writes its table, JSON and PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testkit.procs import bench_json


@pytest.mark.timeout(200)
def test_table1_quick_evaluates_every_condition_beside_the_paper(tmp_path: Path) -> None:
    res, progress = bench_json("experiments.table1", "--quick", "--out", str(tmp_path), timeout=190)
    assert res == {**json.loads((tmp_path / "table1.json").read_text()), "files": res["files"]}
    rows = res["conditions"]
    assert list(rows) == [
        "baseline",
        "checkerboard",
        "harsh_lighting",
        "extend_gripper",
        "offset_gripper",
        "transparent",
    ]
    for name, r in rows.items():
        lo, hi = r["ci95"]
        assert r["n"] == 16 and 0 <= lo <= r["success"] <= hi <= 1
        assert r["delta"] == pytest.approx(r["success"] - rows["baseline"]["success"], abs=1e-4)
        assert f"| {name} |" in (tmp_path / "table1.md").read_text()
        assert name in progress
    assert rows["harsh_lighting"]["paper"]["success"] == 0.31
    assert rows["offset_gripper"]["severity"] == {"offset_cm": 10.0}
    assert (tmp_path / "table1.png").stat().st_size > 10_000
