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

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

import zmq

from agent.ctl import CtlError, request
from agent.wire import WireError, decode
from plumbing.config_loader import field_docs
from plumbing.extras import run_entry
from trainer.demo.analysis import summarise, summary_text
from trainer.demo.checks import check
from trainer.demo.live import LiveView
from trainer.demo.logread import read_run
from trainer.demo.plot import plot_data, write_png
from trainer.demo.setup import Endpoints, agent_config, dumps_toml, trainer_config

REPO = Path(__file__).resolve().parents[2]
"""The checkout this module lives in (templates and the base policy are found there too)."""
STOP_WAIT_S = 60.0
"""How long a child may take to stop after SIGTERM before it is killed."""
STATUS_EVERY_S = 5.0
"""Status line interval when the output is not a terminal (a log file)."""
EXIT_CODES = {
    0: "complete: the agent ran its whole schedule and the report was written",
    1: "stopped early: a child process (base data, trainer or agent) failed",
    2: "nothing started: an option, path or template is wrong",
    3: "stopped early: the time limit (--time-limit) was reached",
    130: "stopped early: interrupted (Ctrl-C or SIGTERM)",
}
"""robot-demo's exit statuses; every early stop also writes its report, saying so."""


@dataclass(frozen=True)
class DemoOptions:
    """One run of the demo (the CLI's flags; each field's docstring is its --help)."""

    out: Path = Path("runs/demo")
    """Run directory (everything the run writes goes here)."""
    schedule: str = "default"
    """The world's conditions in order: "default" (baseline -> harsh_lighting -> transparent
    -> checkerboard), "paper" (adds extend_gripper -> offset_gripper) or a comma-separated
    list of conditions (the first is the start)."""
    baseline_grasps: int = 300
    """Grasps under the first condition (at least the detector's reference, 200)."""
    grasps_per_condition: int = 800
    """Grasps under each later condition (more than the exploration)."""
    exploration_grasps: int | None = None
    """Grasps the agent explores after an alarm (default: the agent template's, 400)."""
    base_grasps: int | None = None
    """Base replay grasps: default the shipped archive (--base-archive, 4,000 grasps, made in
    seconds) when it fits --bundle, else 4,000 collected; 0: none; N: collect N."""
    base_archive: Path = Path("policies/base-replay.npz")
    """The shipped base replay archive (robot-trainer base-data --write-archive makes one)."""
    time_limit_s: float = 60 * 60.0
    """Stop the run this long after the agent starts (base data not counted; 0: no limit);
    the report is still written and says the run stopped early (exit 3)."""
    summary_json: Path | None = None
    """Also write summary.json here."""
    agent_template: Path = Path("configs/demo-agent.toml")
    """The agent's config template."""
    trainer_template: Path = Path("configs/demo-trainer.toml")
    """The trainer's config template."""
    bundle: Path = Path("policies/base")
    """The policy the agent starts with (and the trainer's base bundle)."""
    window: int = 50
    """Grasps in the rolling success rate (terminal and PNG)."""
    agent_command: tuple[str, ...] = ()
    """The agent's command line before ``--config PATH`` (empty: ``python -m agent.cli run``)."""
    agent_nice: int = 10
    """Niceness of the agent process: the trainer gets the CPU first while a job trains, as
    it would on its own machine (0: equal shares)."""
    pause_while_training: bool = True
    """Pause the agent (robot-agent ctl pause) while a job is with the trainer: on two shared
    cores the trainer then gets them; a robot with its own trainer machine keeps grasping."""
    report_only: bool = False
    """Only (re)write the PNG and summary of the run already in ``out``."""


def _existing(path: Path) -> Path:
    """``path`` as given if it exists, else the same path inside the checkout."""
    return path if path.exists() or path.is_absolute() else REPO / path


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (bound and released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class Child:
    """A child process with its output in a log file; :meth:`stop` is SIGTERM, wait, kill."""

    def __init__(self, name: str, argv: list[str], log: Path, nice: int = 0) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self.nice = nice
        self.proc: subprocess.Popen[bytes] | None = None
        self._file: IO[bytes] | None = None

    def start(self) -> None:
        self._file = open(self.log, "ab")  # noqa: SIM115 (closed in stop)
        # own session: a Ctrl-C in the terminal reaches the demo only, which stops the
        # children in order
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=(lambda: os.nice(self.nice)) if self.nice else None,
        )

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, wait_s: float = STOP_WAIT_S) -> int | None:
        """SIGTERM, wait up to ``wait_s``, then SIGKILL; returns the exit status."""
        if self.proc is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            code = self.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        if self._file is not None:
            self._file.close()
            self._file = None
        return code


class EventStream:
    """SUB socket on the agent's PUB endpoint (connects before the agent binds: ZeroMQ
    reconnects by itself)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self.bad = 0
        """Messages that did not decode."""

    def start(self) -> None:
        self._ctx = zmq.Context()
        s = self._ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVHWM, 100_000)
        s.setsockopt(zmq.MAXMSGSIZE, 4 << 20)
        s.setsockopt(zmq.SUBSCRIBE, b"agent.")
        s.connect(self.endpoint)
        self._sock = s

    def poll(self, timeout_ms: int) -> list[tuple[str, dict[str, Any]]]:
        """Every event waiting (after up to ``timeout_ms`` for the first)."""
        assert self._sock is not None
        out: list[tuple[str, dict[str, Any]]] = []
        if not self._sock.poll(timeout_ms):
            return out
        while True:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return out
            try:
                msg = decode(frames[1:])
            except (WireError, IndexError):
                self.bad += 1
                continue
            data = msg.header.get("data")
            out.append((str(msg.header.get("topic", "")), data if isinstance(data, dict) else {}))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None


class Console:
    """Event lines, and a status line redrawn in place on a terminal (every
    :data:`STATUS_EVERY_S` otherwise)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._shown = False
        self._last = 0.0

    def line(self, text: str) -> None:
        if self._shown:
            self.stream.write("\r\033[K")
            self._shown = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def status(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            if force or now - self._last >= 0.2:
                width = shutil.get_terminal_size((160, 20)).columns - 1
                self.stream.write("\r\033[K" + text[:width])
                self.stream.flush()
                self._shown, self._last = True, now
        elif force or now - self._last >= STATUS_EVERY_S:
            self.line(text)
            self._last = now

    def end(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False


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
            last = _last_line(log, start) or "starting (importing torch)"
            self.console.status(f"base data: {last} | {time.monotonic() - t0:.0f} s")
        self.console.end()
        code = child.stop()
        self.children.remove(child)
        self.exit_codes["base-data"] = code
        if self.stop.is_set():
            return None
        if code != 0:
            tail = _last_line(log, start)
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
            [(int(c), str(n)) for c, n in self.plan.schedule()],
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
        schedule = [(int(c), str(n)) for c, n in self.plan.schedule()]
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
                f"world: {' -> '.join(self.plan.conditions)} at grasps "
                f"{[c for c, _ in self.plan.schedule()]}; {self.plan.total_grasps} grasps in all"
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


def _last_line(log: Path, start: int = 0) -> str:
    """The last progress line a child wrote to ``log`` after offset ``start`` ("\r" counts
    as a line end: collection progress redraws one line)."""
    try:
        with open(log, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(start, size - 2000))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [x.strip() for x in tail.replace("\r", "\n").split("\n") if x.strip()]
    return lines[-1][:120] if lines else ""


def _jsonable(value: Any) -> Any:
    """Options as JSON types: paths as strings, tuples as lists, the rest as they are."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _help(name: str) -> str:
    """A DemoOptions field's docstring, as --help text."""
    return " ".join(FIELD_HELP[name].split()).replace("%", "%%")


FIELD_HELP = field_docs(DemoOptions)
"""DemoOptions' field docstrings: the --help texts."""


def build_parser() -> argparse.ArgumentParser:
    d = DemoOptions()
    p = argparse.ArgumentParser(
        prog="robot-demo",
        description="The whole loop on the simulated cell: the world changes by itself, the "
        "agent detects each change, explores, has the trainer fine-tune its policy and swaps "
        "the child in. Live progress in the terminal; at the end a PNG and a summary under "
        "--out (docs/demo.md).",
        epilog="exit status: "
        + "; ".join(f"{k}: {v}" for k, v in EXIT_CODES.items()).replace("%", "%%"),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=d.out, help=_help("out"))
    p.add_argument("--schedule", default=d.schedule, help=_help("schedule"))
    p.add_argument(
        "--baseline-grasps", type=int, default=d.baseline_grasps, help=_help("baseline_grasps")
    )
    p.add_argument(
        "--grasps-per-condition",
        type=int,
        default=d.grasps_per_condition,
        help=_help("grasps_per_condition"),
    )
    p.add_argument("--exploration-grasps", type=int, default=None, help=_help("exploration_grasps"))
    p.add_argument("--base-grasps", type=int, default=None, help=_help("base_grasps"))
    p.add_argument("--base-archive", type=Path, default=d.base_archive, help=_help("base_archive"))
    p.add_argument(
        "--time-limit",
        type=float,
        default=d.time_limit_s / 60,
        metavar="MIN",
        help=_help("time_limit_s") + " In minutes.",
    )
    p.add_argument("--summary-json", type=Path, default=None, help=_help("summary_json"))
    p.add_argument(
        "--agent-template", type=Path, default=d.agent_template, help=_help("agent_template")
    )
    p.add_argument(
        "--trainer-template", type=Path, default=d.trainer_template, help=_help("trainer_template")
    )
    p.add_argument("--bundle", type=Path, default=d.bundle, help=_help("bundle"))
    p.add_argument("--window", type=int, default=d.window, help=_help("window"))
    p.add_argument("--agent-nice", type=int, default=d.agent_nice, help=_help("agent_nice"))
    p.add_argument(
        "--no-pause-while-training",
        action="store_true",
        help="Keep the agent grasping while a job trains (by default it is paused: the agent "
        "and the trainer share the machine's cores).",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="Only redraw the PNG and summary of the run in --out (give the same schedule "
        "options as the run).",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the exit status (:data:`EXIT_CODES`)."""
    a = build_parser().parse_args(argv)
    try:
        opts = DemoOptions(
            out=a.out,
            schedule=a.schedule,
            baseline_grasps=a.baseline_grasps,
            grasps_per_condition=a.grasps_per_condition,
            exploration_grasps=a.exploration_grasps,
            base_grasps=a.base_grasps,
            base_archive=a.base_archive,
            time_limit_s=a.time_limit * 60,
            summary_json=a.summary_json,
            agent_template=a.agent_template,
            trainer_template=a.trainer_template,
            bundle=a.bundle,
            window=a.window,
            agent_nice=a.agent_nice,
            pause_while_training=not a.no_pause_while_training,
            report_only=a.report_only,
        )
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
