"""Loading policies off the control thread.

:class:`PolicyLoader` owns one worker thread. :meth:`PolicyLoader.submit`
queues a bundle directory; the worker checks its layout and size from
``lstat`` alone, copies it into a temporary directory inside the policy store,
validates the copy (:func:`agent.bundle.validate_bundle`, probed on grey,
noise and recorded images of the current condition), opens and warms it
(:func:`agent.policy.load_policy`), compares its warm decision latency with
the active policy's, and only then renames it to ``store/<id>``: a refused
bundle leaves nothing in the store. A source claiming an id already in the
store must match that copy byte for byte, or it is refused as ``tampered``.
A refusal says whether the bytes were proven to be the bundle they claim
(:attr:`LoadResult.content_id`): a copy that fails its hash is no verdict on that id.
:meth:`PolicyLoader.submit_stored` reloads a bundle already in the store
after the hash-level checks only. The control thread collects
:class:`LoadResult` with :meth:`PolicyLoader.poll` between grasps and swaps
the policy by reference.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.bundle import (
    BUNDLE_FILES,
    META_FILE,
    Bundle,
    copy_bundle_files,
    is_bundle_id,
    read_meta,
    scan_bundle_dir,
    sha256_file,
    validate_bundle,
    verify_bundle,
)
from agent.bundle_errors import BundleError
from agent.cem import CemParams
from agent.config import PolicyConfig
from agent.onnxcheck import probe_images
from agent.policy import Policy, PolicyLoadError, load_policy
from agent.spec import Spec
from plumbing.atomic import fsync_dir

log = logging.getLogger(__name__)

Images = Sequence[npt.NDArray[np.uint8]]
IMPORT_PREFIX = ".import-"
"""Temporary directories inside the store; leftovers from a crash are removed at start."""


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
    reason: str = ""
    """Machine-readable code of the failure (agent.bundle_errors.REASONS; '' on success)."""
    policy_id: str = ""
    """The bundle's id as its meta.json claims it ('' when unreadable), also on failure."""
    parent_id: str | None = None
    """The parent id meta.json claims (None when absent or unreadable)."""
    latency_s: float | None = None
    """Warm decision latency of the loaded policy (Policy.validated_latency_s; None on failure)."""
    content_id: str = ""
    """The id the bundle's bytes were proven to hash to: ``policy_id`` once the hash check
    passed, '' when the bundle was refused before or at it (a corrupted copy). Only a refusal
    with a content_id may be recorded against the id; the genuine bundle stays welcome."""


def load_bundle(
    source: Path | str,
    store: Path,
    spec: Spec,
    pcfg: PolicyConfig,
    cem: CemParams,
    images: Images = (),
    active_latency_s: float | None = None,
    active_id: str | None = None,
) -> Policy:
    """Validate, import into ``store``, open and warm a bundle (blocking).

    ``images``: recorded images of the current condition to probe on.
    ``active_latency_s``: the serving policy's warm latency (None for the
    first policy): the new one's must be at most max(max_latency_factor x it,
    latency_floor_s), and never over max_latency_s. ``active_id``: the serving
    policy's id in ``store``; when the new one looks too slow against the
    recorded figure, both are measured again side by side (a machine busier now
    than when the active policy was loaded must not fail the newcomer).
    Raises BundleError (with
    its reason) or PolicyLoadError; on any failure nothing is left in the store.
    """
    source = Path(source)
    images = list(images)[: pcfg.probe_images]
    scan_bundle_dir(source, pcfg.max_bundle_bytes)  # size and layout before any copy
    meta = read_meta(source)
    claimed = str(meta.get("id", ""))
    if not is_bundle_id(claimed):
        raise BundleError("bad_meta", f"{source}: meta.id {claimed!r} is not 16 hex digits")
    final = store / claimed
    if _same_dir(source, final):  # already in the store: check in place
        bundle = _validate(source, spec, pcfg, cem, images)
        with _proven(bundle.id):
            return _open(bundle, pcfg, cem, images, active_latency_s, _reference(store, active_id))
    store.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=IMPORT_PREFIX, dir=store))
    try:
        copy_bundle_files(source, tmp, pcfg.max_bundle_bytes)
        try:
            bundle = _validate(tmp, spec, pcfg, cem, images)
        except BundleError as exc:
            if exc.reason in ("hash_mismatch", "id_mismatch") and final.exists():
                raise BundleError(
                    "tampered",
                    f"{source}: content does not match bundle {claimed} already in the store"
                    f" ({exc})",
                ) from exc
            raise
        if final.exists():
            _check_same(tmp, final, claimed, source)
        with _proven(bundle.id):
            ref = _reference(store, active_id)
            policy = _open(bundle, pcfg, cem, images, active_latency_s, ref)
        if final.exists():
            shutil.rmtree(tmp)
        else:
            fsync_dir(tmp)
            os.rename(tmp, final)
            fsync_dir(store)
        policy.bundle = dataclasses.replace(policy.bundle, path=final)
        return policy
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_stored(
    store: Path,
    policy_id: str,
    spec: Spec,
    pcfg: PolicyConfig,
    cem: CemParams,
    images: Images = (),
) -> Policy:
    """Reload ``store/<policy_id>`` after the hash-level checks only (it was validated on import).

    For the warm "last good" policy and restarts: no probe and no latency
    comparison; the latency is still measured so the run-time guard is armed.
    """
    if not is_bundle_id(policy_id):
        raise BundleError("bad_meta", f"{policy_id!r} is not a bundle id")
    bundle = verify_bundle(store / policy_id, spec, max_bytes=pcfg.max_bundle_bytes)
    with _proven(bundle.id):
        return load_policy(bundle, pcfg, cem, list(images)[: pcfg.probe_images])


@contextmanager
def _proven(bid: str) -> Iterator[None]:
    """Refusals inside happen to bytes that hash to ``bid``: they carry it as content_id."""
    try:
        yield
    except BundleError as exc:
        exc.content_id = bid
        raise
    except PolicyLoadError as exc:
        err = BundleError(exc.reason, str(exc))
        err.content_id = bid
        raise err from exc


def _validate(path: Path, spec: Spec, pcfg: PolicyConfig, cem: CemParams, images: Images) -> Bundle:
    counts = (1, 7, 64, cem.samples)
    return validate_bundle(
        path, spec, images=images, action_counts=counts, max_bytes=pcfg.max_bundle_bytes
    )


def _reference(store: Path, active_id: str | None) -> Path | None:
    """The active policy's bundle in the store, when it can be re-measured."""
    if active_id is None or not is_bundle_id(active_id):
        return None
    path = store / active_id
    return path if path.is_dir() else None


def _open(
    bundle: Bundle,
    pcfg: PolicyConfig,
    cem: CemParams,
    images: Images,
    active_latency_s: float | None,
    reference: Path | None = None,
) -> Policy:
    policy = load_policy(bundle, pcfg, cem, images)

    def limit_for(active_s: float | None) -> float:
        if active_s is None:
            return pcfg.max_latency_s
        factor_limit = max(pcfg.max_latency_factor * active_s, pcfg.latency_floor_s)
        return min(pcfg.max_latency_s, factor_limit)

    limit = limit_for(active_latency_s)
    latency = policy.validated_latency_s
    assert latency is not None
    if latency > limit:  # measure once more: one busy moment of the machine is not the policy
        probes = probe_images(bundle.spec, images)
        if reference is not None and active_latency_s is not None:
            # the active figure is from when it was loaded; measure both now, interleaved
            ref_bundle = verify_bundle(reference, bundle.spec, max_bytes=pcfg.max_bundle_bytes)
            ref = load_policy(ref_bundle, pcfg, cem, images)
            ref_s, again = math.inf, math.inf
            for _ in range(2):
                ref_s = min(ref_s, ref.measure_latency(probes, pcfg.latency_runs))
                again = min(again, policy.measure_latency(probes, pcfg.latency_runs))
            active_latency_s = max(active_latency_s, ref_s)
            limit = limit_for(active_latency_s)
        else:
            again = policy.measure_latency(probes, pcfg.latency_runs)
        latency = policy.validated_latency_s = min(latency, again)
    if latency > limit:
        active = "none" if active_latency_s is None else f"{active_latency_s * 1000:.2f} ms"
        raise BundleError(
            "too_slow",
            f"{bundle.path}: warm decision {latency * 1000:.2f} ms > limit {limit * 1000:.2f} ms"
            f" (active {active}, factor {pcfg.max_latency_factor},"
            f" cap {pcfg.max_latency_s * 1000:.0f} ms)",
        )
    return policy


def _check_same(new: Path, stored: Path, bid: str, source: Path) -> None:
    for name in sorted(BUNDLE_FILES):
        a, b = new / name, stored / name
        if not b.is_file() or sha256_file(a) != sha256_file(b):
            what = "meta.json" if name == META_FILE else name
            raise BundleError(
                "tampered",
                f"{source}: {what} differs from bundle {bid} already in the store",
            )


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve(strict=True) == b.resolve(strict=True)
    except OSError:
        return False


def _claimed(source: Path) -> tuple[str, str | None]:
    try:
        meta = read_meta(source)
    except (BundleError, OSError):
        return "", None
    bid, parent = meta.get("id"), meta.get("parent_id")
    return (
        bid if isinstance(bid, str) and is_bundle_id(bid) else "",
        parent if isinstance(parent, str) else None,
    )


@dataclass(frozen=True)
class _Job:
    source: Path
    tag: Any
    active_latency_s: float | None
    stored: bool
    active_id: str | None = None


class PolicyLoader:
    """One background thread that turns bundle directories into warmed policies.

    ``probe_images`` (optional) is called on the loader thread for each
    :meth:`submit`; it returns recorded images of the current condition (the
    caller makes it thread-safe). Constructing does no I/O; :meth:`start`
    removes import leftovers from the store and starts the thread.
    """

    def __init__(
        self,
        store: Path,
        spec: Spec,
        pcfg: PolicyConfig,
        cem: CemParams,
        probe_images: Callable[[], list[npt.NDArray[np.uint8]]] | None = None,
    ) -> None:
        self.store = Path(store)
        self.spec = spec
        self.pcfg = pcfg
        self.cem = cem
        self.probe_images = probe_images
        """Callable returning recorded images of the current condition (loader thread)."""
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._results: queue.Queue[LoadResult] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.pending = 0
        """Submitted loads whose result has not been collected yet."""

    def start(self) -> None:
        """Remove leftover temporary imports and start the worker thread."""
        if self._thread is None:
            if self.store.is_dir():
                for p in self.store.glob(IMPORT_PREFIX + "*"):
                    shutil.rmtree(p, ignore_errors=True)
            self._thread = threading.Thread(target=self._work, name="policy-loader", daemon=True)
            self._thread.start()

    def submit(
        self,
        source: Path,
        tag: Any = None,
        active_latency_s: float | None = None,
        active_id: str | None = None,
    ) -> None:
        """Queue a bundle for full validation and loading (thread-safe).

        ``active_latency_s``: the serving policy's ``validated_latency_s``
        (None when nothing serves yet); ``active_id``: its id in the store, so
        a borderline newcomer is compared with it measured at the same moment.
        """
        self.pending += 1
        self._jobs.put(_Job(Path(source), tag, active_latency_s, False, active_id))

    def submit_stored(self, policy_id: str, tag: Any = None) -> None:
        """Queue a reload of ``store/<policy_id>`` with the hash-level checks only."""
        self.pending += 1
        self._jobs.put(_Job(self.store / policy_id, tag, None, True))

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

    def _images(self) -> list[npt.NDArray[np.uint8]]:
        if self.probe_images is None:
            return []
        try:
            images = list(self.probe_images())
        except Exception:
            log.exception("probe_images callback failed; probing grey and noise only")
            return []
        return images

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self._results.put(self._run(job))

    def _run(self, job: _Job) -> LoadResult:
        source = str(job.source)
        bid, parent = _claimed(job.source)
        try:
            if job.stored:
                pol = load_stored(
                    self.store, job.source.name, self.spec, self.pcfg, self.cem, self._images()
                )
            else:
                pol = load_bundle(
                    job.source,
                    self.store,
                    self.spec,
                    self.pcfg,
                    self.cem,
                    self._images(),
                    job.active_latency_s,
                    job.active_id,
                )
        except (BundleError, PolicyLoadError) as exc:
            log.warning("policy at %s refused (%s): %s", source, exc.reason, exc)
            proven = exc.content_id if isinstance(exc, BundleError) else ""
            return LoadResult(
                source, job.tag, None, str(exc), exc.reason, bid, parent, content_id=proven
            )
        except OSError as exc:
            log.warning("policy at %s refused: %s", source, exc)
            return LoadResult(source, job.tag, None, str(exc), "io_error", bid, parent)
        except Exception as exc:  # the worker must survive any bundle
            log.exception("loading %s failed", source)
            msg = f"{type(exc).__name__}: {exc}"
            return LoadResult(source, job.tag, None, msg, "internal", bid, parent)
        return LoadResult(
            source,
            job.tag,
            pol,
            "",
            "",
            pol.id,
            pol.bundle.parent_id,
            pol.validated_latency_s,
            pol.id,
        )
