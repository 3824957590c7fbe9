"""The robot-trainer CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from agent.bundle import validate_bundle
from trainer.cli import main

torch.set_num_threads(1)


def test_export_random_writes_a_valid_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export-random", "--out", str(tmp_path), "--seed", "3"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    bundle = validate_bundle(out["path"])
    assert bundle.id == out["id"]
    assert bundle.meta["training"]["kind"] == "random-init"
