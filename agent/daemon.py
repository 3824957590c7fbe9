"""The daemon: wires driver, policy, grasp log, detector, lifecycle and sockets into one loop.

The control thread owns everything except the policy loader's worker: it
answers commands and swaps loaded policies *between* grasps, runs grasps,
commits each one to the grasp log before the next starts, feeds the detector
and the lifecycle, publishes events and pings the systemd watchdog.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import threading
import time
import traceback
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import zmq

from agent import lifecycle as lc
from agent.bundle import BundleError, read_meta
from agent.commands import CommandError, dispatch
from agent.config import AgentConfig, check_exposure
from agent.detector import SuccessDropDetector
from agent.export import export_condition
from agent.grasplog import GraspLog, GraspRecord, TransitionRecord
from agent.loader import LoadResult, PolicyLoader
from agent.notify import Notifier
from agent.policy import Policy, PolicyLoadError
from agent.transport import CommandServer, EventPublisher, Security
from drivers.base import Driver

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_ERRORS = 5
"""Grasp failures in a row after which the daemon exits non-zero (systemd restarts it)."""


class Daemon:
    """The robot agent. ``run()`` blocks until stopped and returns the exit status."""

    def __init__(self, cfg: AgentConfig, driver: Driver, notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        self.driver = driver
        self.notifier = notifier or Notifier()
        self.spec = driver.spec
        self.stop_event = threading.Event()
        self.store = cfg.data_path(cfg.policy.store_dir)
        self.log = GraspLog(
            cfg.data_path(cfg.grasp_log.path),
            cfg.grasp_log.busy_timeout_ms,
            cfg.grasp_log.image_format,
        )
        self.loader = PolicyLoader(self.store, self.spec, cfg.policy, cfg.cem)
        d = cfg.detector
        self.detector = SuccessDropDetector(
            d.arl0, d.min_drop, d.reference_grasps, d.threshold_method
        )
        self.policy: Policy | None = None
        self.no_policy_reason = "no policy loaded yet"
        self.state = lc.State(lc.Phase.SERVING, cfg.lifecycle.initial_condition, None)
        self.condition_id = 0
        self.paused = False
        self.pause_reason = ""
        self.grasps = 0
        self.errors_in_a_row = 0
        self.since_swap = 0
        self.latencies: collections.deque[float] = collections.deque(maxlen=2000)
        self.recent: collections.deque[bool] = collections.deque(maxlen=50)
        """Outcomes of the last 50 grasps (for the status line)."""
        self.last_grasp: dict[str, Any] = {}
        self.started_at = time.time()
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._security = Security(cfg.sockets)
        self.commands: CommandServer | None = None
        self.events: EventPublisher | None = None
        self.endpoints: dict[str, str] = {}
        self.ready = threading.Event()
        self._sigterms = 0
        self._applying = False

    # -- signals ---------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: finish the grasp, flush, exit 0; a second one exits at once."""

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self._sigterms += 1
            if self._sigterms > 1:
                os._exit(128 + signum)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def request_stop(self) -> None:
        self.stop_event.set()

    # -- start / stop ------------------------------------------------------------------------
    def open(self) -> None:
        """Open the database, bind sockets, start the driver, restore state, load the policy."""
        check_exposure(self.cfg.sockets)
        self.log.open()
        self._ctx = zmq.Context()
        self._security.start(self._ctx)
        self.events = EventPublisher(self._ctx, self.cfg.sockets.event_endpoint)
        self.commands = CommandServer(
            self._ctx, self.cfg.sockets.command_endpoint, self.cfg.sockets.max_message_bytes
        )
        self.endpoints = {
            "events": self.events.bind(self._security),
            "commands": self.commands.bind(self._security),
        }
        self.loader.start()
        self.driver.start()
        self._restore()
        self._load_initial_policy()

    def close(self) -> None:
        """Release everything; safe after a failed open."""
        self.notifier.stopping("stopping")
        for fn in (self.loader.close, self.driver.close, self.log.close):
            try:
                fn()
            except Exception:
                log.exception("error while closing")
        if self.commands:
            self.commands.close()
        if self.events:
            self.events.close()
        self._security.stop()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        self.notifier.close()

    def run(self) -> int:
        """Open, loop until stopped, close; returns the process exit status."""
        try:
            self.open()
            status = self.loop()
        except Exception as exc:
            log.exception("daemon failed")
            self._error("fatal", exc)
            status = 1
        finally:
            self.close()
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
        self.grasps = self.log.count_grasps()

    def _load_initial_policy(self) -> None:
        source: Path | None = None
        if self.cfg.policy.bundle:
            source = Path(self.cfg.policy.bundle)
        else:
            active = self.log.active_policy()
            if active is not None:
                source = Path(active["path"])
        if source is None:
            self._refuse(
                "no policy: set policy.bundle or promote one (robot-agent ctl promote DIR)"
            )
            return
        self.loader.submit(source, ("initial", None))
        res = self.loader.wait(timeout=300.0)
        if res is None:
            self._refuse(f"policy at {source} did not load within 300 s")
            return
        self._apply_load(res)

    # -- the loop ----------------------------------------------------------------------------
    def loop(self) -> int:
        """The control loop; returns 0 after a clean stop, non-zero on persistent failure."""
        idle_ms = int(self.cfg.agent.idle_sleep_s * 1000)
        assert self.commands is not None
        while not self.stop_event.is_set():
            self.notifier.watchdog()
            while (res := self.loader.poll()) is not None:
                self._apply_load(res)
            actuate = self.policy is not None and not self.paused
            self.commands.serve(self._handle, 0 if actuate else idle_ms)
            if self.stop_event.is_set() or self.paused or self.policy is None:
                continue  # a command just served may have paused us or swapped the policy
            if self.cfg.agent.max_grasps and self.grasps >= self.cfg.agent.max_grasps:
                break
            try:
                self._grasp()
                self.errors_in_a_row = 0
            except Exception as exc:
                self.errors_in_a_row += 1
                self._error("grasp", exc)
                if self.errors_in_a_row >= MAX_CONSECUTIVE_ERRORS:
                    log.error("%d grasp failures in a row; exiting", self.errors_in_a_row)
                    return 2
        return 0

    def _handle(self, frames: Any) -> list[bytes]:
        return dispatch(self, frames, self.cfg.sockets.max_message_bytes)

    def _grasp(self) -> None:
        assert self.policy is not None
        policy = self.policy  # one reference for the whole grasp: swaps happen between grasps
        mode = "explore" if self.state.phase is lc.Phase.EXPLORING else "serve"
        t_start = time.time()
        transitions: list[TransitionRecord] = []
        decide = execute = 0.0
        first_q = float("nan")
        outcome = None
        reward = 0.0
        for step in range(self.spec.horizon):
            obs = self.driver.observe()
            d = policy.act(obs.image)
            self.latencies.append(d.latency_s)
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
        gid = self.log.log_grasp(rec, self.cfg.grasp_log.store_images)
        self.grasps += 1
        self.since_swap += 1
        self.last_grasp = {
            "id": gid,
            "success": outcome.success,
            "q": first_q,
            "mode": mode,
            "decide_ms": round(decide * 1e3, 3),
            "policy": policy.id,
            "condition": self.state.condition,
        }
        self._publish("agent.grasp", self.last_grasp)
        self.recent.append(outcome.success)
        self._after_outcome(outcome.success)
        if self.grasps % 10 == 0:
            line = self._status_line()
            self.notifier.status(line)
            log.info("%s", line)

    def _after_outcome(self, success: bool) -> None:
        self._step(lc.GraspDone(success))
        if not self.cfg.detector.enabled:
            return
        alarm = self.detector.update(success)
        if (
            self.state.probation_parent is not None
            and self.since_swap >= self.cfg.detector.reference_grasps
            and alarm is None
        ):
            self._step(lc.ProbationPassed())
            self._reset_detector()
        if alarm is not None:
            data = {
                "reference": alarm.reference,
                "recent_rate": alarm.recent_rate,
                "grasps": alarm.grasps,
                "threshold": alarm.design.threshold,
                "arl0": alarm.design.arl0,
                "policy": self.state.policy,
                "condition": self.state.condition,
                "action": self.cfg.lifecycle.on_alarm,
            }
            self.log.add_event("agent.alarm", data)
            self._publish("agent.alarm", data)
            auto = self.cfg.lifecycle.on_alarm == "mark"
            self._step(lc.Alarm(auto_mark=auto, new_condition=self._auto_name()))

    def _auto_name(self) -> str:
        base = f"auto-{time.strftime('%Y%m%d-%H%M%S')}"
        name, i = base, 1
        while self.log.condition(name) is not None or name == self.state.condition:
            i += 1
            name = f"{base}-{i}"
        return name

    # -- lifecycle effects ---------------------------------------------------------------
    def _step(self, event: lc.Event) -> lc.State:
        new, effects = lc.step(self.state, event)
        old = self.state
        self.state = new
        for eff in effects:
            self._effect(eff, old)
        if new != old:
            self.log.set_kv("lifecycle", new.to_dict())
        return new

    def _effect(self, eff: lc.Effect, old: lc.State) -> None:
        if isinstance(eff, lc.NewCondition):
            self.condition_id = self.log.add_condition(
                eff.name, eff.note, eff.source, self.state.policy
            )
            data = {
                "condition": eff.name,
                "note": eff.note,
                "source": eff.source,
                "previous": old.condition,
            }
            self.log.add_event("agent.condition", data)
            self._publish("agent.condition", data)
            self._reset_detector()
        elif isinstance(eff, lc.SubmitJob):
            self._submit_job(eff)
        elif isinstance(eff, lc.CancelJob):
            self.log.update_job(eff.job, "cancelled")
            self._publish("agent.job", {"job": eff.job, "status": "cancelled"})
        elif isinstance(eff, lc.RaiseAlarm):
            self.log.add_event("agent.alarm", {"reason": eff.reason})
            self._publish("agent.alarm", {"reason": eff.reason, "condition": self.state.condition})
        elif isinstance(eff, lc.SwapPolicy) and not self._applying:
            # the lifecycle chose a policy on its own (probation failed): load it off-thread
            if old.policy:
                self.log.upsert_policy(old.policy, "", "rejected", reason=eff.reason)
            row = self.log.policy(eff.policy)
            if row is None:
                self._error("policy", KeyError(f"cannot roll back to unknown {eff.policy}"))
                return
            self.loader.submit(Path(row["path"]), ("auto-rollback", eff.policy))

    def _submit_job(self, eff: lc.SubmitJob) -> None:
        exports = self.cfg.data_path(self.cfg.agent.exports_dir)
        job = self.log.add_job(self.condition_id, eff.parent, "")
        dest = exports / f"job-{job:06d}-{eff.condition}"
        try:
            index = export_condition(self.log, eff.condition, dest, self.spec)
        except Exception as exc:
            self.log.update_job(job, "failed")
            self._error("export", exc)
            self._step(lc.JobSubmitted(job))
            self._step(lc.JobFailed(job, f"export failed: {exc}"))
            return
        with self.log.write() as conn:
            conn.execute("UPDATE jobs SET export_path = ? WHERE id = ?", (str(dest), job))
        self._step(lc.JobSubmitted(job))
        data = {
            "job": job,
            "status": "queued",
            "condition": eff.condition,
            "parent": eff.parent,
            "export": str(dest),
            "transitions": index["transitions"],
        }
        self.log.add_event("agent.job", data)
        self._publish("agent.job", data)

    def offer_trained(self, bundle_dir: Path, job: int | None = None) -> None:
        """A trainer result arrived: load it off-thread, swap it in when ready (thread-safe)."""
        self.loader.submit(bundle_dir, ("trained", job))

    def _apply_load(self, res: LoadResult) -> None:
        """On the control thread, between grasps: record and swap in a loaded policy."""
        kind, arg = res.tag
        if res.policy is None:
            self._record_rejected(res)
            self._error("policy", RuntimeError(f"policy at {res.source} refused: {res.error}"))
            if self.policy is None:
                self._refuse(f"no usable policy: {res.error}")
            return
        pol = res.policy
        meta = pol.bundle.meta
        known = self.log.policy(pol.id)
        if known is None:
            self.log.upsert_policy(
                pol.id,
                str(pol.bundle.path),
                "candidate",
                pol.bundle.parent_id,
                self.condition_id,
                meta,
            )
        previous = self.policy.id if self.policy else None
        self._applying = True
        try:
            if kind == "trained":
                self._step(lc.PolicyReady(pol.id, arg))
            elif kind == "rollback":
                self._step(lc.Rollback(pol.id))
            elif kind == "promote" and pol.id != self.state.policy:
                self._step(lc.Promote(pol.id))
        except lc.LifecycleError as exc:
            self._error("policy", exc)
            return
        finally:
            self._applying = False
        self.state = replace(self.state, policy=pol.id)
        self.log.set_kv("lifecycle", self.state.to_dict())
        self.policy = pol  # the swap: one reference, between grasps
        self.since_swap = 0
        self.log.activate_policy(pol.id, kind)
        if kind in ("rollback",) and previous:
            self.log.upsert_policy(previous, "", "retired", reason="rolled back by operator")
        self._reset_detector()
        rolled = kind in ("rollback", "auto-rollback")
        topic = "agent.policy.rolled_back" if rolled else "agent.policy.swapped"
        data = {
            "policy": pol.id,
            "previous": previous,
            "reason": kind,
            "providers": pol.providers,
            "split_trunk": pol.split,
        }
        self.log.add_event(topic, data)
        self._publish(topic, data)
        self.no_policy_reason = ""
        self.notifier.ready(self._status_line())
        self.ready.set()
        self.notifier.status(self._status_line())

    def _record_rejected(self, res: LoadResult) -> None:
        try:
            meta = read_meta(Path(res.source))
            pid = str(meta.get("id") or "")
        except BundleError:
            return
        if pid:
            self.log.upsert_policy(
                pid, res.source, "rejected", meta.get("parent_id"), reason=res.error[:500]
            )

    def _reset_detector(self) -> None:
        if self.state.policy is None:
            self.detector.reset()
            return
        n = self.cfg.detector.reference_grasps
        if self.state.probation_parent is not None:
            hist = self.log.recent_outcomes(self.state.probation_parent, self.condition_id, n)
            if len(hist) >= 10:  # judge the new policy against its parent in this condition
                self.detector.reset(reference=(sum(hist) + 1) / (len(hist) + 2))
                return
        hist = self.log.recent_outcomes(self.state.policy, self.condition_id, n)
        self.detector.reset(history=hist)

    # -- helpers -----------------------------------------------------------------------
    def _refuse(self, reason: str) -> None:
        self.no_policy_reason = reason
        log.error("refusing to actuate: %s", reason)
        self._publish("agent.error", {"where": "policy", "message": reason})
        self.notifier.status(f"not actuating: {reason}")

    def _error(self, where: str, exc: BaseException) -> None:
        tb = "".join(traceback.format_exception(exc))
        log.error("%s error: %s", where, tb)
        data = {"where": where, "message": f"{type(exc).__name__}: {exc}"}
        self._publish("agent.error", data)
        try:
            if self.log._db is not None:
                self.log.add_event("agent.error", {**data, "traceback": tb[-4000:]})
        except Exception:
            log.exception("could not record an error event")

    def _publish(self, topic: str, data: dict[str, Any]) -> None:
        if self.events is not None:
            self.events.publish(topic, data)

    def _status_line(self) -> str:
        s = self.state
        pol = s.policy or "none"
        state = "paused" if self.paused else s.phase.value
        rate = f"{sum(self.recent) / len(self.recent):.0%}" if self.recent else "-"
        return (
            f"{state} condition={s.condition} policy={pol} grasps={self.grasps}"
            f" success(last {len(self.recent)})={rate}"
        )

    # -- AgentControl (commands; control thread, between grasps) -------------------------
    def status(self) -> dict[str, Any]:
        return {
            **self.state.to_dict(),
            "paused": self.paused,
            "pause_reason": self.pause_reason,
            "actuating": self.policy is not None and not self.paused,
            "no_policy_reason": self.no_policy_reason,
            "grasps": self.grasps,
            "detector": self.detector.snapshot(),
            "last_grasp": self.last_grasp,
            "loading": self.loader.pending,
            "uptime_s": round(time.time() - self.started_at, 3),
            "endpoints": self.endpoints,
        }

    def mark_condition(self, name: str, note: str) -> dict[str, Any]:
        if self.log.condition(name) is not None:
            raise CommandError("conflict", f"condition {name!r} already exists; pick a new name")
        self._step(lc.MarkCondition(name, note, "operator"))
        return {"condition": name, "phase": self.state.phase.value}

    def finetune(self) -> dict[str, Any]:
        self._step(lc.Finetune())
        return {"job": self.state.job, "phase": self.state.phase.value}

    def pause(self, reason: str) -> dict[str, Any]:
        self.paused, self.pause_reason = True, reason
        self.log.add_event("agent.paused", {"reason": reason})
        self.notifier.status(self._status_line())
        return {"paused": True}

    def resume(self) -> dict[str, Any]:
        self.paused, self.pause_reason = False, ""
        self.log.add_event("agent.resumed", {})
        self.notifier.status(self._status_line())
        return {"paused": False}

    def policies(self) -> dict[str, Any]:
        return {"active": self.state.policy, "policies": self.log.policies()}

    def rollback(self, policy_id: str) -> dict[str, Any]:
        row = self.log.policy(policy_id)
        if row is None:
            raise KeyError(f"unknown policy {policy_id!r}")
        if row["status"] not in ("retired", "active"):
            raise CommandError(
                "conflict",
                f"policy {policy_id} is {row['status']}; only a policy that served "
                "before (retired) can be rolled back to",
            )
        if policy_id == self.state.policy:
            raise CommandError("conflict", f"policy {policy_id} is already active")
        self.loader.submit(Path(row["path"]), ("rollback", policy_id))
        return {"loading": policy_id}

    def promote(self, policy_id: str) -> dict[str, Any]:
        row = self.log.policy(policy_id)
        if row is not None:
            source = Path(row["path"])
        elif Path(policy_id).is_dir():
            source = Path(policy_id)
        elif (self.store / policy_id).is_dir():
            source = self.store / policy_id
        else:
            raise KeyError(f"unknown policy {policy_id!r} (neither an id nor a bundle directory)")
        if row is not None and row["status"] == "rejected":
            raise CommandError("conflict", f"policy {policy_id} was rejected: {row['reason']}")
        if row is not None and policy_id == self.state.policy:
            raise CommandError("conflict", f"policy {policy_id} is already active")
        self.loader.submit(source, ("promote", policy_id))
        return {"loading": policy_id}

    def stats(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies) * 1e3
        pct = (
            {f"p{q}": round(float(np.percentile(lat, q)), 3) for q in (50, 90, 99)}
            if lat.size
            else {}
        )
        return {
            "table": self.log.stats(),
            "latency_ms": {**pct, "n": int(lat.size)},
            "grasps": self.grasps,
        }


__all__ = ["Daemon", "PolicyLoadError"]
