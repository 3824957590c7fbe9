"""The daemon: the control loop, and the wiring of its parts.

The parts, each in its own module (docs/agent.md "Layout" lists them with their threads
and the owner of each piece of state): :mod:`agent.policies` (the policy slot),
:mod:`agent.jobs` (the one owner of a job's status), :mod:`agent.journal`
(record-then-publish), :mod:`agent.status`, :mod:`agent.outcomes` (detector and probation
verdicts into lifecycle steps) and :mod:`agent.grasp` (one grasp).

The daemon's own thread, **control** (the caller of :meth:`Daemon.run`), is the only one
that grasps, writes the grasp log, publishes events and steps the lifecycle; between two
grasps it runs what the other threads posted (command changes, loaded policies, finished
exports, trainer reports). Every lifecycle step commits its state and all its rows in one
transaction, so a crash restarts on the state before or after a swap, never between.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import zmq

from agent import lifecycle as lc
from agent.command_thread import ChangeQueue, CommandContext, CommandThread
from agent.config import AgentConfig, check_exposure
from agent.decision_guard import MARKER_FILE, DecisionGuard
from agent.driver import Driver, DriverUnavailable
from agent.effects import record_step
from agent.exporter import Exporter
from agent.grasp import Outage, grasp
from agent.grasplog import GraspLog
from agent.jobs import EXPORT_NOT_NEEDED, ExportHook, JobHook, Jobs, JobStatus
from agent.journal import EXIT_UNWRITTEN, Journal
from agent.loads import OperatorLoad, Trained
from agent.outcomes import Outcomes
from agent.policies import PolicySlot
from agent.policy import Policy, PolicyFault
from agent.queries import Queries
from agent.status import Status
from agent.topics import Topic
from agent.transport import EventPublisher, Security
from plumbing.sd_notify import Notifier

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_ERRORS = 5
"""Driver/grasp failures in a row after which the daemon exits 2 (systemd restarts it)."""


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
        gl = cfg.grasp_log
        self.log = GraspLog(self.db_path, gl.busy_timeout_ms, gl.image_format)
        self.state = lc.State(lc.Phase.SERVING, cfg.lifecycle.initial_condition, None)
        self.condition_id = 0
        self.paused = False
        self.pause_reason = ""
        self.grasps = 0
        self.errors_in_a_row = 0
        self.outage = Outage(cfg.agent.idle_sleep_s)
        self.unwritten = 0
        """Grasps a stop could not write (disk still full); non-zero makes run() return 5."""
        self.endpoints: dict[str, str] = {}
        self.changes = ChangeQueue(self._post, self, self._command_done)
        self.status = Status(self.notifier, self.stop_event, lambda: self.changes.pending)
        self.ready = self.status.ready
        where = lambda: (self.state.condition, self.state.policy)  # noqa: E731
        self.journal = Journal(self.log, gl, where, self.notifier.watchdog)
        self.jobs = Jobs(self.log, self, self.store)
        self.slot = PolicySlot(self, self.log, self.store, self.spec, cfg)
        self.exporter = Exporter(
            self.db_path,
            cfg.data_path(cfg.agent.exports_dir),
            self.spec,
            lambda done: self._post(lambda: self.jobs.exported(done)),
            gl.busy_timeout_ms,
            budget_bytes=cfg.agent.exports_budget_mb << 20,
            ended=EXPORT_NOT_NEEDED,
        )
        self.outcomes = Outcomes(self, self.log, cfg)
        self.watch = self.outcomes.watch
        deadline = (cfg.policy.decision_deadline_s, cfg.policy.decision_grace_s)
        self.guard = DecisionGuard(cfg.data_path(MARKER_FILE), *deadline, self.notifier.watchdog)
        """The deadline on each decision (its own thread; feeds the watchdog meanwhile)."""
        self._inbox: queue.Queue[Callable[[], None]] = queue.Queue()
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._security = Security(cfg.sockets)
        self._commands: CommandThread | None = None

    # -- thread-safe entry points ----------------------------------------------------------
    def request_stop(self) -> None:
        self.stop_event.set()

    def offer_trained(self, bundle_dir: Path, job: int | None = None) -> None:
        """A trainer result arrived (any thread): validated, loaded, swapped in on probation."""
        self._post(lambda: self.slot.load(Path(bundle_dir), Trained(job)))

    def job_update(self, job: int, status: str, detail: dict[str, Any] | None = None) -> None:
        """A job's status changed on the trainer (any thread): see :meth:`Jobs.reported`."""
        self._post(lambda: self.jobs.reported(job, JobStatus(status), detail or {}))

    def set_export_hook(self, hook: ExportHook | None) -> None:
        """The trainer link's submit (the hooks' contract: :mod:`agent.jobs`)."""
        self.jobs.export_hook = hook

    def set_cancel_hook(self, hook: JobHook | None) -> None:
        """The trainer link's cancel."""
        self.jobs.cancel_hook = hook

    def set_result_hook(self, hook: JobHook | None) -> None:
        """The trainer link's release of a staged result."""
        self.jobs.result_hook = hook

    @property
    def driver_down(self) -> str:
        return self.outage.why

    def snapshot(self) -> dict[str, Any]:
        """The latest status (any thread)."""
        return self.status.snapshot()

    def _post(self, fn: Callable[[], None]) -> None:
        self._inbox.put(fn)

    # -- start / stop ------------------------------------------------------------------------
    def open(self) -> None:
        """Open the database, bind sockets, start threads and the driver, restore state."""
        check_exposure(self.cfg.sockets)
        self.log.open()
        self._ctx = zmq.Context()
        self._security.start(self._ctx)
        self.journal.publisher = EventPublisher(self._ctx, self.cfg.sockets.event_endpoint)
        self.endpoints["events"] = self.journal.publisher.bind(self._security)
        if self.cfg.trainer.endpoint:
            self.endpoints["trainer"] = self.cfg.trainer.endpoint
        self._restore()
        self._refresh()  # the command thread answers status from the first request on
        self._commands = CommandThread(
            self._ctx, self.cfg.sockets, self._security, self.db_path, self._command_context
        )
        self.endpoints["commands"] = self._commands.start()
        self.exporter.start()
        self.slot.loader.start()
        self.guard.start()
        self.driver.start()
        self.slot.start(self.guard.marker)
        self.outcomes.resume()
        self.slot.ensure_warm()
        self.jobs.resume()
        self._refresh()

    def close(self) -> None:
        """Release everything; safe after a failed open."""
        self.notifier.stopping("stopping")
        if self._commands is not None:
            self._commands.close()
        loader = self.slot.loader
        for fn in (self.guard.close, loader.close, self.exporter.close, self.driver.close):
            try:
                fn()
            except Exception:
                log.exception("error while closing")
        self.unwritten = self.journal.final_flush()
        self.log.close()
        if self.journal.publisher:
            self.journal.publisher.close()
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
            self.journal.error("fatal", exc)
            status, why = 1, f"fatal error: {exc}"
        log.info("shutting down (%s) after %d grasps", why, self.grasps)
        self.close()
        if self.unwritten and status == 0:
            status = EXIT_UNWRITTEN
        log.info("stopped (exit status %d)", status)
        return status

    def _restore(self) -> None:
        saved, c = self.log.get_kv("lifecycle"), self.cfg
        s = lc.State.from_dict(saved) if saved else self.state
        s = replace(s, rounds_cfg=c.rounds, race_cfg=c.race)
        self.state = replace(s, explore_target=c.lifecycle.exploration_grasps)
        cond = self.log.condition(self.state.condition)
        cid = int(cond["id"]) if cond else self.log.add_condition(s.condition, "", "initial")
        self.condition_id = self.slot.probe_condition = cid
        self.grasps = self.log.count_grasps()

    # -- the loop ----------------------------------------------------------------------------
    def loop(self) -> int:
        """The control loop; returns 0 after a clean stop, non-zero on persistent failure."""
        held = self.journal.held
        while not self.stop_event.is_set():
            self.notifier.watchdog()
            self._drain()
            if held:
                self.journal.flush_held()
            policy = self.slot.serving()
            if policy is None or self.paused or held.at_cap:
                self._idle()
                continue
            if self.cfg.agent.max_grasps and self.grasps >= self.cfg.agent.max_grasps:
                break
            try:
                self._grasp(policy)
                self.errors_in_a_row = 0
                if self.outage.up():
                    log.warning("driver reachable again")
                    self.journal.emit(
                        Topic.DRIVER, {"state": "up", "message": "driver reachable again"}
                    )
            except DriverUnavailable as exc:
                # No action was executed or its outcome is unknown: nothing is logged. Report
                # once per outage; wait (commands still served) while the driver reconnects.
                if self.outage.down(exc):
                    self._refresh()
                    log.warning("driver unavailable, not actuating: %s", exc)
                    self.journal.emit(Topic.DRIVER, {"state": "down", "message": str(exc)})
                until = time.monotonic() + self.outage.pause_s
                while time.monotonic() < until and not self.stop_event.is_set():
                    self.notifier.watchdog()
                    self._idle()
            except Exception as exc:
                self.errors_in_a_row += 1
                self.journal.error("grasp", exc)
                if self.errors_in_a_row >= MAX_CONSECUTIVE_ERRORS:
                    log.error("%d grasp failures in a row; exiting", self.errors_in_a_row)
                    return 2
            finally:
                self._refresh()
        return 0

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
        while (res := self.slot.loader.poll()) is not None:
            self._run_posted(functools.partial(self.slot.loaded, res))
        if self.state.serving in self.slot.faulted:
            self._run_posted(self.slot.retry_fault)

    def _run_posted(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # one bad message must not stop the robot
            self.journal.error("control", exc)
        self._refresh()

    def _grasp(self, policy: Policy) -> None:
        mode = "explore" if self.state.phase is lc.Phase.EXPLORING else "serve"
        args = (self.spec.horizon, mode, self.condition_id, self.status.add_latency)
        try:
            rec = grasp(self.driver, policy, self.guard, *args)
        except PolicyFault as exc:
            self.slot.fault(policy.id, exc.reason, str(exc))
            return  # nothing was executed for this decision: no grasp to log
        self.grasps += 1
        self.status.recent.append(rec.success)
        gid = self.journal.record_grasp(rec)
        self.outcomes.grasped(rec.success, rec.policy_id, gid)
        if self.grasps % 10 == 0:
            line = self._line()
            self.notifier.status(line)
            log.info("%s", line)

    # -- the lifecycle (ControlCore for queued command changes; Host for the parts) ---------
    def step(self, event: lc.Event, details: dict[str, Any] | None = None) -> lc.State:
        """Apply one lifecycle event: its state and every row it implies commit together
        (:func:`agent.effects.record_step`), then the events are published and the
        in-memory follow-ups carried out."""
        old = self.state
        if isinstance(event, lc.MarkCondition) and event.level is None:
            event = replace(event, level=self.outcomes.level_before())
        new, effects = lc.step(old, event)
        if new == old and not effects:
            return old
        if self.journal.held:  # held writes first, so the events table keeps the PUB order
            self.journal.flush_held(force=True)
        warm = self.slot.warm
        rec = record_step(self.log, old, new, effects, details or {}, warm.get, self.condition_id)
        self.state = rec.state
        for topic, data, _ in rec.events:
            self.journal.publish(topic, data)
        if rec.condition_id is not None:
            self.condition_id = self.slot.probe_condition = rec.condition_id
            self.outcomes.reset_detector()
        for pid in rec.rejected:
            warm.drop(pid)
        if rec.export is not None:
            self.exporter.submit(*rec.export)
        for job in rec.cancelled:
            self.jobs.abandoned(job)
        if rec.swapped:  # may step again: its events follow these, as in the table
            self._after_swap()
        elif old.phase != self.state.phase and lc.Phase.RACING in (old.phase, self.state.phase):
            self.outcomes.reset_detector()  # a race began or ended without a swap
        self.slot.ensure_warm()
        return self.state

    def try_step(self, event: lc.Event, details: dict[str, Any] | None = None) -> None:
        try:
            self.step(event, details)
        except Exception as exc:
            self.journal.error("lifecycle", exc)

    def _after_swap(self) -> None:
        self.outcomes.swapped()
        if self.state.policy is not None:
            self.served()

    def warm(self, policy_id: str) -> bool:
        """True when ``policy_id`` is loaded and warm (a swap to it needs no load)."""
        return policy_id in self.slot.warm

    def load(self, source: Path, request: OperatorLoad) -> None:
        """Queue a bundle for validation and loading; ``request`` says what its arrival does."""
        self.slot.load(source, request)

    def set_paused(self, paused: bool, reason: str) -> None:
        self.paused, self.pause_reason = paused, reason if paused else ""
        self.journal.emit(Topic.PAUSED if paused else Topic.RESUMED, {"reason": reason})
        self.notifier.status(self._line())

    # -- commands (the command thread's view) ----------------------------------------------
    def _command_context(self, queries: Queries) -> CommandContext:
        st = self.status
        return CommandContext(st.snapshot, st.latencies_ms, self.changes.enqueue, queries)

    def _command_done(self, reply: dict[str, Any]) -> None:
        self.status.last_command = reply
        self.journal.emit(Topic.COMMAND, reply)

    # -- status ------------------------------------------------------------------------------
    def _refresh(self) -> None:
        self.status.refresh(self)

    def refuse(self, reason: str) -> None:
        self.status.refuse(reason)

    def served(self) -> None:
        """``READY=1`` once the active policy is warm (never after a stop was requested)."""
        if self.slot.serving() is not None:
            self.status.served(self._line())

    def _line(self) -> str:
        return self.status.line(self.state, self.paused, self.grasps)


__all__ = ["EXIT_UNWRITTEN", "Daemon"]
