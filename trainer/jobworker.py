"""The training worker: one job at a time on its own thread (torch work stays off the socket loop).

For a job it (1) moves the uploaded parent bundle into the bundle store after
validating it, unless the store already has it; (2) converts the job's export
into an episode store under the agent's lineage, atomically and once (a
restart finds it done); (3) calls the runner with the parent, the lineage's
data of this condition as new data, and the base dataset plus the lineage's
other conditions as prior data, in the job's run directory (the runner resumes
from its checkpoints there); (4) copies an improved bundle into the store.
The outcome goes back to the service loop as a :mod:`trainer.jobs` event on
a queue; progress is kept as "latest only", so memory stays bounded. Each run
has its own stop event: :meth:`Worker.cancel` stops one job's run at the
runner's next step (no event then), :meth:`Worker.join` stops any run.
"""

from __future__ import annotations

import importlib
import json
import logging
import queue
import shutil
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agent.bundle import validate_bundle
from plumbing.atomic import replacing_dir
from trainer.jobs import Event, Failed, Finished

log = logging.getLogger(__name__)


class RunResult(Protocol):
    """What a runner returns (``trainer.finetune.FinetuneResult``)."""

    status: str
    bundle_path: Path | None
    bundle_id: str | None


class Runner(Protocol):
    """The fine-tune recipe: ``trainer.finetune.finetune``'s signature."""

    def __call__(
        self,
        cfg: Any,
        parent: Path,
        new: Sequence[Path],
        prior: Sequence[Path],
        out: Path,
        *,
        progress: Callable[[dict[str, Any]], None],
        stop: threading.Event,
        job_id: str,
        condition: str,
    ) -> RunResult: ...


def load_object(spec: str) -> Any:
    """Import ``"package.module:name"`` and return the object."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class WorkSpec:
    """Everything the worker needs for one job (paths resolved by the service)."""

    key: str
    """Trainer job id."""
    agent_job: int
    """The agent's job number."""
    condition: str
    """Condition of the job's data."""
    parent_id: str
    """Bundle id to fine-tune."""
    export_dir: Path
    """The uploaded export (robot-agent-dataset v1)."""
    parent_upload: Path
    """Where an uploaded parent bundle lies (if the store lacked it)."""
    bundles: Path
    """The bundle store."""
    lineage: Path
    """This agent's lineage directory."""
    out: Path
    """The runner's run directory."""
    base_dataset: Path | None
    """Base condition data (prior of every job)."""


class Worker:
    """Runs one job at a time on a thread; reports on ``events`` as (key, event)."""

    def __init__(self, runner: Runner, runner_cfg: Any) -> None:
        self.runner = runner
        self.runner_cfg = runner_cfg
        self.events: queue.Queue[tuple[str, Event]] = queue.Queue()
        self.stop = threading.Event()
        """Set on shutdown: no run goes on (each run also has its own stop event)."""
        self._thread: threading.Thread | None = None
        self._run_stop = threading.Event()
        self._run_key = ""
        self._lock = threading.Lock()
        self._progress: dict[str, dict[str, Any]] = {}

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, spec: WorkSpec) -> None:
        """Start the job on a fresh thread; the worker must be idle."""
        if self.busy:
            raise RuntimeError("the worker is busy")
        run_stop = threading.Event()
        if self.stop.is_set():
            run_stop.set()
        self._run_stop, self._run_key = run_stop, spec.key
        self._thread = threading.Thread(
            target=self._run, args=(spec, run_stop), name=f"train-{spec.key}", daemon=True
        )
        self._thread.start()

    def cancel(self, key: str) -> bool:
        """Stop job ``key``'s run at the runner's next step, if it is the one running; the
        run then reports nothing. Returns whether it was running (``busy`` says when it ended)."""
        if self.busy and self._run_key == key:
            self._run_stop.set()
            return True
        return False

    def take_progress(self) -> dict[str, dict[str, Any]]:
        """The latest progress of each job since the last call."""
        with self._lock:
            out, self._progress = self._progress, {}
        return out

    def join(self, timeout: float) -> None:
        self.stop.set()
        self._run_stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self, spec: WorkSpec, run_stop: threading.Event) -> None:
        try:
            event = self._train(spec, run_stop)
        except Exception as exc:
            if run_stop.is_set():  # shutdown (resumes at the next start) or cancelled
                log.info(
                    "job %s stopped (%s)",
                    spec.key,
                    "shutdown" if self.stop.is_set() else "cancelled",
                )
                return
            log.exception("job %s failed", spec.key)
            tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
            event = Failed(tb[:500])
        if event is None:
            return
        self.events.put((spec.key, event))

    def _report(self, key: str, info: dict[str, Any]) -> None:
        with self._lock:
            self._progress[key] = dict(info)

    def _train(self, spec: WorkSpec, run_stop: threading.Event) -> Event | None:
        parent = ensure_parent(spec)
        data = ingest_once(spec)
        new, prior = lineage_data(spec, data)
        if run_stop.is_set():
            return None
        spec.out.mkdir(parents=True, exist_ok=True)
        self._report(spec.key, {"stage": "training"})
        result = self.runner(
            self.runner_cfg,
            parent,
            new,
            prior,
            spec.out,
            progress=lambda info: self._report(spec.key, info),
            stop=run_stop,
            job_id=spec.key,
            condition=spec.condition,
        )
        if run_stop.is_set():
            # shutdown: the job stays "training" and resumes at the next start; cancelled:
            # the service has ended the job already (a verdict reached meanwhile is dropped)
            return None
        if result.status == "improved":
            if result.bundle_path is None:
                raise ValueError("runner reported 'improved' without a bundle")
            bid = store_bundle(Path(result.bundle_path), spec.bundles)
            return Finished("improved", bid, f"bundle {bid}")
        if result.status == "no_improvement":
            return Finished("no_improvement", "", "no candidate passed the gate on held-out data")
        raise ValueError(f"runner returned status {result.status!r}")


def store_bundle(src: Path, bundles: Path) -> str:
    """Validate a bundle and copy it into the content-addressed store (once); returns its id."""
    b = validate_bundle(src)
    final = bundles / b.id
    if not final.exists():
        with replacing_dir(final) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
    return b.id


def ensure_parent(spec: WorkSpec) -> Path:
    """The parent bundle's directory in the store, moving the uploaded copy in if needed."""
    final = spec.bundles / spec.parent_id
    if final.is_dir():
        return final
    b = validate_bundle(spec.parent_upload)
    if b.id != spec.parent_id:
        raise ValueError(f"uploaded parent has id {b.id}, the job names {spec.parent_id}")
    store_bundle(spec.parent_upload, spec.bundles)
    return final


def ingest_once(spec: WorkSpec) -> Path:
    """The job's data as an episode store in the lineage (converted once, atomically)."""
    from trainer.ingest import import_agent_export

    final = spec.lineage / spec.key
    if (final / "source.json").is_file():
        return final
    index = json.loads((spec.export_dir / "index.json").read_text())
    for desc in dict(index.get("arrays", {})).values():  # the index names files: keep them here
        name = desc.get("file") if isinstance(desc, dict) else None
        if not isinstance(name, str) or not (spec.export_dir / name).is_file() or "/" in name:
            raise ValueError(f"export index names {name!r}, which is not a file of the upload")
    if index.get("condition") != spec.condition:
        raise ValueError(
            f"export is of condition {index.get('condition')!r}, the job names {spec.condition!r}"
        )
    with replacing_dir(final, replace=True) as tmp:  # a half-ingested earlier try goes
        grasps = import_agent_export(spec.export_dir, tmp / "data")
        source = {
            "key": spec.key,
            "agent_job": spec.agent_job,
            "condition": spec.condition,
            "grasps": grasps,
        }
        (tmp / "source.json").write_text(json.dumps(source, indent=1))
    return final


def lineage_data(spec: WorkSpec, this: Path) -> tuple[list[Path], list[Path]]:
    """(new, prior): the lineage's data of this condition, then base + its other conditions."""
    new: list[Path] = []
    prior: list[Path] = []
    if spec.base_dataset is not None:
        prior.append(spec.base_dataset)
    for d in sorted(spec.lineage.iterdir()):
        src = d / "source.json"
        if d.name.startswith(".") or not src.is_file():
            continue
        cond = json.loads(src.read_text()).get("condition")
        (new if cond == spec.condition else prior).append(d / "data")
    if this / "data" not in new:
        new.append(this / "data")
    return new, prior
