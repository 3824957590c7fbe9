"""The policy slot: what is loaded, kept warm, taken out of service, and what a finished
load does to the lifecycle.

Contract (control thread, apart from the loader's own thread):

- **Which policy is active** is the lifecycle state's (``State.policy``, with the
  persisted "last good" pointers). The slot holds only the warmed
  :class:`agent.policy.Policy` objects (:class:`WarmPolicies`): the active one and the
  fallback, so a swap, a rollback or a fault is a change of reference between two grasps.
- **A load says what its arrival does** (:data:`agent.loads.LoadRequest`): ``Initial`` and
  ``Promote`` swap it in (on probation unless nothing serves), ``Rollback`` swaps it in
  trusted, ``Trained(job)`` swaps the job's result in on probation against its parent if
  the lifecycle still waits for that job (else it stays a candidate), ``Warm`` only
  re-warms a policy the lifecycle already names.
- **A refused bundle** is a verdict on its id only when the refused bytes are proven to
  be that bundle; a refused reload of a stored policy takes it out of service; a refused
  trained result fails its job (:meth:`agent.jobs.Jobs.result_refused`).
- **A fault** (a hang, a bad output, a crash while deciding) takes the policy out of
  service at once, in memory, even while the lifecycle step cannot be committed; the
  step is retried at most every ``FLUSH_RETRY_S``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agent import lifecycle as lc
from agent.config import AgentConfig
from agent.decision_guard import clear_marker, read_marker
from agent.grasplog import GraspLog
from agent.journal import FLUSH_RETRY_S, Journal
from agent.loader import LoadResult, PolicyLoader
from agent.loads import Initial, LoadRequest, Rollback, Trained, Warm
from agent.logreader import LogReader
from agent.policy import Policy
from agent.spec import Spec
from agent.topics import Topic

if TYPE_CHECKING:
    from agent.jobs import Jobs

log = logging.getLogger(__name__)


# -- the warm set ---------------------------------------------------------------------------
class _Reaper:
    """Releases dropped policies on its own thread: destroying ONNX Runtime sessions takes
    2-10 ms, which must not land on the control thread between two grasps."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Policy | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def ensure_started(self) -> None:
        """Start the thread (before the first swap: a thread start must not land in one)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="policy-reaper", daemon=True)
                self._thread.start()

    def release(self, policy: Policy) -> None:
        self.ensure_started()
        self._queue.put(policy)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            del item  # the last reference: the sessions are freed here


class WarmPolicies:
    """Warmed policies keyed by id; keeps what :meth:`keep` names, drops the rest.

    A dropped policy is released on a background thread (never on the caller's).
    """

    def __init__(self) -> None:
        self._by_id: dict[str, Policy] = {}
        self._reaper = _Reaper()

    def get(self, policy_id: str | None) -> Policy | None:
        """The warmed policy with this id, or None (not loaded yet, or dropped)."""
        return None if policy_id is None else self._by_id.get(policy_id)

    def __contains__(self, policy_id: object) -> bool:
        return policy_id in self._by_id

    def put(self, policy: Policy) -> None:
        self._reaper.ensure_started()
        self._by_id[policy.id] = policy

    def drop(self, policy_id: str) -> None:
        gone = self._by_id.pop(policy_id, None)
        if gone is not None:
            self._reaper.release(gone)

    def keep(self, *policy_ids: str | None) -> None:
        """Drop every policy not named (the active one and the fallback are kept warm)."""
        wanted = {p for p in policy_ids if p}
        for pid in [p for p in self._by_id if p not in wanted]:
            self._reaper.release(self._by_id.pop(pid))

    @property
    def ids(self) -> list[str]:
        return sorted(self._by_id)


# -- the slot -------------------------------------------------------------------------------
class Host(Protocol):
    """What the slot asks of the daemon (control thread)."""

    @property
    def state(self) -> lc.State: ...
    @property
    def condition_id(self) -> int: ...
    @property
    def jobs(self) -> Jobs: ...
    def step(self, event: lc.Event, details: dict[str, Any] | None = None) -> lc.State: ...
    def try_step(self, event: lc.Event, details: dict[str, Any] | None = None) -> None: ...
    @property
    def journal(self) -> Journal: ...
    def refuse(self, reason: str) -> None: ...
    def served(self) -> None: ...


class PolicySlot:
    """Loads, keeps warm and faults policies for one daemon."""

    def __init__(
        self, host: Host, glog: GraspLog, store: Path, spec: Spec, cfg: AgentConfig
    ) -> None:
        self.host = host
        self.log = glog
        self.store = store
        self.warm = WarmPolicies()
        self.loader = PolicyLoader(store, spec, cfg.policy, cfg.cem, probe_images=self._probe)
        self.loading: dict[str, str] = {}
        """Purpose of each load in flight, by source directory."""
        self.faulted: dict[str, str] = {}
        """Policies out of service whose lifecycle step is not committed yet (why)."""
        self.probe_condition = 0
        """The condition whose recorded images validate a new bundle."""
        self._cfg = cfg
        self._db_path = cfg.data_path(cfg.grasp_log.path)
        self._last_retry = 0.0

    def serving(self) -> Policy | None:
        """The policy that serves the next grasp (the active one; while racing, the arm
        whose turn it is), once warm."""
        return self.warm.get(self.host.state.serving)

    # -- start-up -----------------------------------------------------------------------------
    def start(self, marker: Path) -> None:
        """Fault what the previous run died deciding or rejected, and load the configured
        first policy when nothing was served before."""
        self._fault_died_deciding(marker)
        s = self.host.state
        for pid in [p for p in (s.policy, *s.good) if p]:
            row = self.log.policy(pid)
            if row is not None and row["status"] == "rejected":
                self.host.try_step(lc.PolicyFault(pid, f"rejected earlier: {row['reason']}"))
        s = self.host.state
        if s.policy is None and self._cfg.policy.bundle and not s.good:
            self.load(Path(self._cfg.policy.bundle), Initial())
        elif s.policy is None:
            self.host.refuse(
                "no policy: set policy.bundle or promote one (robot-agent ctl promote DIR)"
            )

    def _fault_died_deciding(self, marker: Path) -> None:
        """The previous process died in a decision that had outlasted half its deadline
        (the guard's marker names the policy): that policy is never served again."""
        found = read_marker(marker)
        if found is None:
            return
        pid = found.get("policy")
        s = self.host.state
        if isinstance(pid, str) and (pid == s.policy or pid in s.good or pid in s.racing):
            active = found.get("active_s")
            secs = f" after {active:.1f} s" if isinstance(active, float | int) else ""
            self.fault(pid, "hung", f"the previous run died in a decision of this policy{secs}")
        elif pid is None:
            log.warning("unreadable decision marker %s ignored", marker)
        clear_marker(marker)

    # -- loading ------------------------------------------------------------------------------
    def load(self, source: Path, request: LoadRequest) -> None:
        """Queue a bundle for validation and loading (its result comes back via poll)."""
        self.loading[str(source)] = request.purpose
        if isinstance(request, Rollback | Trained) and source.parent == self.store:
            # it crossed the trust boundary once: validated on import (a rollback's policy
            # served before; a trained result in the store is one the daemon stopped before
            # swapping in), reloaded with the hash checks only
            self.loader.submit_stored(source.name, request)
            return
        active = self.serving()
        self.loader.submit(
            source,
            request,
            active_latency_s=active.validated_latency_s if active is not None else None,
            active_id=active.id if active is not None else None,
        )

    def ensure_warm(self) -> None:
        """Keep the active policy, the fallback and the racing arms loaded; drop any other
        session."""
        s = self.host.state
        wanted = list(dict.fromkeys(p for p in (s.policy, s.fallback, *s.racing) if p))
        self.warm.keep(*wanted)
        for pid in wanted:
            key = str(self.store / pid)
            if pid not in self.faulted and pid not in self.warm and key not in self.loading:
                self.loading[key] = Warm.purpose
                self.loader.submit_stored(pid, Warm())

    def _probe(self) -> list[Any]:
        """Recorded images of the current condition, for validation (loader thread)."""
        n = max(1, int(getattr(self._cfg.policy, "probe_images", 8)))
        try:
            with LogReader(self._db_path, self._cfg.grasp_log.busy_timeout_ms) as reader:
                return reader.recent_images(self.probe_condition, n)
        except Exception:
            log.exception("could not read probe images")
            return []

    def loaded(self, res: LoadResult) -> None:
        """A load finished: record the policy and carry out what its request asks."""
        req: LoadRequest = res.tag
        self.loading.pop(res.source, None)
        if res.policy is None:
            self._refused(res, req)
            return
        pol = res.policy
        row = self.log.policy(pol.id)
        if row is None:
            self.log.upsert_policy(
                pol.id,
                str(pol.bundle.path),
                "candidate",
                pol.bundle.parent_id,
                self.host.condition_id,
                pol.bundle.meta,
            )
        elif row["status"] == "rejected":
            self._rejected_earlier(pol.id, req)
            return
        if isinstance(req, Trained) and not self._awaited(pol.id, req):
            # a result the lifecycle no longer waits for (its job was cancelled by a later
            # condition, or it was offered again): a candidate promote can serve, not swapped
            log.info(
                "policy %s (job %s) arrived after its job ended; not swapped in", pol.id, req.job
            )
            if req.job is not None:
                self.host.jobs.result_late(req.job, pol.id)
            return
        self.warm.put(pol)
        if isinstance(req, Warm):
            self.ensure_warm()
            if pol.id == self.host.state.policy:
                self.host.served()
        elif isinstance(req, Trained):
            self.host.step(lc.PolicyReady(pol.id, req.job, self.log.last_grasp_id()))
            if req.job is not None:
                self.host.jobs.result_served(req.job, pol.id)
        elif isinstance(req, Rollback):
            self.host.step(lc.Rollback(pol.id))
        elif pol.id != self.host.state.policy:  # Promote, Initial
            self.host.step(lc.Promote(pol.id))
        else:
            self.host.served()

    def _awaited(self, policy_id: str, req: Trained) -> bool:
        """Whether the lifecycle takes this result (its own rule, asked without a step)."""
        try:
            lc.step(self.host.state, lc.PolicyReady(policy_id, req.job))
        except lc.LifecycleError:
            return False
        return True

    def _refused(self, res: LoadResult, req: LoadRequest) -> None:
        pid = res.policy_id
        reason = f"{res.reason or 'refused'}: {res.error}"[:500]
        if pid and isinstance(req, Warm):
            self.host.step(lc.PolicyFault(pid, f"reload failed: {reason}"))
        else:
            # only bytes proven to be the bundle ``pid`` are a verdict on it: a corrupted copy
            # must not bar the genuine bundle with that id for ever
            if pid and res.content_id == pid and self.log.policy(pid) is None:
                self.log.upsert_policy(
                    pid,
                    res.source,
                    "rejected",
                    res.parent_id,
                    self.host.condition_id,
                    reason=reason,
                )
            self.host.journal.emit(
                Topic.POLICY_REJECTED,
                {
                    "policy": pid or None,
                    "source": res.source,
                    "purpose": req.purpose,
                    "reason": res.reason,
                    "message": res.error[:2000],
                },
            )
            if isinstance(req, Trained) and req.job is not None:
                self.host.jobs.result_refused(req.job, f"bundle rejected ({res.reason})")
        if self.host.state.policy is None:
            self.host.refuse(f"no usable policy: {reason}")

    def _rejected_earlier(self, pid: str, req: LoadRequest) -> None:
        """A bundle whose id was rejected before (its own bytes): never served again; a job
        whose result it is ends failed, so the condition can train again."""
        self.host.journal.emit(
            Topic.POLICY_REJECTED, {"policy": pid, "reason": "rejected earlier; never served again"}
        )
        if isinstance(req, Trained) and req.job is not None:
            self.host.jobs.result_refused(req.job, f"result {pid} was rejected earlier")
        if self.host.state.policy is None:
            self.host.refuse(f"policy {pid} was rejected earlier")

    # -- faults -------------------------------------------------------------------------------
    def fault(self, policy_id: str, reason: str, message: str) -> None:
        """Take a policy out of service now; the lifecycle step may raise (disk full), the
        policy stays out and :meth:`retry_fault` commits the step later."""
        log.error("policy %s taken out of service: %s", policy_id, message)
        self.out_of_service(policy_id, message)
        self.host.step(lc.PolicyFault(policy_id, f"{reason}: {message}"[:500]))
        self.faulted.pop(policy_id, None)
        if self.host.state.policy is None:
            self.host.refuse(f"policy {policy_id} faulted ({reason}) and no good policy is left")

    def out_of_service(self, policy_id: str, why: str) -> None:
        """Never served again in this process, even while its step cannot be committed."""
        self.faulted[policy_id] = why
        self.warm.drop(policy_id)

    def retry_fault(self) -> None:
        """The serving policy is out of service but its step failed: try the step again."""
        pid = self.host.state.serving
        if pid is None or pid not in self.faulted:
            return
        now = time.monotonic()
        if now - self._last_retry < FLUSH_RETRY_S:
            return
        self._last_retry = now
        self.fault(pid, "retry", self.faulted[pid])
