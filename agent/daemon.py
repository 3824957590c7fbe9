"""The daemon: wires driver, policies, grasp log, detector, probation, lifecycle and sockets.

Threads (each owns its own resources; they talk through queues):

- **control** (the caller of :meth:`Daemon.run`): the only thread that grasps,
  writes the grasp log, publishes events and steps the lifecycle. Between two
  grasps it applies what the other threads queued (command changes, loaded
  policies, finished exports, trainer results) and pings the watchdog.
- **commands** (:mod:`agent.command_thread`): the command socket; answers
  read-only commands from a snapshot and its own read-only SQLite connection.
- **policy-loader** (:mod:`agent.loader`): validates, imports and warms bundles.
- **exporter** (:mod:`agent.exporter`): writes job datasets with its own connection.

The lifecycle state is the one owner of "which policy is active" and of the
persisted "last good" pointer; :class:`agent.active.WarmPolicies` only holds
the warmed sessions. Every lifecycle step commits its state and all its rows
(policy statuses, condition, job, events) in one transaction, so a crash
restarts on the state before or after a swap, never between.
"""

from __future__ import annotations

import collections
import functools
import itertools
import json
import logging
import math
import queue
import re
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from agent import lifecycle as lc
from agent.active import WarmPolicies
from agent.command_thread import CommandContext, CommandThread
from agent.commands import Change, CommandError
from agent.config import AgentConfig, check_exposure
from agent.decision_guard import MARKER_FILE, DecisionGuard, clear_marker, read_marker
from agent.driver import Driver, DriverUnavailable
from agent.effects import record_step
from agent.exporter import ExportDone, Exporter
from agent.grasplog import GraspLog, GraspRecord, LogReader, TransitionRecord, is_disk_full
from agent.held import HeldWrites
from agent.loader import LoadResult, PolicyLoader
from agent.policy import Policy, PolicyFault
from agent.queries import Queries
from agent.transport import EventPublisher, Security
from agent.watch import Judgement, OutcomeWatch
from plumbing.sd_notify import Notifier
from plumbing.signals import EXIT_SECOND_SIGNAL, StopSignals

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_ERRORS = 5
"""Driver/grasp failures in a row after which the daemon exits 2 (systemd restarts it)."""
FLUSH_RETRY_S = 0.5
"""How often grasps held in memory (disk full) are retried."""
EXIT_UNWRITTEN = 5
"""Exit status of a stop that could not write every held grasp (disk still full)."""


def _grasp_summary(g: GraspRecord) -> dict[str, Any]:
    return {
        "t_start": g.t_start,
        "condition_id": g.condition_id,
        "policy": g.policy_id,
        "mode": g.mode,
        "success": g.success,
        "q": g.q,
        "actions": [t.action for t in g.transitions],
    }


class Daemon:
    """The robot agent. ``run()`` blocks until stopped and returns the exit status."""

    def __init__(
        self,
        cfg: AgentConfig,
        driver: Driver,
        notifier: Notifier | None = None,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.cfg = cfg
        self.driver = driver
        self.notifier = notifier or Notifier()
        self.spec = driver.spec
        self.stop_event = stop_event or threading.Event()
        """Set by a stop signal or request_stop(): the loop ends after the current grasp."""
        self.store = cfg.data_path(cfg.policy.store_dir)
        self.db_path = cfg.data_path(cfg.grasp_log.path)
        self.exports = cfg.data_path(cfg.agent.exports_dir)
        self.log = GraspLog(self.db_path, cfg.grasp_log.busy_timeout_ms, cfg.grasp_log.image_format)
        self.loader = PolicyLoader(
            self.store, self.spec, cfg.policy, cfg.cem, probe_images=self._probe_images
        )
        self.exporter = Exporter(
            self.db_path,
            self.exports,
            self.spec,
            lambda done: self._post(lambda: self._on_export(done)),
            cfg.grasp_log.busy_timeout_ms,
        )
        self.watch = OutcomeWatch(cfg.detector, cfg.probation)
        """The drop detector and the probation test of the active policy."""
        self.state = lc.State(lc.Phase.SERVING, cfg.lifecycle.initial_condition, None)
        self.warm_policies = WarmPolicies()
        self.condition_id = 0
        self.paused = False
        self.pause_reason = ""
        self.no_policy_reason = "no policy loaded yet"
        self.grasps = 0
        self.errors_in_a_row = 0
        self.recent: collections.deque[bool] = collections.deque(maxlen=50)
        """Outcomes of the last 50 grasps (for the status line)."""
        self.last_grasp: dict[str, Any] = {}
        self.last_command: dict[str, Any] = {}
        self.started_at = time.time()
        self.ready = threading.Event()
        self.endpoints: dict[str, str] = {}
        self.export_hook: Callable[[int, Path], None] | None = None
        """Called on the control thread when a job's export is written: must return at once."""
        self.cancel_hook: Callable[[int], None] | None = None
        """Called on the control thread when a job is abandoned: must return at once."""
        self.result_hook: Callable[[int], None] | None = None
        """Called on the control thread once a job's result was imported or refused."""
        self._inbox: queue.Queue[Callable[[], None]] = queue.Queue()
        self._tickets = itertools.count(1)
        self._pending_changes = 0
        self._lock = threading.Lock()
        self._latencies: collections.deque[float] = collections.deque(maxlen=2000)
        self._snapshot: dict[str, Any] = {}
        self._loading: dict[str, str] = {}
        self.held = HeldWrites(cfg.grasp_log.buffer_grasps, FLUSH_RETRY_S)
        """Grasps and events waiting for disk space (in order, bounded)."""
        self._storage_full = False
        self.unwritten = 0
        self.driver_down = ""
        """Why the driver is unavailable (robot unreachable); empty while it answers."""
        """Grasps a stop could not write (disk still full); non-zero makes run() return 5."""
        self.guard = DecisionGuard(
            cfg.data_path(MARKER_FILE),
            cfg.policy.decision_deadline_s,
            cfg.policy.decision_grace_s,
            self.notifier.watchdog,
        )
        """The deadline on each decision (its own thread; feeds the watchdog meanwhile)."""
        self._probe_condition = 0
        self._faulted: dict[str, str] = {}
        self._last_retry = 0.0
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._security = Security(cfg.sockets)
        self._commands: CommandThread | None = None
        self._events: EventPublisher | None = None

    # -- signals and thread-safe entry points ------------------------------------------------
    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: finish the grasp, flush, exit 0; a second one exits at once with
        :data:`EXIT_SECOND_SIGNAL` (the CLI installs :class:`StopSignals` earlier itself)."""
        StopSignals(self.stop_event).install()

    def request_stop(self) -> None:
        self.stop_event.set()

    def offer_trained(self, bundle_dir: Path, job: int | None = None) -> None:
        """A trainer result arrived (any thread): validated and loaded off the control thread,
        then swapped in between grasps on probation against its parent."""
        self._post(lambda: self._load(Path(bundle_dir), "trained", job))

    def job_update(self, job: int, status: str, detail: dict[str, Any] | None = None) -> None:
        """A job's status changed on the trainer (any thread). "failed", "no_improvement" and
        "kept" (no trainer: the export stays on disk) end the job in the lifecycle; any other
        status is recorded and published."""
        self._post(lambda: self._on_job_update(job, status, detail or {}))

    def set_export_hook(self, hook: Callable[[int, Path], None] | None) -> None:
        """Register the trainer link: ``hook(job, export_dir)`` is called on the control thread
        once a job's export is written (and again at start-up for jobs still queued), so it
        must only hand the work to its own thread."""
        self.export_hook = hook

    def set_cancel_hook(self, hook: Callable[[int], None] | None) -> None:
        """Register the trainer link's cancel: ``hook(job)`` is called on the control thread
        once a job's cancellation is committed (and again if the trainer still reports on
        it), so it must only hand the work to its own thread."""
        self.cancel_hook = hook

    def set_result_hook(self, hook: Callable[[int], None] | None) -> None:
        """Register the trainer link's release: ``hook(job)`` is called on the control thread
        once the job's result bundle was imported into the store or refused (the link's
        staged copy is of no further use), so it must only hand the work to its own thread."""
        self.result_hook = hook

    def _post(self, fn: Callable[[], None]) -> None:
        self._inbox.put(fn)

    # -- start / stop ------------------------------------------------------------------------
    def open(self) -> None:
        """Open the database, bind sockets, start threads and the driver, restore state."""
        check_exposure(self.cfg.sockets)
        self.log.open()
        self._ctx = zmq.Context()
        self._security.start(self._ctx)
        self._events = EventPublisher(self._ctx, self.cfg.sockets.event_endpoint)
        self.endpoints["events"] = self._events.bind(self._security)
        if self.cfg.trainer.endpoint:
            self.endpoints["trainer"] = self.cfg.trainer.endpoint
        self._restore()
        self._refresh()  # the command thread answers status from the first request on
        self._commands = CommandThread(
            self._ctx, self.cfg.sockets, self._security, self.db_path, self._command_context
        )
        self.endpoints["commands"] = self._commands.start()
        self.exporter.start()
        self.loader.start()
        self.guard.start()
        self.driver.start()
        self._start_policies()
        self._refresh()

    def close(self) -> None:
        """Release everything; safe after a failed open."""
        self.notifier.stopping("stopping")
        if self._commands is not None:
            self._commands.close()
        for fn in (self.guard.close, self.loader.close, self.exporter.close, self.driver.close):
            try:
                fn()
            except Exception:
                log.exception("error while closing")
        self.unwritten = self._final_flush()
        self.log.close()
        if self._events:
            self._events.close()
        self._security.stop()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        self.notifier.close()

    def run(self) -> int:
        """Open, loop until stopped, close; returns the process exit status."""
        why = "stop requested"
        if self.stop_event.is_set():
            log.info("stop requested before start-up; not starting")
            return 0
        try:
            self.open()
            status = self.loop()
            if status:
                why = f"exit status {status}"
        except Exception as exc:
            log.exception("daemon failed")
            self._error("fatal", exc)
            status, why = 1, f"fatal error: {exc}"
        log.info("shutting down (%s) after %d grasps", why, self.grasps)
        self.close()
        if self.unwritten and status == 0:
            status = EXIT_UNWRITTEN
        log.info("stopped (exit status %d)", status)
        return status

    def _restore(self) -> None:
        saved = self.log.get_kv("lifecycle")
        if saved:
            self.state = lc.State.from_dict(saved)
        self.state = replace(self.state, explore_target=self.cfg.lifecycle.exploration_grasps)
        cond = self.log.condition(self.state.condition)
        self.condition_id = (
            int(cond["id"]) if cond else self.log.add_condition(self.state.condition, "", "initial")
        )
        self._probe_condition = self.condition_id
        self.grasps = self.log.count_grasps()

    def _start_policies(self) -> None:
        """Resume on the persisted pointers, or load the configured first policy."""
        self._fault_died_deciding()
        s = self.state
        for pid in [p for p in (s.policy, *s.good) if p]:
            row = self.log.policy(pid)
            if row is not None and row["status"] == "rejected":
                self._try_step(lc.PolicyFault(pid, f"rejected earlier: {row['reason']}"))
        if self.state.policy is None and self.cfg.policy.bundle and not self.state.good:
            self._load(Path(self.cfg.policy.bundle), "initial")
        elif self.state.policy is None:
            self._refuse(
                "no policy: set policy.bundle or promote one (robot-agent ctl promote DIR)"
            )
        if self.state.probation_parent and self.state.policy:
            self._start_probation()
        elif self.state.policy:
            self._reset_detector()
        self._ensure_warm()
        job = self.state.job
        if job is not None:
            row = self.log.job(job)
            if row is not None and not row["export_path"]:
                self.exporter.submit(job, self.state.condition)
            elif row is not None and row["status"] == "queued" and self.export_hook:
                self._call_hook(job, Path(row["export_path"]))
            elif row is not None and row["status"] == "improved":
                self._resume_trained(job, row)
            elif row is not None and row["status"] == "failed":  # stopped before the step
                self._try_step(lc.JobFailed(job, str(row["detail"] or "failed")[:500]))

    def _fault_died_deciding(self) -> None:
        """The previous process died in a decision that had outlasted half its deadline
        (the guard's marker names the policy): that policy is never served again."""
        marker = read_marker(self.guard.marker)
        if marker is None:
            return
        pid = marker.get("policy")
        if isinstance(pid, str) and (pid == self.state.policy or pid in self.state.good):
            active = marker.get("active_s")
            secs = f" after {active:.1f} s" if isinstance(active, float | int) else ""
            self._policy_fault(
                pid, "hung", f"the previous run died in a decision of this policy{secs}"
            )
        elif pid is None:
            log.warning("unreadable decision marker %s ignored", self.guard.marker)
        clear_marker(self.guard.marker)

    def _resume_trained(self, job: int, row: dict[str, Any]) -> None:
        """The job's result came back and was imported into the store, but the daemon stopped
        before swapping it in: the link does not offer a bundle already in the store again,
        so it is loaded from there (else the daemon would wait for it forever)."""
        try:
            detail = json.loads(row["detail"] or "{}")
        except (TypeError, ValueError):
            return
        bid = detail.get("bundle_id") if isinstance(detail, dict) else None
        if (
            isinstance(bid, str)
            and re.fullmatch(r"[0-9a-f]{8,64}", bid)
            and ((self.store / bid).is_dir())
        ):
            log.warning("job %s: result %s is in the store but not served; loading it", job, bid)
            self._load(self.store / bid, "trained", job)

    # -- the loop ----------------------------------------------------------------------------
    def loop(self) -> int:
        """The control loop; returns 0 after a clean stop, non-zero on persistent failure."""
        retry_s = 0.0  # robot unreachable: not an error, never logged
        while not self.stop_event.is_set():
            self.notifier.watchdog()
            self._drain()
            if self.held:
                self._flush_held()
            policy = self._serving()
            if policy is None or self.paused or self.held.at_cap:
                self._idle()
                continue
            if self.cfg.agent.max_grasps and self.grasps >= self.cfg.agent.max_grasps:
                break
            try:
                self._grasp(policy)
                self.errors_in_a_row = 0
                if self.driver_down:
                    self.driver_down, retry_s = "", 0.0
                    log.warning("driver reachable again")
                    self.emit("agent.driver", {"state": "up", "message": "driver reachable again"})
            except DriverUnavailable as exc:
                # No action was executed or its outcome is unknown: nothing is logged. Report
                # once per outage; wait (commands still served) while the driver reconnects.
                if not self.driver_down:
                    self.driver_down = str(exc) or type(exc).__name__
                    self._refresh()
                    log.warning("driver unavailable, not actuating: %s", exc)
                    self.emit("agent.driver", {"state": "down", "message": str(exc)})
                retry_s = min(2.0, max(self.cfg.agent.idle_sleep_s, 2 * retry_s))
                until = time.monotonic() + retry_s
                while time.monotonic() < until and not self.stop_event.is_set():
                    self.notifier.watchdog()
                    self._idle()
            except Exception as exc:
                self.errors_in_a_row += 1
                self._error("grasp", exc)
                if self.errors_in_a_row >= MAX_CONSECUTIVE_ERRORS:
                    log.error("%d grasp failures in a row; exiting", self.errors_in_a_row)
                    return 2
            finally:
                self._refresh()
        return 0

    def _serving(self) -> Policy | None:
        pid = self.state.policy
        return self.warm_policies.get(pid) if pid else None

    def _idle(self) -> None:
        try:
            fn = self._inbox.get(timeout=self.cfg.agent.idle_sleep_s)
        except queue.Empty:
            return
        self._run_posted(fn)

    def _drain(self) -> None:
        while True:
            try:
                fn = self._inbox.get_nowait()
            except queue.Empty:
                break
            self._run_posted(fn)
        while (res := self.loader.poll()) is not None:
            self._run_posted(functools.partial(self._on_loaded, res))
        if self.state.policy in self._faulted and self._retry_due():
            pid = self.state.policy
            self._run_posted(lambda: self._policy_fault(pid, "retry", self._faulted[pid]))

    def _run_posted(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # one bad message must not stop the robot
            self._error("control", exc)
        self._refresh()

    def _grasp(self, policy: Policy) -> None:
        mode = "explore" if self.state.phase is lc.Phase.EXPLORING else "serve"
        t_start = time.time()
        transitions: list[TransitionRecord] = []
        decide = execute = 0.0
        first_q = float("nan")
        outcome = None
        reward = 0.0
        for step in range(self.spec.horizon):
            obs = self.driver.observe()
            try:
                with self.guard.deciding(policy):
                    d = policy.act(obs.image)
                if not (math.isfinite(d.q) and 0.0 <= d.q <= 1.0) or not np.all(
                    np.isfinite(d.action)
                ):
                    raise PolicyFault("bad_output", f"Q {d.q!r} or action {d.action!r}")
            except PolicyFault as exc:
                self._policy_fault(policy.id, exc.reason, str(exc))
                return  # nothing was executed for this decision: no grasp to log
            with self._lock:
                self._latencies.append(d.latency_s)
            decide += d.latency_s
            if step == 0:
                first_q = d.q
            t0 = time.perf_counter()
            r = self.driver.execute(d.action)
            execute += time.perf_counter() - t0
            reward += r.reward
            transitions.append(
                TransitionRecord(step, obs.image, d.action.tolist(), r.reward, r.done)
            )
            if r.done:
                outcome = r.outcome
                break
        if outcome is None:
            raise RuntimeError(f"driver did not end the grasp within {self.spec.horizon} steps")
        rec = GraspRecord(
            t_start=t_start,
            t_end=time.time(),
            condition_id=self.condition_id,
            policy_id=policy.id,
            mode=mode,
            success=outcome.success,
            reward=reward,
            q=first_q,
            decide_ms=decide * 1e3,
            execute_ms=execute * 1e3,
            sensed_by=outcome.sensed_by,
            detail=dict(outcome.detail),
            transitions=tuple(transitions),
        )
        self.grasps += 1
        self.recent.append(outcome.success)
        self._record_grasp(rec)
        self._after_outcome(outcome.success)
        if self.grasps % 10 == 0:
            line = self._status_line()
            self.notifier.status(line)
            log.info("%s", line)

    # -- storage (disk full) -----------------------------------------------------------------
    def _record_grasp(self, rec: GraspRecord) -> None:
        """Commit, then publish (a grasp seen on the PUB socket is durable); on a full disk,
        hold it in memory (bounded by grasp_log.buffer_grasps) and raise one alarm."""
        if self.held:
            self.held.hold(rec)
            return
        try:
            gid = self.log.log_grasp(rec, self.cfg.grasp_log.store_images)
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            self.held.hold(rec)
            self._disk_full(exc)
            return
        self._grasp_committed(gid, rec)

    def _grasp_committed(self, gid: int, rec: GraspRecord) -> None:
        self.last_grasp = {
            "id": gid,
            "success": rec.success,
            "q": rec.q,
            "mode": rec.mode,
            "decide_ms": round(rec.decide_ms, 3),
            "policy": rec.policy_id,
            "condition": self.state.condition,
        }
        self._publish("agent.grasp", self.last_grasp)

    def _disk_full(self, exc: BaseException) -> None:
        if self._storage_full:
            return
        self._storage_full = True
        self.emit(
            "agent.alarm",
            {
                "kind": "storage_full",
                "reason": f"grasp log cannot be written ({exc}); holding up to "
                f"{self.held.cap} grasps in memory",
                "condition": self.state.condition,
                "policy": self.state.policy,
            },
        )

    def _final_flush(self) -> int:
        """At a stop: retry held writes for up to grasp_log.stop_flush_s; returns how many
        grasps could still not be written. Each of those is logged as one JSON line (its
        outcome, action and policy, without images) so the journal keeps what the disk could
        not, and the exit status says so (:data:`EXIT_UNWRITTEN`)."""
        deadline = time.monotonic() + self.cfg.grasp_log.stop_flush_s
        self._flush_held(force=True)
        while self.held and time.monotonic() < deadline:
            self.notifier.watchdog()
            time.sleep(FLUSH_RETRY_S)
            self._flush_held(force=True)
        if not self.held:
            return 0
        grasps = [g for g in self.held.items() if isinstance(g, GraspRecord)]
        for g in grasps:
            log.error("unwritten grasp %s", json.dumps(_grasp_summary(g)))
        log.error(
            "%d grasps and %d events could not be written (disk still full after %.0f s):"
            " the grasps are in the log above without images; exiting %d",
            len(grasps),
            len(self.held) - len(grasps),
            self.cfg.grasp_log.stop_flush_s,
            EXIT_UNWRITTEN,
        )
        return len(grasps)

    def _flush_held(self, force: bool = False) -> None:
        written = self.held.flush(
            self.log, self.cfg.grasp_log.store_images, self._grasp_committed, force
        )
        if written is not None and self._storage_full:
            self._storage_full = False
            self.emit("agent.storage", {"status": "recovered", "flushed": written})

    # -- outcomes: probation, detector ------------------------------------------------------
    def _after_outcome(self, success: bool) -> None:
        try:
            self.step(lc.GraspDone(success))
        except Exception as exc:
            if not is_disk_full(exc):
                raise
        judged = self.watch.update(success)
        if judged is not None:
            self._judged(judged)

    def _judged(self, j: Judgement) -> None:
        """Act on a detector alarm or a probation verdict."""
        if j.kind == "alarm":
            # while exploring or training the chart calibrated on the new condition itself at
            # detector.explore_arl0 (re-marking at the serving ARL0 restarted ~1 in 3
            # explorations on false alarms): its alarm is a second change of the world
            details = {**j.details, "action": self.cfg.lifecycle.on_alarm}
            auto = self.cfg.lifecycle.on_alarm == "mark"
            before = self.state.condition
            self._try_step(lc.Alarm(auto_mark=auto, new_condition=self._auto_name()), details)
            if self.state.condition == before:  # alert only: one alarm per drop, not a storm
                self._reset_detector(fresh=True)
            return
        pid, parent = self.state.policy, self.state.probation_parent
        self.emit("agent.policy.probation", {"policy": pid, "parent": parent, **j.details})
        if j.kind == "fail":
            try:
                self.step(lc.ProbationFailed(j.reason), j.details)
            except Exception as exc:  # e.g. disk full: out of service now, recorded later
                self._error("lifecycle", exc)
                if pid is not None:
                    self._faulted[pid] = j.reason
                    self.warm_policies.drop(pid)
        else:
            self._try_step(lc.ProbationPassed())
        self._reset_detector()

    def _start_probation(self) -> None:
        """Judge the active policy against its probation parent under this condition: the
        parent's latest grasps here (anywhere, if too few here) against the child's."""
        child, parent = self.state.policy, self.state.probation_parent
        if child is None or parent is None:
            self._reset_detector()
            return
        pc = self.cfg.probation
        hist = self.log.recent_outcomes(parent, self.condition_id, pc.reference_grasps)
        if len(hist) < pc.min_reference:
            hist = self.log.recent_outcomes_any(parent, pc.reference_grasps)
        own = self.log.recent_outcomes(child, self.condition_id, pc.max_grasps)
        judged = self.watch.start_probation(hist, own)
        if judged is not None:
            self._judged(judged)

    def _reset_detector(self, fresh: bool = False) -> None:
        """The detector calibrates on the active policy's own record in this condition, or
        (``fresh``, after an alarm that changed nothing) on the grasps to come: the record
        then ends in the run of failures that raised the alarm, a reference biased low
        that made the chart 2x slower to alarm again after a false alarm."""
        pid = self.state.policy
        n = self.cfg.detector.reference_grasps
        history: list[bool] | None = None
        if pid is not None:
            history = [] if fresh else self.log.recent_outcomes(pid, self.condition_id, n)
        self.watch.reset(history, exploring=self.state.phase is not lc.Phase.SERVING)

    def _auto_name(self) -> str:
        base = f"auto-{time.strftime('%Y%m%d-%H%M%S')}"
        name, i = base, 1
        while self.log.condition(name) is not None or name == self.state.condition:
            i += 1
            name = f"{base}-{i}"
        return name

    # -- the lifecycle (ControlCore for queued command changes) ------------------------------
    def step(self, event: lc.Event, details: dict[str, Any] | None = None) -> lc.State:
        """Apply one lifecycle event: its state and every row it implies commit together
        (:func:`agent.effects.record_step`), then the events are published and the
        in-memory follow-ups carried out."""
        old = self.state
        new, effects = lc.step(old, event)
        if new == old and not effects:
            return old
        if self.held:  # held writes first, so the events table keeps the PUB order
            self._flush_held(force=True)
        rec = record_step(
            self.log, old, new, effects, details or {}, self.warm_policies.get, self.condition_id
        )
        self.state = rec.state
        for topic, data, _ in rec.events:
            self._publish(topic, data)
        if rec.condition_id is not None:
            self._set_condition(rec.condition_id)
        for pid in rec.rejected:
            self.warm_policies.drop(pid)
        if rec.export is not None:
            self.exporter.submit(*rec.export)
        for job in rec.cancelled:
            self._call_cancel_hook(job)
        if rec.swapped:  # may step again: its events follow these, as in the table
            self._after_swap()
        self._ensure_warm()
        return self.state

    def _try_step(self, event: lc.Event, details: dict[str, Any] | None = None) -> None:
        try:
            self.step(event, details)
        except Exception as exc:
            self._error("lifecycle", exc)

    def _set_condition(self, cid: int) -> None:
        self.condition_id = cid
        self._probe_condition = cid
        self._reset_detector()

    def _after_swap(self) -> None:
        if self.state.probation_parent is not None:
            self._start_probation()
        else:
            self._reset_detector()
        if self.state.policy is not None:
            self.no_policy_reason = ""
            self._maybe_ready()

    def _awaits(self, job: int | None) -> bool:
        """Whether the lifecycle waits for a trained policy from ``job``."""
        return self.state.phase is lc.Phase.TRAINING and (job is None or job == self.state.job)

    def _retry_due(self) -> bool:
        now = time.monotonic()
        if now - self._last_retry < FLUSH_RETRY_S:
            return False
        self._last_retry = now
        return True

    def _policy_fault(self, policy_id: str, reason: str, message: str) -> None:
        log.error("policy %s taken out of service: %s", policy_id, message)
        # never served again in this process, even while the step cannot be committed
        self._faulted[policy_id] = message
        self.warm_policies.drop(policy_id)
        self.step(lc.PolicyFault(policy_id, f"{reason}: {message}"[:500]))
        self._faulted.pop(policy_id, None)
        if self.state.policy is None:
            self._refuse(f"policy {policy_id} faulted ({reason}) and no good policy is left")

    def warm(self, policy_id: str) -> bool:
        """True when ``policy_id`` is loaded and warm (a swap to it needs no load)."""
        return policy_id in self.warm_policies

    def set_paused(self, paused: bool, reason: str) -> None:
        self.paused, self.pause_reason = paused, reason if paused else ""
        self.emit("agent.paused" if paused else "agent.resumed", {"reason": reason})
        self.notifier.status(self._status_line())

    # -- policies: loading and keeping warm ----------------------------------------------
    def _load(self, source: Path, purpose: str, job: int | None = None) -> None:
        self._loading[str(source)] = purpose
        if purpose == "rollback" and source.parent == self.store:
            # it served before: validated on import, reloaded with the hash checks only
            self.loader.submit_stored(source.name, (purpose, job))
            return
        active = self._serving()
        latency = active.validated_latency_s if active is not None else None
        self.loader.submit(
            source,
            (purpose, job),
            active_latency_s=latency,
            active_id=active.id if active is not None else None,
        )

    def load(self, source: Path, purpose: str) -> None:
        """Queue a bundle for validation and loading; ``purpose`` says what its arrival does
        ("promote" or "rollback")."""
        self._load(source, purpose)

    def _ensure_warm(self) -> None:
        """Keep the active policy and the fallback loaded; drop any other session."""
        wanted = [p for p in (self.state.policy, self.state.fallback) if p]
        self.warm_policies.keep(*wanted)
        for pid in wanted:
            key = str(self.store / pid)
            if pid in self._faulted:
                continue
            if pid not in self.warm_policies and key not in self._loading:
                self._loading[key] = "warm"
                self.loader.submit_stored(pid, ("warm", None))

    def _on_loaded(self, res: LoadResult) -> None:
        purpose, job = res.tag
        self._loading.pop(res.source, None)
        if res.policy is None:
            self._on_refused(res, purpose, job)
            return
        pol = res.policy
        if self.log.policy(pol.id) is None:
            self.log.upsert_policy(
                pol.id,
                str(pol.bundle.path),
                "candidate",
                pol.bundle.parent_id,
                self.condition_id,
                pol.bundle.meta,
            )
        elif self.log.policy(pol.id)["status"] == "rejected":  # type: ignore[index]
            self._on_rejected_earlier(pol.id, purpose, job)
            return
        if purpose == "trained" and not self._awaits(job):
            # a result the daemon no longer waits for: a job cancelled by a later condition,
            # or a result offered again (the link re-offers at start): kept as a candidate
            # (promote can serve it), never swapped in
            log.info("policy %s (job %s) arrived after its job ended; not swapped in", pol.id, job)
            if job is not None:
                row = self.log.job(job)
                if row is not None:
                    self.log.update_job(job, str(row["status"]), result_policy_id=pol.id)
                self._call_result_hook(job)
            return
        self.warm_policies.put(pol)
        if purpose == "warm":
            self._ensure_warm()
            if pol.id == self.state.policy:
                self.no_policy_reason = ""
                self._maybe_ready()
        elif purpose == "trained":
            self.step(lc.PolicyReady(pol.id, job))
            if job is not None:  # lineage: the job's result is this policy
                self.log.update_job(job, "done", result_policy_id=pol.id)
                self._call_result_hook(job)
        elif purpose == "rollback":
            self.step(lc.Rollback(pol.id))
        elif pol.id != self.state.policy:  # "promote", "initial"
            self.step(lc.Promote(pol.id))
        else:
            self._maybe_ready()

    def _on_refused(self, res: LoadResult, purpose: str, job: int | None) -> None:
        pid = res.policy_id
        reason = f"{res.reason or 'refused'}: {res.error}"[:500]
        if pid and purpose == "warm":
            self.step(lc.PolicyFault(pid, f"reload failed: {reason}"))
        else:
            # only bytes proven to be the bundle ``pid`` are a verdict on it: a corrupted copy
            # must not bar the genuine bundle with that id for ever
            if pid and res.content_id == pid and self.log.policy(pid) is None:
                self.log.upsert_policy(
                    pid, res.source, "rejected", res.parent_id, self.condition_id, reason=reason
                )
            self.emit(
                "agent.policy.rejected",
                {
                    "policy": pid or None,
                    "source": res.source,
                    "purpose": purpose,
                    "reason": res.reason,
                    "message": res.error[:2000],
                },
            )
            if purpose == "trained" and job is not None:
                self._end_refused_job(job, f"bundle rejected ({res.reason})")
        if self.state.policy is None:
            self._refuse(f"no usable policy: {reason}")

    def _on_rejected_earlier(self, pid: str, purpose: str, job: int | None) -> None:
        """A bundle whose id was rejected before (its own bytes): never served again; a job
        whose result it is ends failed, so the condition can train again."""
        self.emit(
            "agent.policy.rejected",
            {"policy": pid, "reason": "rejected earlier; never served again"},
        )
        if purpose == "trained" and job is not None:
            self._end_refused_job(job, f"result {pid} was rejected earlier")
        if self.state.policy is None:
            self._refuse(f"policy {pid} was rejected earlier")

    def _end_refused_job(self, job: int, why: str) -> None:
        """A job's result was refused: the job failed (its row is not left "improved"), the
        parent serves on and the lifecycle leaves TRAINING; the link may drop its copy."""
        row = self.log.job(job)
        if row is not None and row["status"] != "cancelled":
            self.log.update_job(job, "failed", detail={"error": why})
        self._try_step(lc.JobFailed(job, why))
        self._call_result_hook(job)

    def _probe_images(self) -> list[Any]:
        """Recorded images of the current condition, for validation (loader thread)."""
        n = max(1, int(getattr(self.cfg.policy, "probe_images", 8)))
        try:
            with LogReader(self.db_path, self.cfg.grasp_log.busy_timeout_ms) as reader:
                return reader.recent_images(self._probe_condition, n)
        except Exception:
            log.exception("could not read probe images")
            return []

    # -- jobs -------------------------------------------------------------------------------
    def _on_export(self, done: ExportDone) -> None:
        if done.path is None:
            self.log.update_job(done.job, "failed", detail={"error": done.error})
            self.emit("agent.job", {"job": done.job, "status": "failed", "error": done.error})
            self._try_step(lc.JobFailed(done.job, f"export failed: {done.error}"))
            return
        row = self.log.job(done.job)
        status = "queued" if self.state.job == done.job or row is None else str(row["status"])
        self.log.update_job(done.job, status, export_path=str(done.path))
        self.emit(
            "agent.job",
            {
                "job": done.job,
                "status": status,
                "condition": done.condition,
                "export": str(done.path),
                "transitions": done.index.get("transitions", 0),
                "grasps": done.index.get("grasps", 0),
            },
        )
        if self.state.job == done.job:
            self._call_hook(done.job, done.path)

    def _call_hook(self, job: int, path: Path) -> None:
        if self.export_hook is None:
            return
        try:
            self.export_hook(job, path)
        except Exception as exc:
            self._error("export_hook", exc)

    def _call_result_hook(self, job: int) -> None:
        if self.result_hook is None:
            return
        try:
            self.result_hook(job)
        except Exception as exc:
            self._error("result_hook", exc)

    def _call_cancel_hook(self, job: int) -> None:
        if self.cancel_hook is None:
            return
        try:
            self.cancel_hook(job)
        except Exception as exc:
            self._error("cancel_hook", exc)

    def _on_job_update(self, job: int, status: str, detail: dict[str, Any]) -> None:
        row = self.log.job(job)
        if row is not None and row["status"] == "cancelled":
            # the link tells the trainer to stop it; the row stays cancelled and the event
            # says so. Still reported on (a cancel lost in a crash): cancel it again
            if status != "cancelled":
                self._call_cancel_hook(job)
            self.log.update_job(job, "cancelled", detail={"trainer": status, **detail})
            self.emit(
                "agent.job", {"job": job, "status": status, "detail": detail, "cancelled": True}
            )
            return
        if row is not None and row["status"] in ("done", "failed", "no_improvement"):
            # a verdict stands: the link reports "improved" after handing the result on, when
            # the loader may have swapped it in or refused it already; later reports are news
            self.emit("agent.job", {"job": job, "status": str(row["status"]), "detail": detail})
            return
        self.log.update_job(job, status, detail=detail)
        self.emit("agent.job", {"job": job, "status": status, "detail": detail})
        if status == "failed":
            self._try_step(lc.JobFailed(job, str(detail.get("error", "trainer failed"))))
        elif status == "no_improvement":
            self._try_step(lc.JobNoImprovement(job, str(detail.get("reason", ""))))
            self._reset_detector()  # serving again: the serving ARL0, on this condition's record
        elif status == "kept":  # no trainer: the export waits on disk, the parent serves on
            self._try_step(lc.JobKept(job))
            self._reset_detector()

    # -- commands (the command thread's view) ----------------------------------------------
    def _command_context(self, queries: Queries) -> CommandContext:
        return CommandContext(self.snapshot, self.latencies_ms, self._enqueue, queries)

    def _enqueue(self, command: str, change: Change) -> int:
        ticket = next(self._tickets)
        with self._lock:
            self._pending_changes += 1
        self._post(lambda: self._apply_change(ticket, command, change))
        return ticket

    def _apply_change(self, ticket: int, command: str, change: Change) -> None:
        with self._lock:
            self._pending_changes -= 1
        reply: dict[str, Any] = {"ticket": ticket, "command": command}
        try:
            reply |= {"ok": True, "result": change(self)}
        except CommandError as exc:
            reply |= {"ok": False, "error": {"code": exc.code, "message": exc.message}}
        except lc.LifecycleError as exc:
            reply |= {"ok": False, "error": {"code": "conflict", "message": str(exc)}}
        except Exception as exc:
            code = "storage_full" if is_disk_full(exc) else "internal"
            reply |= {"ok": False, "error": {"code": code, "message": f"{exc}"}}
        self.last_command = reply
        self.emit("agent.command", reply)

    def latencies_ms(self) -> list[float]:
        """Recent decision latencies in ms (any thread)."""
        with self._lock:
            return [x * 1e3 for x in self._latencies]

    def snapshot(self) -> dict[str, Any]:
        """The latest status (any thread): a dict the control thread replaces, never edits."""
        snap = self._snapshot
        with self._lock:
            pending = self._pending_changes
        return {
            **snap,
            "pending_commands": pending,
            "uptime_s": round(time.time() - self.started_at, 3),
        }

    def _refresh(self) -> None:
        s = self.state
        actuating = self._serving() is not None and not self.paused and not self.driver_down
        storage = "full" if self._storage_full else "ok"
        detector, probation = self.watch.snapshot()
        self._snapshot = {
            **s.to_dict(),
            "fallback": s.fallback,
            "paused": self.paused,
            "pause_reason": self.pause_reason,
            "actuating": actuating and not self.held.at_cap,
            "no_policy_reason": "" if actuating else self._not_actuating_reason(),
            "grasps": self.grasps,
            "detector": detector,
            "probation": probation,
            "storage": {"status": storage, "held": len(self.held)},
            "driver": {"state": "down" if self.driver_down else "up", "message": self.driver_down},
            "last_grasp": self.last_grasp,
            "last_command": self.last_command,
            "loading": sorted(set(self._loading.values())),
            "warm": self.warm_policies.ids,
            "endpoints": dict(self.endpoints),
        }

    def _not_actuating_reason(self) -> str:
        if self.paused:
            return f"paused: {self.pause_reason}"
        if self.driver_down:
            return f"driver unavailable: {self.driver_down}"
        if self.state.policy is None:
            return self.no_policy_reason or "no policy"
        if self._serving() is None:
            return f"loading policy {self.state.policy}"
        return ""

    # -- events ------------------------------------------------------------------------------
    def emit(self, topic: str, data: dict[str, Any]) -> None:
        """Record an event, then publish it: the events table and the PUB socket carry the
        same set. With the disk full it is published now and recorded when space returns."""
        t = time.time()
        if self.held:  # behind held writes, to keep their order
            self.held.hold((topic, data, t))
        else:
            try:
                self.log.add_event(topic, data, t)
            except Exception as exc:
                if not is_disk_full(exc):
                    raise
                self.held.hold((topic, data, t))
                self._disk_full(exc)
        self._publish(topic, data)

    def _publish(self, topic: str, data: dict[str, Any]) -> None:
        if self._events is not None:
            self._events.publish(topic, data)

    def _error(self, where: str, exc: BaseException) -> None:
        tb = "".join(traceback.format_exception(exc))
        log.error("%s error: %s", where, tb)
        data = {"where": where, "message": f"{type(exc).__name__}: {exc}", "traceback": tb[-4000:]}
        try:
            if self.log.is_open:
                self.emit("agent.error", data)
            else:
                self._publish("agent.error", data)
        except Exception:
            log.exception("could not record an error event")

    def _refuse(self, reason: str) -> None:
        self.no_policy_reason = reason
        log.error("refusing to actuate: %s", reason)
        self.notifier.status(f"not actuating: {reason}")

    def _maybe_ready(self) -> None:
        if self.stop_event.is_set() or self._serving() is None:
            return  # never READY=1 after a stop was requested
        self.notifier.ready(self._status_line())
        self.ready.set()
        self.notifier.status(self._status_line())

    def _status_line(self) -> str:
        s = self.state
        pol = s.policy or "none"
        state = "paused" if self.paused else s.phase.value
        rate = f"{sum(self.recent) / len(self.recent):.0%}" if self.recent else "-"
        return (
            f"{state} condition={s.condition} policy={pol} grasps={self.grasps}"
            f" success(last {len(self.recent)})={rate}"
        )


__all__ = ["EXIT_SECOND_SIGNAL", "Daemon"]
