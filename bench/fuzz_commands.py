"""Fuzz the real daemon's command socket on the sim cell; grasp rate loaded vs unloaded.

Usage: python -m bench.fuzz_commands [--seconds 15] [--rounds 3] [--messages 10000]
                                     [--limits default|off] [--clients 1]

Starts ``robot-agent run`` (a subprocess: the sim cell serving the shipped base policy)
pinned to one core, and a fuzz client in this process pinned to another. Windows of
``--seconds`` alternate unloaded and loaded (U L U L ... U, ``--rounds`` loaded ones); in a
loaded window the client sends malformed, mangled, oversize and random messages as fast as
the daemon answers, ``--messages`` of them at least over all windows. The grasp rate of each
window is read from the grasp log (t_end of committed grasps), so no command is needed to
measure it. Every reply must carry a documented error code (or ok for a read-only command);
the fuzz never sends a well-formed state-changing command, and the daemon must end unpaused,
in its condition, on its policy. ``--limits off`` turns the rate limits off so that every
message reaches the parser (the worst case for the daemon's CPU). ``--clients N`` floods
from N processes at once (each its own connection, so each its own rate bucket; all
pinned to the client core), the mixed flood of several operators' scripts gone wrong.

``--paired N``: the windows above see different object sets, and the sim's grasp rate swings
by 20-30% with the objects (13.6-24.2 grasps/s between unloaded windows on a quiet machine),
which hides a few percent. Paired mode instead starts a fresh daemon per run on the same
seeded world (the sim and CEM are seeded, so every run grasps the same objects with the same
actions: checked, ``same_outcomes``), lets it warm up for ``--warmup`` grasps and times
grasps ``warmup`` to ``warmup + N`` from the grasp log, with the flood on (``--clients``
processes) in every other run: U F U F ... U, ``--rounds`` flooded runs. Reported: each
flooded run's rate over the mean of its two unflooded neighbours (the same grasps), their
median, and CPU per grasp likewise.

The daemon's CPU time per grasp (all threads, from /proc) is reported too. On a virtual
machine shared with other jobs the wall-clock rate swings by 2x between windows (and was
higher, not lower, in every loaded window measured), while CPU per grasp shows what
answering the fuzz costs the daemon. Last line of stdout: one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import zmq

from agent.config import SocketsConfig
from agent.ctl import request
from agent.wire import ERROR_CODES, decode, encode

ROOT = Path(__file__).resolve().parents[1]
READ_ONLY = ("status", "stats", "policies")
MAX_MESSAGE = SocketsConfig.max_message_bytes
MAX_FRAME = SocketsConfig.max_frame_bytes
CORES = sorted(os.sched_getaffinity(0))
"""The cores this bench may use, read once: it pins itself to the second after a start."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(
    data: Path, cmd_port: int, ev_port: int, limits: str, read_rate: float | None = None
) -> Path:
    off = "command_rate_per_s = 0\ncommand_total_rate_per_s = 0\ncommand_read_rate_per_s = 0\n"
    rate = "" if limits == "default" else off
    if read_rate is not None and limits == "default":
        rate = f"command_read_rate_per_s = {read_rate}\n"
    cfg = data / "agent.toml"
    cfg.write_text(f"""
[agent]
data_dir = "{data}"
[driver]
type = "sim"
condition = "baseline"
seed = 0
options = {{ split = "test" }}
[policy]
bundle = "{ROOT / "policies" / "base"}"
[lifecycle]
initial_condition = "baseline"
[cem]
iterations = 3
[sockets]
command_endpoint = "tcp://127.0.0.1:{cmd_port}"
event_endpoint = "tcp://127.0.0.1:{ev_port}"
{rate}""")
    return cfg


def fuzz_messages(rng: np.random.Generator) -> Iterator[list[bytes]]:
    """Endless malformed/mangled/oversize/random requests; never a valid state change."""
    valid = [encode("command", {"id": i, "command": c}) for i, c in enumerate(READ_ONLY)]
    bad_changes: list[dict[str, Any]] = [
        {"command": "promote", "args": {"id": ""}},
        {"command": "promote", "args": {"id": "../../etc"}},
        {"command": "mark-condition", "args": {"name": "x/../../../../outside"}},
        {"command": "mark-condition", "args": {"name": ""}},
        {"command": "rollback", "args": {"id": "a/b"}},
        {"command": "pause", "args": {"reason": 7}},
        {"command": "pause", "args": {"why": "x"}},
        {"command": "resume", "args": {"x": "1"}},
        {"command": "finetune", "args": []},
        {"command": "finetune", "v2": True},
    ]
    junk_values: list[Any] = [None, True, 1.5, -1, "", "x" * 300, [], {}, [[[]]], {"a": {"b": 1}}]
    i = 0
    while True:
        i += 1
        kind = i % 10
        base = valid[i % len(valid)][0]
        if kind == 0:
            yield [rng.bytes(int(rng.integers(0, 300))) for _ in range(int(rng.integers(1, 4)))]
        elif kind == 1:
            b = bytearray(base)
            for _ in range(int(rng.integers(1, 4))):
                b[int(rng.integers(0, len(b)))] ^= 1 << int(rng.integers(0, 8))
            yield [bytes(b)]
        elif kind == 2:
            yield [base[: int(rng.integers(0, len(base)))]]
        elif kind == 3:
            n = int(rng.integers(MAX_MESSAGE + 1, MAX_FRAME))
            yield [b"{" * 64, b"\0" * n] if i % 20 == 3 else [b" " * n]
        elif kind == 4:
            changed = dict(bad_changes[int(rng.integers(0, len(bad_changes)))])
            changed["id"] = i
            yield encode("command", changed)
        elif kind == 5:
            field = ["v", "type", "id", "command", "args"][int(rng.integers(0, 5))]
            head: dict[str, Any] = {"v": 1, "type": "command", "id": i, "command": "status"}
            head[field] = junk_values[int(rng.integers(0, len(junk_values)))]
            yield [json.dumps(head).encode()]
        elif kind == 6:
            depth = int(rng.integers(30, 5000))
            yield [b'{"v":1,"type":"command","x":' + b"[" * depth + b"]" * depth + b"}"]
        elif kind == 7:
            yield [base, rng.bytes(16)]
        elif kind == 8:
            name = ["selfdestruct", "", "STATUS", "status\x00", "help"][int(rng.integers(0, 5))]
            yield encode("command", {"id": i, "command": name})
        else:
            yield [bytes(f) for f in valid[int(rng.integers(0, len(valid)))]]


def fuzz(endpoint: str, n: int, until: float, rng: np.random.Generator) -> dict[str, Any]:
    """Send at least ``n`` messages (until the window ends), 64 in flight; tally replies."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, 1 << 24)
    sock.connect(endpoint)
    tally: dict[str, int] = {}
    sent = answered = inflight = 0
    gen = fuzz_messages(rng)
    while time.monotonic() < until or sent < n:
        while inflight < 64:
            sock.send_multipart(next(gen))
            sent += 1
            inflight += 1
        if not sock.poll(2000):
            raise SystemExit(f"no reply within 2 s ({inflight} in flight): a message was lost")
        while sock.poll(0):
            frames = sock.recv_multipart()
            if frames and frames[0] == b"":
                frames = frames[1:]  # a request whose first frame was empty: a REQ envelope
            head = decode(frames, max_bytes=1 << 24, max_header_bytes=1 << 24).header
            code = "ok" if head["ok"] else head["error"]["code"]
            if code not in ERROR_CODES and code != "ok":
                raise SystemExit(f"undocumented code {code!r}")
            tally[code] = tally.get(code, 0) + 1
            answered += 1
            inflight -= 1
    deadline = time.monotonic() + 5
    while inflight and time.monotonic() < deadline:
        if sock.poll(100):
            sock.recv_multipart()
            answered += 1
            inflight -= 1
    sock.close(0)
    ctx.term()
    return {"sent": sent, "answered": answered, "unanswered": sent - answered, "codes": tally}


def fuzz_client(endpoint: str, n: int, until: float, seed: int) -> dict[str, Any]:
    """One flooding client (a worker process): :func:`fuzz` with its own generator."""
    return fuzz(endpoint, n, until, np.random.default_rng(seed))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def grasps_between(db: Path, t0: float, t1: float) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = con.execute(
            "SELECT count(*) FROM grasps WHERE t_end >= ? AND t_end < ?", (t0, t1)
        ).fetchone()
        return int(row[0])
    finally:
        con.close()


def spawn_daemon(cfg: Path, log: IO[str]) -> subprocess.Popen[bytes]:
    """``robot-agent run`` on ``cfg``, pinned to the first core and this process to the
    second (when there are two)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "--log-level", "WARNING", "run", "--config", str(cfg)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if len(CORES) >= 2:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(proc.pid, {CORES[0]})
            os.sched_setaffinity(0, {CORES[1]})
    return proc


def grasp_times(db: Path, first: int, last: int) -> tuple[float, float, list[int]]:
    """(t_end of grasp ``first``, t_end of grasp ``last``, outcomes in between), by row order."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = con.execute(
            "SELECT t_end, success FROM grasps ORDER BY id LIMIT ? OFFSET ?",
            (last - first + 1, first),
        ).fetchall()
    finally:
        con.close()
    return float(rows[0][0]), float(rows[-1][0]), [int(r[1]) for r in rows]


def grasps_done(endpoint: str) -> int:
    with contextlib.suppress(Exception):
        return int(request(endpoint, "status", timeout_s=2)["result"]["grasps"])
    return 0


def paired_run(args: argparse.Namespace, flood: bool, seed: int) -> dict[str, Any]:
    """One fresh daemon on the seeded world: grasps warmup..warmup+paired timed, flood or not."""
    tmp = Path(tempfile.mkdtemp(prefix="fuzz-paired-"))
    cmd_port, ev_port = free_port(), free_port()
    cfg = write_config(tmp, cmd_port, ev_port, args.limits, args.read_rate)
    endpoint = f"tcp://127.0.0.1:{cmd_port}"
    first, last = args.warmup, args.warmup + args.paired
    with open(tmp / "daemon.log", "w") as log:
        proc = spawn_daemon(cfg, log)
        pool: Any = None
        try:
            if flood:
                pool = multiprocessing.get_context("spawn").Pool(args.clients)
            deadline = time.monotonic() + 300
            flooding = None
            while (n := grasps_done(endpoint)) < first:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"daemon did not reach grasp {first}; see {tmp}/daemon.log")
                if pool is not None and flooding is None and n >= first - 20:
                    seeds = [seed * 1000 + k for k in range(args.clients)]
                    until = time.monotonic() + 600  # stopped with the pool below
                    jobs = [(endpoint, 0, until, sd) for sd in seeds]
                    flooding = pool.starmap_async(fuzz_client, jobs)
                time.sleep(0.1)
            c0 = cpu_seconds(proc.pid)
            while grasps_done(endpoint) <= last:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"daemon did not reach grasp {last}; see {tmp}/daemon.log")
                if flooding is not None and flooding.ready():
                    flooding.get()  # a client failed (a lost reply): say why
                time.sleep(0.1)
            cpu = cpu_seconds(proc.pid) - c0
            t0, t1, outcomes = grasp_times(tmp / "grasps.db", first, last)
        finally:
            if pool is not None:
                pool.terminate()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    shutil.rmtree(tmp, ignore_errors=True)
    grasps = last - first
    return {
        "flood": flood,
        "grasps_per_s": grasps / (t1 - t0),
        "cpu_ms_per_grasp": 1000 * cpu / grasps,
        "outcomes": outcomes,
    }


def paired_mode(args: argparse.Namespace) -> None:
    """The paired mode (module docstring): same seeded grasps with and without the flood."""
    load0 = [round(x, 2) for x in os.getloadavg()]
    pinned = len(CORES) >= 2
    runs = []
    for i in range(2 * args.rounds + 1):
        runs.append(paired_run(args, bool(i % 2), args.seed + i))
        r = runs[-1]
        print(
            f"run {i}: flood={r['flood']} {r['grasps_per_s']:.2f} grasps/s, "
            f"{r['cpu_ms_per_grasp']:.1f} ms CPU/grasp",
            file=sys.stderr,
        )
    u = [r for r in runs if not r["flood"]]
    f = [r for r in runs if r["flood"]]
    rate = [
        x["grasps_per_s"] / ((u[i]["grasps_per_s"] + u[i + 1]["grasps_per_s"]) / 2)
        for i, x in enumerate(f)
    ]
    cpu = [
        x["cpu_ms_per_grasp"] / ((u[i]["cpu_ms_per_grasp"] + u[i + 1]["cpu_ms_per_grasp"]) / 2)
        for i, x in enumerate(f)
    ]
    result = {
        "bench": "fuzz_commands",
        "mode": "paired",
        "limits": args.limits,
        "clients": args.clients,
        "load_average_at_start": load0,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "grasps_timed": args.paired,
        "warmup": args.warmup,
        "same_outcomes": all(r["outcomes"] == runs[0]["outcomes"] for r in runs),
        "grasps_per_s_unloaded": [round(x["grasps_per_s"], 2) for x in u],
        "grasps_per_s_loaded": [round(x["grasps_per_s"], 2) for x in f],
        "paired_rate_ratios": [round(x, 4) for x in rate],
        "paired_ratio_median": round(float(np.median(rate)), 4),
        "paired_cpu_ratios": [round(x, 4) for x in cpu],
        "cpu_per_grasp_loaded_over_unloaded": round(float(np.median(cpu)), 4),
        "daemon_cpu_ms_per_grasp": {
            "unloaded": round(float(np.mean([x["cpu_ms_per_grasp"] for x in u])), 2),
            "loaded": round(float(np.mean([x["cpu_ms_per_grasp"] for x in f])), 2),
        },
        "read_rate": args.read_rate,
        "pinned": pinned,
    }
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0, help="length of each window")
    ap.add_argument("--rounds", type=int, default=3, help="loaded windows (between unloaded)")
    ap.add_argument("--messages", type=int, default=10_000, help="least fuzz messages sent")
    ap.add_argument("--limits", choices=["default", "off"], default="default")
    ap.add_argument("--clients", type=int, default=1, help="flooding processes at once")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the daemon's data directory")
    ap.add_argument("--read-rate", type=float, default=None, help="sockets.command_read_rate_per_s")
    ap.add_argument("--paired", type=int, default=0, help="paired mode: grasps timed per run")
    ap.add_argument("--warmup", type=int, default=60, help="paired mode: grasps before timing")
    args = ap.parse_args()
    if args.paired:
        paired_mode(args)
        return
    cores = sorted(os.sched_getaffinity(0))
    load0 = [round(x, 2) for x in os.getloadavg()]  # other jobs on the machine, before ours
    tmp = Path(tempfile.mkdtemp(prefix="fuzz-commands-"))
    cmd_port, ev_port = free_port(), free_port()
    cfg = write_config(tmp, cmd_port, ev_port, args.limits, args.read_rate)
    endpoint = f"tcp://127.0.0.1:{cmd_port}"
    log = open(tmp / "daemon.log", "w")  # noqa: SIM115
    proc = spawn_daemon(cfg, log)
    pool: Any = None
    try:
        deadline = time.monotonic() + 180
        st: dict[str, Any] = {}
        while not st.get("grasps"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"daemon did not start grasping; see {tmp / 'daemon.log'}")
            with contextlib.suppress(Exception):
                st = request(endpoint, "status", timeout_s=2)["result"]
            time.sleep(0.5)
        time.sleep(3.0)  # past warm-up
        db = tmp / "grasps.db"
        rng = np.random.default_rng(args.seed)
        if args.clients > 1:  # started before the windows: their start-up is not the flood
            pool = multiprocessing.get_context("spawn").Pool(args.clients)
        windows: list[tuple[str, float, float]] = []
        cpu = {"unloaded": 0.0, "loaded": 0.0}
        fz: dict[str, Any] = {"sent": 0, "answered": 0, "unanswered": 0, "codes": {}}
        per_window = -(-args.messages // args.rounds)
        for i in range(2 * args.rounds + 1):  # U L U L ... U: drift hits both sides alike
            t0, c0 = time.time(), cpu_seconds(proc.pid)
            if i % 2:
                until = time.monotonic() + args.seconds
                if pool is None:
                    parts = [fuzz(endpoint, per_window, until, rng)]
                else:
                    seeds = [int(x) for x in rng.integers(0, 2**31, size=args.clients)]
                    each = -(-per_window // args.clients)
                    parts = pool.starmap(fuzz_client, [(endpoint, each, until, sd) for sd in seeds])
                for part in parts:
                    for k in ("sent", "answered", "unanswered"):
                        fz[k] += part[k]
                    for code, n in part["codes"].items():
                        fz["codes"][code] = fz["codes"].get(code, 0) + n
            else:
                time.sleep(args.seconds)
            windows.append(("loaded" if i % 2 else "unloaded", t0, time.time()))
            cpu[windows[-1][0]] += cpu_seconds(proc.pid) - c0
        time.sleep(0.5)
        rates = {
            kind: [grasps_between(db, a, b) / (b - a) for k, a, b in windows if k == kind]
            for kind in ("unloaded", "loaded")
        }
        loaded_s = sum(b - a for k, a, b in windows if k == "loaded")
        n_grasps = {
            kind: sum(grasps_between(db, a, b) for k, a, b in windows if k == kind)
            for kind in ("unloaded", "loaded")
        }
        cpu_ms = {k: 1000 * cpu[k] / max(1, n_grasps[k]) for k in cpu}
        final = request(endpoint, "status", timeout_s=10)["result"]
        unchanged = (
            not final["paused"]
            and final["condition"] == st["condition"]
            and final["policy"] == st["policy"]
        )
        alive = proc.poll() is None
    finally:
        if pool is not None:
            pool.terminate()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        log.close()
    unloaded, loaded = float(np.mean(rates["unloaded"])), float(np.mean(rates["loaded"]))
    ratio = loaded / unloaded if unloaded else float("nan")
    u = rates["unloaded"]  # each loaded window against the two unloaded ones around it
    paired = [x / ((u[i] + u[i + 1]) / 2) for i, x in enumerate(rates["loaded"])]
    result = {
        "bench": "fuzz_commands",
        "limits": args.limits,
        "clients": args.clients,
        "load_average_at_start": load0,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "rounds": args.rounds,
        "seconds_per_window": args.seconds,
        "grasps_per_s_unloaded": [round(r, 2) for r in rates["unloaded"]],
        "grasps_per_s_loaded": [round(r, 2) for r in rates["loaded"]],
        "loaded_over_unloaded": round(ratio, 4),
        "paired_ratio_median": round(float(np.median(paired)), 4),
        "loaded_rate_at_least_90pct": bool(ratio >= 0.9),
        "daemon_cpu_ms_per_grasp": {k: round(v, 2) for k, v in cpu_ms.items()},
        "cpu_per_grasp_loaded_over_unloaded": round(cpu_ms["loaded"] / cpu_ms["unloaded"], 4),
        "fuzz": fz,
        "fuzz_per_s": round(fz["sent"] / loaded_s, 1),
        "daemon_alive": alive,
        "daemon_exit": code,
        "state_unchanged": unchanged,
        "pinned": len(cores) >= 2,
    }
    if args.keep:
        result["data_dir"] = str(tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)  # on a failure above it stays, with daemon.log
    print(json.dumps(result))


if __name__ == "__main__":
    main()
