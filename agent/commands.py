"""Operator commands: one class per command, and the one dispatch function.

A request is a wire message of type ``"command"`` whose header carries
``{"id": <any JSON>, "command": "<name>", "args": {...}}``. The reply is a
message of type ``"reply"`` with ``{"id": ..., "ok": true, "result": {...}}``
or ``{"id": ..., "ok": false, "error": {"code": ..., "message": ...}}``.
Each command's docstring is its help (``robot-agent ctl help``). Dispatch never
raises: every failure becomes an error reply. Commands act on an
:class:`AgentControl`, which the daemon implements.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

from agent.lifecycle import LifecycleError
from agent.wire import WireError, decode, encode

log = logging.getLogger(__name__)


class CommandError(Exception):
    """A command failed in a way the operator should see; ``code`` is stable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class AgentControl(Protocol):
    """What commands need from the daemon (called on the control thread, between grasps)."""

    def status(self) -> dict[str, Any]: ...
    def mark_condition(self, name: str, note: str) -> dict[str, Any]: ...
    def finetune(self) -> dict[str, Any]: ...
    def pause(self, reason: str) -> dict[str, Any]: ...
    def resume(self) -> dict[str, Any]: ...
    def policies(self) -> dict[str, Any]: ...
    def rollback(self, policy_id: str) -> dict[str, Any]: ...
    def promote(self, policy_id: str) -> dict[str, Any]: ...
    def stats(self) -> dict[str, Any]: ...


class Command:
    """Base class: ``name``, positional ``params`` (name, required) and ``run``."""

    name: ClassVar[str] = ""
    params: ClassVar[tuple[tuple[str, bool], ...]] = ()

    def run(self, agent: AgentControl, args: dict[str, str]) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def help(cls) -> str:
        return (cls.__doc__ or "").strip()

    @classmethod
    def usage(cls) -> str:
        ps = " ".join(p if req else f"[{p}]" for p, req in cls.params)
        return f"{cls.name} {ps}".strip()


class Status(Command):
    """Lifecycle phase, condition, active policy, detector, pause state and counters.

    Args: none. Result: {"phase", "condition", "policy", "paused", "grasps", "detector", ...}.
    """

    name = "status"

    def run(self, agent: AgentControl, args: dict[str, str]) -> dict[str, Any]:
        return agent.status()


class MarkCondition(Command):
    """Declare that the world changed: start exploring condition NAME with an optional note.

    Args: {"name": str, "note": str?}. Result: {"condition", "phase"}.
    """

    name = "mark-condition"
    params = (("name", True), ("note", False))

    def run(self, agent: AgentControl, args: dict[str, str]) -> dict[str, Any]:
        return agent.mark_condition(args["name"], args.get("note", ""))


class Finetune(Command):
    """Submit a fine-tune job for the current condition now (exports its grasps).

    Args: none. Result: {"job", "export", "phase"}.
    """

    name = "finetune"

    def run(self, agent: AgentControl, args: dict[str, str]) -> dict[str, Any]:
        return agent.finetune()


class Pause(Command):
    """Stop actuating after the current grasp (commands keep working).

    Args: {"reason": str?}. Result: {"paused": true}.
    """

    name = "pause"
    params = (("reason", False),)

    def run(self, agent: AgentControl, args: dict[str, str]) -> dict[str, Any]:
        return agent.pause(args.get("reason", "operator"))


class Resume(Command):
    """Resume grasping after a pause.

    Args: none. Result: {"paused": false}.
    """

    name = "resume"

    def run(self, agent: AgentControl, args: dict[str, str]) -> dict[str, Any]:
        return agent.resume()


class Policies(Command):
    """List every policy the agent knows: id, parent, status, condition, times.

    Args: none. Result: {"active", "policies": [...]}.
    """

    name = "policies"

    def run(self, agent: AgentControl, args: dict[str, str]) -> dict[str, Any]:
        return agent.policies()


class Rollback(Command):
    """Go back to earlier policy ID (loaded off the control thread, swapped between grasps).

    Args: {"id": str}. Result: {"loading": id}.
    """

    name = "rollback"
    params = (("id", True),)

    def run(self, agent: AgentControl, args: dict[str, str]) -> dict[str, Any]:
        return agent.rollback(args["id"])


class Promote(Command):
    """Serve policy ID (a known id, or a bundle directory to import) from the next grasp on.

    Args: {"id": str}. Result: {"loading": id}.
    """

    name = "promote"
    params = (("id", True),)

    def run(self, agent: AgentControl, args: dict[str, str]) -> dict[str, Any]:
        return agent.promote(args["id"])


class Stats(Command):
    """Success counts and rates per condition, policy and mode; decision latency percentiles.

    Args: none. Result: {"table": [...], "latency_ms": {...}}.
    """

    name = "stats"

    def run(self, agent: AgentControl, args: dict[str, str]) -> dict[str, Any]:
        return agent.stats()


COMMANDS: dict[str, type[Command]] = {
    c.name: c
    for c in (Status, MarkCondition, Finetune, Pause, Resume, Policies, Rollback, Promote, Stats)
}


def error_reply(req_id: Any, code: str, message: str) -> dict[str, Any]:
    return {"id": req_id, "ok": False, "error": {"code": code, "message": message}}


def handle(agent: AgentControl, header: dict[str, Any]) -> dict[str, Any]:
    """Run one decoded request header; always returns a reply header."""
    req_id = header.get("id")
    name = header.get("command")
    args = header.get("args", {})
    if not isinstance(name, str):
        return error_reply(req_id, "bad_request", "field 'command' must be a string")
    cls = COMMANDS.get(name)
    if cls is None:
        return error_reply(
            req_id, "unknown_command", f"unknown command {name!r}; known: {', '.join(COMMANDS)}"
        )
    if not isinstance(args, dict):
        return error_reply(req_id, "bad_args", "field 'args' must be an object")
    allowed = {p for p, _ in cls.params}
    extra = sorted(set(args) - allowed)
    if extra:
        return error_reply(req_id, "bad_args", f"{name}: unknown argument {extra[0]!r}")
    for p, required in cls.params:
        if required and p not in args:
            return error_reply(req_id, "bad_args", f"{name}: missing argument {p!r}")
        if p in args and (not isinstance(args[p], str) or len(args[p]) > 4096):
            return error_reply(req_id, "bad_args", f"{name}: argument {p!r} must be a string")
    try:
        result = cls().run(agent, args)
    except CommandError as exc:
        return error_reply(req_id, exc.code, exc.message)
    except LifecycleError as exc:
        return error_reply(req_id, "conflict", str(exc))
    except KeyError as exc:
        return error_reply(req_id, "not_found", str(exc.args[0]) if exc.args else "not found")
    except ValueError as exc:
        return error_reply(req_id, "bad_args", str(exc))
    except Exception as exc:
        log.exception("command %s failed", name)
        return error_reply(req_id, "internal", f"{type(exc).__name__}: {exc}")
    return {"id": req_id, "ok": True, "result": result}


def dispatch(agent: AgentControl, frames: Sequence[bytes], max_bytes: int) -> list[bytes]:
    """Decode a request, run it, encode the reply. Never raises for a bad request."""
    try:
        msg = decode(frames, max_bytes=max_bytes)
    except WireError as exc:
        reply = error_reply(None, exc.code, exc.message)
    else:
        if msg.type != "command":
            reply = error_reply(
                msg.header.get("id"), "bad_type", f"expected type 'command', got {msg.type!r}"
            )
        elif msg.arrays:
            reply = error_reply(msg.header.get("id"), "bad_request", "commands take no arrays")
        else:
            reply = handle(agent, msg.header)
    try:
        return encode("reply", reply)
    except WireError as exc:  # e.g. an id that cannot be echoed
        return encode("reply", error_reply(None, exc.code, exc.message))
