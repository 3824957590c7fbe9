"""``robot-agent ctl``: the operator client for the command socket (DEALER, with timeouts)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from agent.command_base import Command
from agent.commands import COMMANDS, REPLY_MAX_BYTES
from agent.wire import WireError, decode, encode
from plumbing.curve import ClientKeys

_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


class CtlError(RuntimeError):
    """The daemon did not answer in time, refused our key, or answered garbage."""


def request(
    endpoint: str,
    command: str,
    args: dict[str, str] | None = None,
    timeout_s: float = 5.0,
    keys: ClientKeys | None = None,
) -> dict[str, Any]:
    """Send one command and return the reply header (``ok``, ``result`` or ``error``).

    With ``keys`` the connection is CURVE-encrypted and authenticated (a daemon that binds
    off loopback requires it). Raises CtlError after ``timeout_s`` without a reply, saying
    so when the daemon refused the key.
    """
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, int(timeout_s * 1000))
    sock.setsockopt(zmq.MAXMSGSIZE, REPLY_MAX_BYTES)
    monitor: zmq.Socket[bytes] | None = None
    if keys is not None:
        keys.apply(sock)
        monitor = sock.get_monitor_socket(_HANDSHAKE_FAILED)
    req_id = uuid.uuid4().hex[:12]
    deadline = time.monotonic() + timeout_s
    try:
        sock.connect(endpoint)
        try:
            sock.send_multipart(
                encode("command", {"id": req_id, "command": command, "args": args or {}})
            )
        except zmq.Again as exc:  # no connection came up (a refused key looks the same)
            raise CtlError(_no_reply(endpoint, timeout_s, monitor, "could not send to")) from exc
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0 or not sock.poll(left_ms):
                raise CtlError(_no_reply(endpoint, timeout_s, monitor))
            try:
                msg = decode(
                    sock.recv_multipart(),
                    max_bytes=REPLY_MAX_BYTES,
                    max_header_bytes=REPLY_MAX_BYTES,
                )
            except WireError as exc:
                raise CtlError(f"malformed reply: {exc}") from exc
            if msg.header.get("id") in (req_id, None):
                return msg.header
    finally:
        if monitor is not None:
            sock.disable_monitor()
            monitor.close(0)
        sock.close(0)


def _no_reply(
    endpoint: str,
    timeout_s: float,
    monitor: zmq.Socket[bytes] | None,
    what: str = "no reply from",
) -> str:
    if monitor is not None and monitor.poll(0):
        event = recv_monitor_message(monitor)
        if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return (
                f"{endpoint} refused our key (CURVE authentication failed): add this client's "
                "public key to the daemon's sockets.curve_clients_dir"
            )
        return f"CURVE handshake with {endpoint} failed: check --server-key and --client-key"
    return f"{what} {endpoint} within {timeout_s} s"


def format_reply(command: str, reply: dict[str, Any]) -> str:
    """Human-readable rendering of a reply."""
    if not reply.get("ok"):
        err = reply.get("error", {})
        return f"error [{err.get('code')}]: {err.get('message')}"
    cls = COMMANDS.get(command, Command)  # each command renders its own result
    return cls.render(reply.get("result", {}))


def help_text() -> str:
    """Every command's usage, help line and argument rules (from the command classes)."""
    blocks = []
    for c in COMMANDS.values():
        lines = [c.usage(), f"    {c.help().splitlines()[0]}"]
        for p in c.params:
            longest = f", at most {p.max_chars} characters" if p.max_chars > 64 else ""
            lines.append(f"    {p.name}: {p.rule}{longest}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
