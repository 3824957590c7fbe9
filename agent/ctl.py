"""``robot-agent ctl``: the operator client for the command socket (DEALER, with timeouts)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import zmq

from agent.commands import COMMANDS
from agent.wire import WireError, decode, encode


class CtlError(RuntimeError):
    """The daemon did not answer in time, or answered garbage."""


def request(
    endpoint: str,
    command: str,
    args: dict[str, str] | None = None,
    timeout_s: float = 5.0,
    curve_server_public: bytes | None = None,
    curve_client_keys: tuple[bytes, bytes] | None = None,
) -> dict[str, Any]:
    """Send one command and return the reply header (``ok``, ``result`` or ``error``)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, int(timeout_s * 1000))
    sock.setsockopt(zmq.RCVTIMEO, int(timeout_s * 1000))
    if curve_server_public is not None and curve_client_keys is not None:
        sock.curve_serverkey = curve_server_public
        sock.curve_publickey, sock.curve_secretkey = curve_client_keys
    req_id = uuid.uuid4().hex[:12]
    try:
        sock.connect(endpoint)
        sock.send_multipart(
            encode("command", {"id": req_id, "command": command, "args": args or {}})
        )
        while True:
            try:
                frames = sock.recv_multipart()
            except zmq.Again as exc:
                raise CtlError(f"no reply from {endpoint} within {timeout_s} s") from exc
            try:
                msg = decode(frames)
            except WireError as exc:
                raise CtlError(f"malformed reply: {exc}") from exc
            if msg.header.get("id") in (req_id, None):
                return msg.header
    finally:
        sock.close(0)


def format_reply(command: str, reply: dict[str, Any]) -> str:
    """Human-readable rendering of a reply."""
    if not reply.get("ok"):
        err = reply.get("error", {})
        return f"error [{err.get('code')}]: {err.get('message')}"
    result = reply.get("result", {})
    if command == "stats":
        lines = [f"{'condition':<24}{'policy':<18}{'mode':<9}{'grasps':>7}{'rate':>7}"]
        for r in result.get("table", []):
            rate = r["success_rate"]
            lines.append(
                f"{r['condition']:<24}{r['policy']:<18}{r['mode']:<9}{r['grasps']:>7}"
                f"{'' if rate is None else f'{rate:.3f}':>7}"
            )
        lat = result.get("latency_ms", {})
        lines.append("decision latency ms: " + ", ".join(f"{k}={v}" for k, v in lat.items()))
        return "\n".join(lines)
    if command == "policies":
        lines = [f"{'id':<18}{'parent':<18}{'status':<10}reason"]
        for p in result.get("policies", []):
            lines.append(
                f"{p['id']:<18}{p.get('parent_id') or '-':<18}{p['status']:<10}"
                f"{p.get('reason') or ''}"
            )
        return "\n".join(lines)
    return "\n".join(
        f"{k}: {json.dumps(v) if isinstance(v, dict | list) else v}" for k, v in result.items()
    )


def help_text() -> str:
    """Every command's usage and help (from the command classes' docstrings)."""
    return "\n\n".join(f"{c.usage()}\n    {c.help().splitlines()[0]}" for c in COMMANDS.values())
