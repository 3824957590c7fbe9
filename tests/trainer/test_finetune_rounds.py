"""A second round: a job whose parent is a child already trained on the same condition runs
through the real job worker with the lineage's data of that condition as new data (each
dataset once) and base plus the other conditions as prior; the real tiny fine-tune."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from testkit.trainer import TINY_FINETUNE, make_export, make_parent
from trainer.finetune import FinetuneConfig, FinetuneResult, finetune
from trainer.ingest import import_agent_export
from trainer.jobs import Finished
from trainer.jobworker import Worker, WorkSpec

CFG = FinetuneConfig(**TINY_FINETUNE)  # the race gate (the default)


class Recording:
    """The real fine-tune runner, remembering the data each job was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[Path], list[Path]]] = []

    def __call__(
        self,
        cfg: Any,
        parent: Path,
        new: Sequence[Path],
        prior: Sequence[Path],
        out: Path,
        **kw: Any,
    ) -> FinetuneResult:
        """``trainer.jobworker.Runner``'s call: ``progress``, ``stop``, ``job_id`` and
        ``condition`` by keyword."""
        self.calls.append((list(new), list(prior)))
        return finetune(cfg, parent, new, prior, out, kw.pop("progress"), kw.pop("stop"), **kw)


def _job(root: Path, key: str, n: int, condition: str, parent: str, seed: int) -> WorkSpec:
    export = make_export(root / "uploads" / key, n, condition, seed=seed)
    return WorkSpec(
        key=key,
        agent_job=int(key.rsplit("-", 1)[1]),
        condition=condition,
        parent_id=parent,
        export_dir=export,
        parent_upload=root / "uploads" / f"{key}-parent",
        bundles=root / "bundles",
        lineage=root / "lineages" / "a",
        out=root / "runs" / key,
        base_dataset=root / "base",
    )


def _run(worker: Worker, spec: WorkSpec) -> Finished:
    worker.start(spec)
    key, event = worker.events.get(timeout=120)
    assert key == spec.key
    assert isinstance(event, Finished), event
    return event


def test_a_second_round_trains_the_first_child_on_both_rounds_data_once_each(
    tmp_path: Path,
) -> None:
    base = make_parent(tmp_path / "bundles")
    import_agent_export(
        make_export(tmp_path / "x" / "base", 100, "baseline", seed=9), tmp_path / "base"
    )
    (tmp_path / "lineages" / "a").mkdir(parents=True)
    runner = Recording()
    worker = Worker(runner, CFG)
    try:
        other = _run(worker, _job(tmp_path, "a-1", 100, "harsh_lighting", base, seed=1))
        first = _run(worker, _job(tmp_path, "a-2", 200, "checkerboard", base, seed=2))
        assert first.outcome == "improved", first  # the round-2 parent must be a child
        child = first.bundle_id
        second = _run(worker, _job(tmp_path, "a-3", 200, "checkerboard", child, seed=3))
    finally:
        worker.join(5.0)
    assert other.outcome in ("improved", "no_improvement")
    lineage = tmp_path / "lineages" / "a"
    new, prior = runner.calls[2]
    assert sorted(new) == [lineage / "a-2" / "data", lineage / "a-3" / "data"]
    assert len(set(new)) == len(new)  # each dataset once
    assert prior == [tmp_path / "base", lineage / "a-1" / "data"]
    assert runner.calls[1][0] == [lineage / "a-2" / "data"]
    # The job completed with a result that names the child as its parent and counts each
    # round's grasps once.
    assert second.outcome in ("improved", "no_improvement")
    result = json.loads((tmp_path / "runs" / "a-3" / "result.json").read_text())
    meta = result["meta"]
    assert meta["condition"] == "checkerboard"
    assert json.loads((tmp_path / "runs" / "a-3" / "job.json").read_text())["parent"].endswith(
        child
    )
    assert sorted(d["episodes"] for d in meta["data"]["new"]) == [200, 200]
    assert meta["validation"]["gate"] == "race" and meta["validation"]["verdict"]
    if second.outcome == "improved":
        assert (tmp_path / "bundles" / second.bundle_id / "meta.json").is_file()
