"""Loading policies off the control thread.

:class:`PolicyLoader` owns one worker thread. :meth:`submit` queues a bundle
directory; the worker copies it into the policy store (the agent keeps every
bundle it ever ran), validates it (:func:`agent.bundle.validate_bundle`),
opens and warms its ONNX Runtime sessions, and posts a :class:`LoadResult`.
The control thread collects results with :meth:`poll` between grasps and
swaps the policy by reference.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.bundle import BundleError, read_meta, validate_bundle
from agent.config import CemConfig, PolicyConfig
from agent.policy import Policy, PolicyLoadError, load_policy
from agent.spec import Spec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadResult:
    """Outcome of one load: a warmed policy, or the reason it was refused."""

    source: str
    """The directory that was submitted."""
    tag: Any
    """Caller's tag, returned as given (e.g. ("promote", id))."""
    policy: Policy | None
    """The loaded policy, or None on failure."""
    error: str
    """Why it failed ('' on success)."""


def import_bundle(source: Path, store: Path) -> Path:
    """Copy a bundle into ``store/<id>`` unless it is already there; returns the store path."""
    source = Path(source)
    meta = read_meta(source)
    bid = str(meta.get("id", ""))
    if not bid or "/" in bid or bid.startswith("."):
        raise BundleError(f"{source}: meta.json has no usable id")
    dest = store / bid
    if source.resolve() == dest.resolve() or dest.is_dir():
        return dest
    store.mkdir(parents=True, exist_ok=True)
    tmp = store / f".{bid}.importing"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    tmp.rename(dest)
    return dest


def load_from_store(
    source: Path, store: Path, spec: Spec, pcfg: PolicyConfig, ccfg: CemConfig
) -> Policy:
    """Import, validate, open and warm a bundle (blocking); raises BundleError/PolicyLoadError."""
    path = import_bundle(source, store)
    bundle = validate_bundle(path, spec)
    return load_policy(bundle, pcfg, ccfg)


class PolicyLoader:
    """One background thread that turns bundle directories into warmed policies."""

    def __init__(self, store: Path, spec: Spec, pcfg: PolicyConfig, ccfg: CemConfig) -> None:
        self.store = store
        self.spec = spec
        self.pcfg = pcfg
        self.ccfg = ccfg
        self._jobs: queue.Queue[tuple[Path, Any] | None] = queue.Queue()
        self._results: queue.Queue[LoadResult] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.pending = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="policy-loader", daemon=True)
            self._thread.start()

    def submit(self, source: Path, tag: Any = None) -> None:
        """Queue a bundle for loading (thread-safe)."""
        self.pending += 1
        self._jobs.put((Path(source), tag))

    def poll(self) -> LoadResult | None:
        """A finished load, or None."""
        try:
            r = self._results.get_nowait()
        except queue.Empty:
            return None
        self.pending -= 1
        return r

    def wait(self, timeout: float) -> LoadResult | None:
        """Block up to ``timeout`` seconds for a finished load (tests, start-up)."""
        try:
            r = self._results.get(timeout=timeout)
        except queue.Empty:
            return None
        self.pending -= 1
        return r

    def close(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout)
            self._thread = None

    def _work(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            source, tag = item
            try:
                pol = load_from_store(source, self.store, self.spec, self.pcfg, self.ccfg)
            except (BundleError, PolicyLoadError, OSError) as exc:
                log.warning("policy at %s refused: %s", source, exc)
                self._results.put(LoadResult(str(source), tag, None, str(exc)))
            except Exception as exc:  # the worker must survive any bundle
                log.exception("loading %s failed", source)
                self._results.put(
                    LoadResult(str(source), tag, None, f"{type(exc).__name__}: {exc}")
                )
            else:
                self._results.put(LoadResult(str(source), tag, pol, ""))
