"""``robot-demo``: the trainer service and the agent on the sim, the world changing by itself,
progress shown live from the agent's events, then a PNG and a summary.

What it does, in order (everything under ``--out``, default ``runs/demo``):

1. ``base-data/``: the base replay data, made by ``robot-trainer base-data`` if missing
   (kept between runs);
2. ``agent.toml``, ``trainer.toml``: the templates (``configs/demo-agent.toml``,
   ``configs/demo-trainer.toml``) with this run's directory, free loopback ports, the sim
   schedule and the grasp budget; ``agent/`` and ``trainer/`` are emptied first;
3. ``robot-trainer serve`` and ``robot-agent run`` as child processes (logs in
   ``trainer.log``, ``agent.log``); the agent runs with ``on_alarm = "mark"`` and is told
   nothing about the changes;
4. the live view from the agent's PUB socket until the agent stops at its grasp budget
   (or ``--time-limit``, or Ctrl-C: SIGTERM to the children, then wait);
5. ``demo.png``, ``summary.txt`` and ``summary.json`` (and ``--summary-json PATH``) from the
   agent's grasp log, opened read-only.
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
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

import zmq

from agent.ctl import CtlError, request
from agent.extras import run_entry
from agent.wire import WireError, decode
from trainer.demo.analysis import summarise, summary_text
from trainer.demo.live import LiveView
from trainer.demo.logread import read_run
from trainer.demo.plot import plot_data, write_png
from trainer.demo.setup import (
    Endpoints,
    RunPlan,
    agent_config,
    dumps_toml,
    parse_conditions,
    trainer_config,
)

REPO = Path(__file__).resolve().parents[2]
"""The checkout this module lives in (templates and the base policy are found there too)."""
STOP_WAIT_S = 60.0
"""How long a child may take to stop after SIGTERM before it is killed."""


@dataclass(frozen=True)
class DemoOptions:
    """One run of the demo (the CLI's flags)."""

    out: Path = Path("runs/demo")
    """Run directory."""
    schedule: str = "default"
    """"default", "paper" or a comma-separated list of conditions (the first is the start)."""
    baseline_grasps: int = 500
    """Grasps under the first condition."""
    grasps_per_condition: int = 1200
    """Grasps under each later condition."""
    exploration_grasps: int | None = None
    """lifecycle.exploration_grasps (None: the template's)."""
    base_grasps: int = 4000
    """Size of the base replay data (robot-trainer base-data --grasps); 0: none."""
    time_limit_s: float = 15 * 60.0
    """Stop the agent after this long (the run still writes its PNG and summary)."""
    summary_json: Path | None = None
    """Also write the summary JSON here."""
    agent_template: Path = Path("configs/demo-agent.toml")
    """The agent's config template."""
    trainer_template: Path = Path("configs/demo-trainer.toml")
    """The trainer's config template."""
    bundle: Path = Path("policies/base")
    """The policy the agent starts with (and the trainer's base bundle)."""
    window: int = 50
    """Grasps in the rolling success rate."""
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
    """Event lines, and a status line redrawn in place on a terminal (every 10 s otherwise)."""

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
        elif force or now - self._last >= 10.0:
            self.line(text)
            self._last = now

    def end(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False


class Demo:
    """One run: :meth:`run` does everything and returns the exit status."""

    def __init__(self, opts: DemoOptions, stream: IO[str] = sys.stdout) -> None:
        self.opts = opts
        self.out = Path(opts.out)
        self.plan = RunPlan(
            parse_conditions(opts.schedule), opts.baseline_grasps, opts.grasps_per_condition
        )
        self.console = Console(stream)
        self.stop = threading.Event()
        self.children: list[Child] = []
        self.started = time.monotonic()
        self.exit_codes: dict[str, int | None] = {}

    def say(self, text: str) -> None:
        self.console.line(f"[demo {time.monotonic() - self.started:6.0f}s] {text}")

    # -- steps -------------------------------------------------------------------------------
    def base_data(self) -> Path | None:
        """The base replay data under ``out/base-data`` (made by robot-trainer if missing);
        None with ``base_grasps = 0`` (jobs then train on their new data alone)."""
        if self.opts.base_grasps <= 0:
            self.say("no base replay data (--base-grasps 0): jobs train on new data alone")
            return None
        path = (self.out / "base-data").resolve()
        done = path / "collect.json"
        if done.is_file() and json.loads(done.read_text()).get("episodes") == self.opts.base_grasps:
            self.say(f"base replay data: {path} ({self.opts.base_grasps} grasps, reused)")
            return path
        self.say(
            f"collecting {self.opts.base_grasps} base replay grasps with the base policy "
            f"(robot-trainer base-data; log: {self.out / 'base-data.log'})"
        )
        child = Child(
            "base-data",
            [
                sys.executable,
                "-m",
                "trainer.entry",
                "base-data",
                "--out",
                str(path),
                "--grasps",
                str(self.opts.base_grasps),
                "--bundle",
                str(self._bundle()),
            ],
            self.out / "base-data.log",
        )
        self.children.append(child)
        child.start()
        while child.poll() is None and not self.stop.is_set():
            time.sleep(0.5)
        code = child.stop()
        self.children.remove(child)
        if code != 0 and not self.stop.is_set():
            raise RuntimeError(f"robot-trainer base-data exited {code}; see base-data.log")
        return path

    def _bundle(self) -> Path:
        return _existing(self.opts.bundle).resolve()

    def write_configs(self, base: Path | None) -> tuple[Path, Path, Endpoints]:
        ports = free_ports(3)
        ep = Endpoints(*(f"tcp://127.0.0.1:{p}" for p in ports))
        for d in ("agent", "trainer"):
            shutil.rmtree(self.out / d, ignore_errors=True)
        with open(_existing(self.opts.agent_template), "rb") as f:
            a_tmpl = tomllib.load(f)
        with open(_existing(self.opts.trainer_template), "rb") as f:
            t_tmpl = tomllib.load(f)
        bundle = self._bundle()
        a_cfg = agent_config(
            a_tmpl,
            self.plan,
            (self.out / "agent").resolve(),
            ep,
            bundle,
            self.opts.exploration_grasps,
        )
        t_cfg = trainer_config(t_tmpl, (self.out / "trainer").resolve(), ep, base, bundle)
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
        """Show events until the agent exits (or the time limit, or a stop request)."""
        view = LiveView(
            [(int(c), str(n)) for c, n in self.plan.schedule()],
            self.plan.total_grasps,
            self.opts.window,
        )
        limit_hit = False
        trainer_reported = False
        paused = False
        while agent.poll() is None:
            for topic, data in events.poll(200):
                for text in view.apply(topic, data):
                    self.console.line(text)
            if self.opts.pause_while_training and view.job_in_flight() != paused:
                paused = self._pause(commands, not paused)
            self.console.status(view.status())
            if self.stop.is_set():
                break
            if not limit_hit and time.monotonic() - self.started > self.opts.time_limit_s:
                limit_hit = True
                self.say(f"time limit ({self.opts.time_limit_s:.0f} s) reached: stopping")
                agent.signal(signal.SIGTERM)
            if trainer.poll() is not None and not trainer_reported:
                trainer_reported = True
                self.say(f"the trainer exited ({trainer.poll()}); see trainer.log")
        for topic, data in events.poll(200):
            for text in view.apply(topic, data):
                self.console.line(text)
        self.console.status(view.status(), force=True)
        self.console.end()

    def report(self) -> dict[str, Any]:
        """PNG, summary.txt and summary.json from the agent's grasp log."""
        db = self.out / "agent" / "grasps.db"
        grasps, events = read_run(db)
        schedule = [(int(c), str(n)) for c, n in self.plan.schedule()]
        summary = summarise(grasps, events, schedule)
        title = (
            f"robot-demo: {' -> '.join(self.plan.conditions)}; {len(grasps)} grasps; "
            f"rolling success (last {self.opts.window})"
        )
        png = self.out / "demo.png"
        backend = write_png(plot_data(grasps, summary, self.opts.window, title), png)
        text = summary_text(summary)
        (self.out / "summary.txt").write_text(text + "\n")
        doc = {
            "plan": {
                "conditions": list(self.plan.conditions),
                "schedule": self.plan.schedule(),
                "total_grasps": self.plan.total_grasps,
            },
            "options": {k: str(v) for k, v in asdict(self.opts).items()},
            "wall_s": round(time.monotonic() - self.started, 1),
            "exit_codes": self.exit_codes,
            "png": str(png),
            "png_backend": backend,
            **summary.to_json(),
        }
        body = json.dumps(doc, indent=1)
        (self.out / "summary.json").write_text(body)
        if self.opts.summary_json is not None:
            Path(self.opts.summary_json).parent.mkdir(parents=True, exist_ok=True)
            Path(self.opts.summary_json).write_text(body)
        self.console.line(text)
        self.say(f"wrote {png} ({backend}), {self.out / 'summary.txt'}, summary.json")
        return doc

    # -- the whole run -----------------------------------------------------------------------
    def run(self) -> int:
        if self.opts.report_only:
            self.report()
            return 0
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            base = self.base_data()
            if self.stop.is_set():
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
                self.say("the agent wrote no grasp log; see agent.log")
                return 1
            self.report()
        finally:
            self.stop_children()
        agent_code = self.exit_codes.get("agent")
        return 0 if agent_code == 0 else 1

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


def build_parser() -> argparse.ArgumentParser:
    d = DemoOptions()
    p = argparse.ArgumentParser(prog="robot-demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=d.out, help=f"run directory (default {d.out})")
    p.add_argument(
        "--schedule",
        default=d.schedule,
        help="'default' (baseline -> harsh_lighting -> transparent -> checkerboard), 'paper' "
        "(adds extend_gripper -> offset_gripper) or a comma-separated list of conditions",
    )
    p.add_argument("--baseline-grasps", type=int, default=d.baseline_grasps)
    p.add_argument("--grasps-per-condition", type=int, default=d.grasps_per_condition)
    p.add_argument(
        "--exploration-grasps", type=int, default=None, help="default: the agent template's"
    )
    p.add_argument("--base-grasps", type=int, default=d.base_grasps, help="base replay data size")
    p.add_argument(
        "--time-limit",
        type=float,
        default=d.time_limit_s / 60,
        help="minutes before the agent is stopped (the report is still written)",
    )
    p.add_argument("--summary-json", type=Path, default=None, help="also write the summary here")
    p.add_argument("--agent-template", type=Path, default=d.agent_template)
    p.add_argument("--trainer-template", type=Path, default=d.trainer_template)
    p.add_argument("--bundle", type=Path, default=d.bundle, help="the starting policy bundle")
    p.add_argument("--window", type=int, default=d.window, help="rolling success window")
    p.add_argument(
        "--agent-nice",
        type=int,
        default=d.agent_nice,
        help="niceness of the agent process (default 10: the trainer, sharing the machine, "
        "gets the CPU first while a job trains)",
    )
    p.add_argument(
        "--no-pause-while-training",
        action="store_true",
        help="keep the agent grasping while a job trains (the default pauses it: both share "
        "the machine's cores)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="only redraw the PNG and summary of the run in --out (same schedule flags)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the exit status (0: the agent ran to its budget and stopped
    cleanly, and the report was written)."""
    a = build_parser().parse_args(argv)
    try:
        opts = DemoOptions(
            out=a.out,
            schedule=a.schedule,
            baseline_grasps=a.baseline_grasps,
            grasps_per_condition=a.grasps_per_condition,
            exploration_grasps=a.exploration_grasps,
            base_grasps=a.base_grasps,
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
    except (RuntimeError, OSError, tomllib.TOMLDecodeError) as exc:
        print(f"robot-demo: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
