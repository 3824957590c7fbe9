"""robot-demo's moving parts: child processes with their logs, the agent's event stream, the
console (event lines and a status line)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Any

import zmq

from agent.wire import WireError, decode

STOP_WAIT_S = 60.0
"""How long a child may take to stop after SIGTERM before it is killed."""
STATUS_EVERY_S = 5.0
"""Status line interval when the output is not a terminal (a log file)."""


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


def last_line(log: Path, start: int = 0) -> str:
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
