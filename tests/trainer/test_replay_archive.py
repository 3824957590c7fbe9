"""The base replay archive: a dataset written into one compressed file comes back as the same
episodes (images, actions, outcomes, policy id), and the shipped archive fits the shipped
base policy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.bundle import validate_bundle
from agent.spec import DEFAULT_SPEC
from trainer.dataset import Episode, EpisodeDataset, EpisodeWriter, Step
from trainer.replay_archive import dataset_from_archive, read_meta, write_archive

REPO = Path(__file__).resolve().parents[2]


def _dataset(root: Path, n: int) -> list[Episode]:
    rng = np.random.default_rng(0)
    eps = [
        Episode(
            steps=(
                Step(
                    image=rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
                    action=rng.normal(size=DEFAULT_SPEC.action_dim).astype(np.float32),
                    reward=float(i % 3 == 0),
                    done=True,
                ),
            ),
            success=i % 3 == 0,
            condition="baseline",
            policy_id="0123456789abcdef",
            timestamp=1.0,
        )
        for i in range(n)
    ]
    with EpisodeWriter(root, DEFAULT_SPEC) as w:
        for ep in eps:
            w.append(ep)
    return eps


def test_archive_round_trip_gives_the_same_grasps(tmp_path: Path) -> None:
    eps = _dataset(tmp_path / "ds", 12)
    meta = write_archive(tmp_path / "ds", tmp_path / "a.npz", {"policy_id": "0123456789abcdef"})
    assert meta["grasps"] == 12 and meta["successes"] == 4
    assert read_meta(tmp_path / "a.npz")["policy_id"] == "0123456789abcdef"
    counts = dataset_from_archive(tmp_path / "a.npz", tmp_path / "back")
    assert counts["episodes"] == 12 and counts["successes"] == 4
    back = list(EpisodeDataset.open(tmp_path / "back").episodes())
    for a, b in zip(eps, back, strict=True):
        assert np.array_equal(a.steps[0].image, b.steps[0].image)
        assert np.array_equal(a.steps[0].action, b.steps[0].action)
        assert (a.success, b.policy_id) == (b.success, "0123456789abcdef")


def test_a_file_that_is_not_an_archive_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", image=np.zeros(3))
    with pytest.raises(ValueError, match="not a base replay archive"):
        read_meta(tmp_path / "x.npz")


def test_shipped_archive_was_collected_by_the_shipped_base_policy(tmp_path: Path) -> None:
    meta = read_meta(REPO / "policies" / "base-replay.npz")
    assert meta["policy_id"] == validate_bundle(REPO / "policies" / "base", run_inference=False).id
    assert meta["grasps"] == 4000 and meta["condition"] == "baseline"
    archive = str(REPO / "policies" / "base-replay.npz")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.entry",
            "base-data",
            "--out",
            str(tmp_path / "b"),
            "--from-archive",
            archive,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert EpisodeDataset.open(tmp_path / "b").num_episodes == 4000
