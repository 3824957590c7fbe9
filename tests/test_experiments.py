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


@pytest.mark.timeout(300)
def test_table3_quick_trains_a_lineage_and_measures_forgetting(tmp_path: Path) -> None:
    res, progress = bench_json(
        "experiments.table3",
        "--quick",
        "--work",
        str(tmp_path / "work"),
        "--out",
        str(tmp_path),
        timeout=290,
    )
    order = res["order"]
    assert order == ["harsh_lighting", "transparent"] and len(res["lineage"]) == 3
    assert len(res["matrix"]) == 3 and all(
        list(row) == ["baseline", *order] for row in res["matrix"]
    )
    for ch, row in res["challenges"].items():
        assert row["continual"] == res["matrix"][order.index(ch) + 1][ch]
        assert row["base"] == res["matrix"][0][ch]
        d = row["vs_base"]
        lo, hi = d["ci95"]
        assert d["value"] == pytest.approx(
            row["continual"]["success"] - row["base"]["success"], abs=1e-4
        )
        assert lo <= d["value"] <= hi
    m = res["measures"]
    first = res["matrix"][1]["harsh_lighting"]["success"]
    last = res["matrix"][2]["harsh_lighting"]["success"]
    assert m["forgetting"]["transparent:harsh_lighting"]["value"] == pytest.approx(
        first - last, abs=1e-4
    )
    assert m["average_success"] == pytest.approx(
        sum(res["matrix"][2][c]["success"] for c in order) / 2, abs=1e-4
    )
    assert "| 2 (transparent) |" in (tmp_path / "table3.md").read_text()
    assert (tmp_path / "table3.png").stat().st_size > 10_000
    assert "lineage transparent" in progress and "single harsh_lighting" in progress
