"""python -m bench.finetune --quick runs end to end: collection, fine-tune, scratch, evaluations."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.procs import bench_json


@pytest.mark.timeout(180)
def test_bench_finetune_quick_prints_every_figure(tmp_path: Path) -> None:
    res, progress = bench_json("bench.finetune", "--quick", "--out", str(tmp_path), timeout=170)
    row = res["challenges"]["checkerboard"]
    run = row["runs"]["24"]
    assert run["status"] in ("improved", "no_improvement")
    for fig in (row["parent"], run["challenge"], run["baseline"], res["parent_baseline"]):
        assert fig["n"] == 12 and 0.0 <= fig["ci95"][0] <= fig["success"] <= fig["ci95"][1]
    assert row["scratch"]["challenge"]["n"] == 12
    assert row["explore"]["episodes"] == 24
    assert "eval" in progress
