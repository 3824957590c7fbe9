"""``robot-demo``: the trainer service and the agent on the sim, the world changing by itself,
progress shown live from the agent's events, then a PNG and a summary.

What it does, in order (everything under ``--out``, default ``runs/demo``):

0. checks everything the run needs (schedule names, sizes, templates, the bundle, the base
   replay archive, the configs it will write) before anything starts: an error exits 2;
1. ``base-data/``: the base replay data, made from the shipped archive
   (``policies/base-replay.npz``) in seconds, or collected by ``robot-trainer base-data``
   (kept between runs), with its progress on the terminal;
2. ``agent.toml``, ``trainer.toml``: the templates (``configs/demo-agent.toml``,
   ``configs/demo-trainer.toml``) with this run's directory, free loopback ports, the sim
   schedule and the grasp budget; ``agent/`` and ``trainer/`` are emptied first;
3. ``robot-trainer serve`` and ``robot-agent run`` as child processes (logs in
   ``trainer.log``, ``agent.log``); the agent runs with ``on_alarm = "mark"`` and is told
   nothing about the changes;
4. the live view from the agent's PUB socket until the agent stops at its grasp budget
   (or ``--time-limit``, Ctrl-C, or a child that fails: SIGTERM to the children, then wait);
5. ``demo.png``, ``summary.txt`` and ``summary.json`` (and ``--summary-json PATH``) from the
   agent's grasp log, opened read-only; a run that stopped early says where and why in all
   of them and exits non-zero (see :data:`EXIT_CODES`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import IO, Any

from agent.ctl import CtlError, request
from plumbing.extras import run_entry
from trainer.demo.analysis import summarise
from trainer.demo.checks import check
from trainer.demo.live import LiveView
from trainer.demo.logread import read_run
from trainer.demo.options import EXIT_CODES, DemoOptions, build_parser, options_from_args
from trainer.demo.plot import plot_data, write_png
from trainer.demo.procs import Child, Console, EventStream, free_ports, last_line
from trainer.demo.report import summary_text
from trainer.demo.setup import Endpoints, agent_config, dumps_toml, trainer_config

REPO = Path(__file__).resolve().parents[2]
"""The checkout this module lives in (templates and the base policy are found there too)."""


def _existing(path: Path) -> Path:
    """``path`` as given if it exists, else the same path inside the checkout."""
    return path if path.exists() or path.is_absolute() else REPO / path


class Demo:
    """One run: :meth:`run` does everything and returns the exit status (:data:`EXIT_CODES`).

    Building one checks every option (:func:`trainer.demo.checks.check`): ValueError before
    anything starts."""

    def __init__(self, opts: DemoOptions, stream: IO[str] = sys.stdout) -> None:
        self.opts = opts
        self.out = Path(opts.out)
        self.checked = check(
            opts.schedule,
            opts.baseline_grasps,
            opts.grasps_per_condition,
            opts.exploration_grasps,
            opts.base_grasps,
            _existing(opts.base_archive).resolve(),
            _existing(opts.bundle).resolve(),
            _existing(opts.agent_template),
            _existing(opts.trainer_template),
            opts.window,
            opts.agent_nice,
            opts.time_limit_s,
        )
        self.plan = self.checked.plan
        self.console = Console(stream)
        self.stop = threading.Event()
        self.children: list[Child] = []
        self.started = time.monotonic()
        self.exit_codes: dict[str, int | None] = {}
        self.stop_reason: str | None = None
        """Why the run stopped before its budget (None: it did not, so far)."""
        self.status = 0
        """The exit status the run ends with."""

    def say(self, text: str) -> None:
        self.console.line(f"[demo {time.monotonic() - self.started:6.0f}s] {text}")

    def _stopped(self, reason: str, status: int) -> None:
        """Record the first reason the run stops early (later ones follow from it)."""
        if self.stop_reason is None:
            self.stop_reason, self.status = reason, status

    # -- steps -------------------------------------------------------------------------------
    def base_data(self) -> Path | None:
        """The base replay data under ``out/base-data``: made from the shipped archive, or
        collected by robot-trainer; None without base data (jobs train on new data alone)."""
        src = self.checked.base
        if src.kind == "none":
            self.say("no base replay data (--base-grasps 0): jobs train on new data alone")
            return None
        path = (self.out / "base-data").resolve()
        done = path / "collect.json"
        if done.is_file():
            made = json.loads(done.read_text())
            same = made.get("episodes") == src.grasps and (
                src.archive is None or made.get("archive") == str(src.archive)
            )
            if same:
                self.say(f"base replay data: {path} ({src.grasps} grasps, reused)")
                return path
        argv = [sys.executable, "-m", "trainer.entry", "base-data", "--out", str(path)]
        if src.archive is not None:
            what = f"unpacking {src.grasps} base replay grasps from {src.archive.name}"
            argv += ["--from-archive", str(src.archive)]
        else:
            what = f"collecting {src.grasps} base replay grasps with the base policy"
            argv += ["--grasps", str(src.grasps), "--bundle", str(self.checked.bundle)]
        log = self.out / "base-data.log"
        self.say(f"{what} (robot-trainer base-data; log: {log})")
        child = Child("base-data", argv, log)
        self.children.append(child)
        start = log.stat().st_size if log.exists() else 0
        child.start()
        t0 = time.monotonic()
        while child.poll() is None and not self.stop.is_set():
            time.sleep(0.2)
            last = last_line(log, start) or "starting (importing torch)"
            self.console.status(f"base data: {last} | {time.monotonic() - t0:.0f} s")
        self.console.end()
        code = child.stop()
        self.children.remove(child)
        self.exit_codes["base-data"] = code
        if self.stop.is_set():
            return None
        if code != 0:
            tail = last_line(log, start)
            raise ChildFailed(f"robot-trainer base-data exited {code} ({tail}); see {log}")
        self.say(f"base replay data ready in {time.monotonic() - t0:.0f} s: {path}")
        return path

    def write_configs(self, base: Path | None) -> tuple[Path, Path, Endpoints]:
        ports = free_ports(3)
        ep = Endpoints(*(f"tcp://127.0.0.1:{p}" for p in ports))
        for d in ("agent", "trainer"):
            shutil.rmtree(self.out / d, ignore_errors=True)
        bundle = self.checked.bundle
        a_cfg = agent_config(
            self.checked.agent_template,
            self.plan,
            (self.out / "agent").resolve(),
            ep,
            bundle,
            self.opts.exploration_grasps,
        )
        t_cfg = trainer_config(
            self.checked.trainer_template, (self.out / "trainer").resolve(), ep, base, bundle
        )
        a_path, t_path = self.out / "agent.toml", self.out / "trainer.toml"
        a_path.write_text("# written by robot-demo\n" + dumps_toml(a_cfg))
        t_path.write_text("# written by robot-demo\n" + dumps_toml(t_cfg))
        (self.out / "schedule.json").write_text(
            json.dumps({"schedule": self.plan.schedule(), "total": self.plan.total_grasps})
        )
        return a_path, t_path, ep

    def _pause(self, endpoint: str, pause: bool) -> bool:
        """Pause or resume the agent over its command socket; returns the new state."""
        command = "pause" if pause else "resume"
        args = {"reason": "robot-demo: a job is training on the shared CPU"} if pause else {}
        try:
            reply = request(endpoint, command, args, timeout_s=5.0)
        except CtlError as exc:
            self.say(f"robot-agent ctl {command} failed: {exc}")
            return not pause
        if not reply.get("ok"):
            self.say(f"robot-agent ctl {command}: {reply.get('error')}")
            return not pause
        self.say(
            "agent paused while the job trains (--no-pause-while-training to keep it grasping)"
            if pause
            else "agent resumed"
        )
        return pause

    def watch(self, agent: Child, trainer: Child, events: EventStream, commands: str) -> None:
        """Show events until the agent exits (or the time limit, a failed child, a stop)."""
        view = LiveView(
            self.plan.labelled(),
            self.plan.total_grasps,
            self.opts.window,
        )
        t0 = time.monotonic()
        limit = self.opts.time_limit_s
        paused = False
        while agent.poll() is None:
            for topic, data in events.poll(200):
                for text in view.apply(topic, data):
                    self.console.line(text)
            if self.opts.pause_while_training and view.job_in_flight() != paused:
                paused = self._pause(commands, not paused)
            status = view.status()
            if view.grasps == 0 and view.phase == "serving":
                status += " | starting the agent"
            self.console.status(f"{status} | {time.monotonic() - t0:.0f} s")
            if self.stop.is_set():
                self._stopped("it was interrupted (Ctrl-C or SIGTERM)", 130)
                break
            if limit and time.monotonic() - t0 > limit:
                self._stopped(f"the time limit (--time-limit {limit / 60:g} min) was reached", 3)
                self.say(f"time limit ({limit / 60:g} min) reached: stopping")
                break
            if trainer.poll() is not None:
                self._stopped(f"the trainer exited ({trainer.poll()}; see trainer.log)", 1)
                self.say(f"the trainer exited ({trainer.poll()}); see trainer.log: stopping")
                break
        for topic, data in events.poll(200):
            for text in view.apply(topic, data):
                self.console.line(text)
        self.console.status(view.status(), force=True)
        self.console.end()

    def _min_drop(self) -> float:
        """The run's detector.min_drop (its agent.toml), for telling small drops apart."""
        import tomllib

        try:
            with open(self.out / "agent.toml", "rb") as f:
                value = tomllib.load(f).get("detector", {}).get("min_drop", 0.15)
            return float(value)
        except (OSError, ValueError, TypeError):
            return 0.15

    def report(self) -> dict[str, Any]:
        """PNG, summary.txt and summary.json from the agent's grasp log."""
        db = self.out / "agent" / "grasps.db"
        grasps, events = read_run(db)
        schedule = self.plan.labelled()
        total = self.plan.total_grasps
        reason = self.stop_reason
        if reason is None and len(grasps) < total:
            agent = self.exit_codes.get("agent")
            reason = f"the agent exited ({agent}; see agent.log) before its budget"
            self._stopped(reason, 1)
        summary = summarise(grasps, events, schedule, total, reason, self._min_drop())
        reached = [s.condition for s in summary.segments]
        title = (
            f"robot-demo: {' -> '.join(reached)}"
            + (f" (never reached: {', '.join(summary.not_reached)})" if summary.not_reached else "")
            + f"; {len(grasps)} of {total} grasps"
        )
        png = self.out / "demo.png"
        meta = {"robot-demo:grasps": f"{len(grasps)} of {total}"}
        write_png(plot_data(grasps, summary, self.opts.window, title, meta), png)
        text = summary_text(summary)
        (self.out / "summary.txt").write_text(text + "\n")
        doc = {
            "exit_status": self.status,
            "exit_meaning": EXIT_CODES.get(self.status, ""),
            "plan": {
                "conditions": list(self.plan.conditions),
                "schedule": self.plan.schedule(),
                "total_grasps": total,
            },
            "options": _jsonable(asdict(self.opts)),
            "base_data": _jsonable(asdict(self.checked.base)),
            "wall_s": round(time.monotonic() - self.started, 1),
            "exit_codes": self.exit_codes,
            "png": str(png),
            **summary.to_json(),
        }
        body = json.dumps(doc, indent=1)
        (self.out / "summary.json").write_text(body)
        if self.opts.summary_json is not None:
            Path(self.opts.summary_json).parent.mkdir(parents=True, exist_ok=True)
            Path(self.opts.summary_json).write_text(body)
        self.console.line(text)
        self.say(f"wrote {png}, {self.out / 'summary.txt'}, summary.json")
        return doc

    # -- the whole run -----------------------------------------------------------------------
    def run(self) -> int:
        if self.opts.report_only:
            previous = self.out / "summary.json"
            if previous.is_file():  # keep the run's own account of why it stopped
                stopped = json.loads(previous.read_text()).get("stopped") or {}
                if stopped.get("reason"):
                    self._stopped(str(stopped["reason"]), 0)
            self.report()
            return 0
        self.out.mkdir(parents=True, exist_ok=True)
        for warning in self.checked.warnings:
            self.say(f"warning: {warning}")
        try:
            try:
                base = self.base_data()
            except ChildFailed as exc:
                self.say(str(exc))
                return 1
            if self.stop.is_set():
                self.say("interrupted during the base data: nothing else started")
                return 130
            a_path, t_path, ep = self.write_configs(base)
            self.say(
                f"world: {' -> '.join(label for _, label in self.plan.labelled())} at grasps "
                f"{self.plan.counts()}; {self.plan.total_grasps} grasps in all"
                " (the agent is not told)"
            )
            py = sys.executable
            trainer = Child(
                "trainer",
                [py, "-m", "trainer.entry", "serve", "--config", str(t_path)],
                self.out / "trainer.log",
            )
            agent_cmd = list(self.opts.agent_command) or [py, "-m", "agent.cli", "run"]
            agent = Child(
                "agent",
                [*agent_cmd, "--config", str(a_path)],
                self.out / "agent.log",
                self.opts.agent_nice,
            )
            events = EventStream(ep.events)
            events.start()
            try:
                for child in (trainer, agent):
                    self.children.append(child)
                    child.start()
                    self.say(f"started {child.name} (pid {child.proc.pid if child.proc else '?'})")
                self.watch(agent, trainer, events, ep.commands)
            finally:
                events.close()
                self.stop_children()
            if not (self.out / "agent" / "grasps.db").is_file():
                self._stopped("the agent wrote no grasp log (see agent.log)", 1)
                self.say("the agent wrote no grasp log; see agent.log")
                return self.status
            if self.exit_codes.get("agent") not in (0, None) and self.stop_reason is None:
                self._stopped(f"the agent exited {self.exit_codes['agent']} (see agent.log)", 1)
            self.report()
        finally:
            self.stop_children()
        if self.stop_reason is not None:
            self.say(f"STOPPED EARLY (exit {self.status}): {self.stop_reason}")
        return self.status

    def stop_children(self) -> None:
        """SIGTERM every child still running, agent first, and wait for each."""
        for child in sorted(self.children, key=lambda c: c.name != "agent"):
            running = child.poll() is None
            if running:
                self.say(f"stopping {child.name}")
            self.exit_codes[child.name] = child.stop()
        self.children.clear()

    def install_signals(self) -> None:
        """First SIGINT/SIGTERM: stop cleanly (children stopped, report written); second: kill
        the children and exit."""

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if self.stop.is_set():
                for child in self.children:
                    child.signal(signal.SIGKILL)
                os._exit(130)
            self.stop.set()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)


class ChildFailed(RuntimeError):
    """A child process the run needs exited with an error."""


def _jsonable(value: Any) -> Any:
    """Options as JSON types: paths as strings, tuples as lists, the rest as they are."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the exit status (:data:`EXIT_CODES`)."""
    a = build_parser().parse_args(argv)
    try:
        opts = options_from_args(a)
        demo = Demo(opts)
    except ValueError as exc:
        print(f"robot-demo: {exc}", file=sys.stderr)
        return 2
    demo.install_signals()
    try:
        # the agent's sim cell and the trainer run here as subprocesses: say what is
        # missing now, not as a stage's exit status (a report needs neither)
        needs = () if a.report_only else ("sim", "trainer")
        return run_entry("robot-demo", demo.run, needs=needs)
    except (RuntimeError, OSError) as exc:
        print(f"robot-demo: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
