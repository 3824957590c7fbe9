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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent import lifecycle as lc
from agent import loads
from agent.command_base import (
    MAX_ID_CHARS,
    NAME_PATTERN,
    NAME_RULE,
    REQUEST_FIELDS,
    AgentControl,
    Command,
    CommandError,
    ControlCore,
    Param,
    name_param,
    operator_error,
)
from agent.race_view import race_lines
from agent.wire import MAX_MESSAGE_BYTES, WireError, decode, encode, peek_field

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


def _queued(ticket: int, **fields: Any) -> dict[str, Any]:
    return {**fields, "queued": True, "ticket": ticket}


class Status(Command):
    """Lifecycle phase, condition, active policy, probation, detector, pause state and counters.

    Args: none. Result: {"phase", "condition", "policy", "last_good", "paused", "actuating",
    "grasps", "detector", "probation", "storage", "pending_commands", "last_command", ...}.
    Answered at once, also while a grasp is in flight (a snapshot the control thread
    publishes after every grasp and every change).
    """

    name = "status"

    def run(self, agent: AgentControl, args: dict[str, str]) -> dict[str, Any]:
        return agent.snapshot()

    @classmethod
    def render(cls, result: dict[str, Any]) -> str:
        """The usual ``key: value`` lines; the race as standings, one line per arm."""
        race = result.get("race")
        text = super().render({k: v for k, v in result.items() if k != "race"})
        return text + "\n" + "\n".join(race_lines(race)) if isinstance(race, dict) else text


class MarkCondition(Command):
    """Declare that the world changed: start exploring condition NAME with an optional note.

    NAME: 1-64 characters from [A-Za-z0-9._-], starting with a letter or digit, no "..".
    Args: {"name": str, "note": str?}. Result: {"condition", "queued": true, "ticket",
    "then"}; applied between grasps (event agent.command with the ticket). "then" says what
    follows: N grasps explored and exported, then a fine-tune job sent to the trainer, or,
    with no trainer configured, the export kept on disk and serving resumed.
    """

    name = "mark-condition"
    params = (name_param("name"), Param("note", required=False))

    def run(self, agent: AgentControl, args: dict[str, str]) -> dict[str, Any]:
        name, note = args["name"], args.get("note", "")
        try:
            lc.check_condition_name(name)
        except ValueError as exc:
            raise CommandError("bad_args", str(exc)) from exc
        if name == agent.snapshot().get("condition") or agent.queries.condition(name):
            raise CommandError("conflict", f"condition {name!r} already exists; pick a new name")

        def change(core: ControlCore) -> dict[str, Any]:
            s = core.step(lc.MarkCondition(name, note, "operator"))
            return {"condition": s.condition, "phase": s.phase.value}

        return _queued(agent.enqueue(self.name, change), condition=name, then=_then(agent))


def _then(agent: AgentControl) -> str:
    """What a new condition leads to, for the mark-condition reply."""
    snap = agent.snapshot()
    explore = f"explores {snap.get('explore_target', '?')} grasps with the serving policy, "
    trainer = (snap.get("endpoints") or {}).get("trainer")
    if trainer:
        return explore + f"exports them and sends a fine-tune job to the trainer at {trainer}"
    return explore + (
        "exports them and keeps the export on disk (robot-trainer finetune can use it): no "
        "trainer is configured ([trainer] endpoint), so no fine-tune job can be sent; then "
        "it serves on with the same policy"
    )


class Finetune(Command):
    """Submit a fine-tune job for the current condition now (its grasps are exported).

    Args: none. Result: {"queued": true, "ticket"}; the job appears as an agent.job event
    ("queued", with its export) once the export is written off the control thread.
    """

    name = "finetune"

    def run(self, agent: AgentControl, args: dict[str, str]) -> dict[str, Any]:
        snap = agent.snapshot()
        if snap.get("phase") == lc.Phase.TRAINING.value:
            raise CommandError("conflict", f"a fine-tune job ({snap.get('job')}) is in flight")
        if not snap.get("policy"):
            raise CommandError("conflict", "no active policy to fine-tune")

        def change(core: ControlCore) -> dict[str, Any]:
            s = core.step(lc.Finetune())
            return {"job": s.job, "phase": s.phase.value}

        return _queued(agent.enqueue(self.name, change))


class Pause(Command):
    """Stop actuating after the current grasp (commands keep working).

    Args: {"reason": str?}. Result: {"paused": true, "queued": true, "ticket"}.
    """

    name = "pause"
    params = (Param("reason", required=False, max_chars=256),)

    def run(self, agent: AgentControl, args: dict[str, str]) -> dict[str, Any]:
        reason = args.get("reason", "operator") or "operator"

        def change(core: ControlCore) -> dict[str, Any]:
            core.set_paused(True, reason)
            return {"paused": True}

        return _queued(agent.enqueue(self.name, change), paused=True)


class Resume(Command):
    """Resume grasping after a pause.

    Args: none. Result: {"paused": false, "queued": true, "ticket"}.
    """

    name = "resume"

    def run(self, agent: AgentControl, args: dict[str, str]) -> dict[str, Any]:
        def change(core: ControlCore) -> dict[str, Any]:
            core.set_paused(False, "")
            return {"paused": False}

        return _queued(agent.enqueue(self.name, change), paused=False)


class Policies(Command):
    """List every policy the agent knows: id, parent, status, condition, reason, times.

    Args: none. Result: {"active", "last_good", "policies": [...]}.
    """

    name = "policies"

    def run(self, agent: AgentControl, args: dict[str, str]) -> dict[str, Any]:
        snap = agent.snapshot()
        return {
            "active": snap.get("policy"),
            "last_good": snap.get("last_good"),
            "policies": agent.queries.policies(),
        }

    @classmethod
    def render(cls, result: dict[str, Any]) -> str:
        lines = [f"{'id':<18}{'parent':<18}{'status':<10}reason"]
        for p in result.get("policies", []):
            lines.append(
                f"{p['id']:<18}{p.get('parent_id') or '-':<18}{p['status']:<10}"
                f"{p.get('reason') or ''}"
            )
        return "\n".join(lines)


class Rollback(Command):
    """Go back to earlier policy ID (one that served before); no probation.

    Loaded off the control thread unless it is kept warm, swapped between grasps.
    Args: {"id": str}. Result: {"loading": id, "queued": true, "ticket"}.
    """

    name = "rollback"
    params = (name_param("id"),)

    def run(self, agent: AgentControl, args: dict[str, str]) -> dict[str, Any]:
        pid = args["id"].strip()
        row = agent.queries.policy(pid) if pid else None
        if row is None:
            raise CommandError("not_found", f"unknown policy {pid!r}")
        if row["status"] not in ("retired", "active"):
            raise CommandError(
                "conflict",
                f"policy {pid} is {row['status']}; only a policy that served before (retired) "
                "can be rolled back to",
            )
        if pid == agent.snapshot().get("policy"):
            raise CommandError("conflict", f"policy {pid} is already active")
        path = Path(row["path"])
        return _switch(agent, self.name, pid, path, lc.Rollback(pid), loads.Rollback(), known=True)


class Promote(Command):
    """Serve policy ID (a known id, or a bundle directory to import) from the next grasp on.

    The promoted policy is on probation against the one it replaces (automatic rollback
    if it is significantly worse). Args: {"id": str}. Result: {"loading": id, "queued":
    true, "ticket"}.
    """

    name = "promote"
    params = (
        Param(
            "id",
            pattern=rf"{NAME_PATTERN}|/[^\x00-\x1f\x7f]{{0,4095}}",
            rule=f"a policy id ({NAME_RULE}) or an absolute bundle directory path",
            max_chars=4096,
        ),
    )

    def run(self, agent: AgentControl, args: dict[str, str]) -> dict[str, Any]:
        pid = args["id"].strip()
        if not pid:
            raise CommandError("bad_args", "promote: id must not be empty")
        row = agent.queries.policy(pid)
        if row is not None:
            source = Path(row["path"])
            if row["status"] == "rejected":
                raise CommandError("conflict", f"policy {pid} was rejected: {row['reason']}")
            if pid == agent.snapshot().get("policy"):
                raise CommandError("conflict", f"policy {pid} is already active")
        elif Path(pid).is_absolute() and Path(pid).is_dir():
            source = Path(pid)
        else:
            raise CommandError(
                "not_found",
                f"unknown policy {pid!r} (neither a known id nor an absolute bundle directory)",
            )
        known = row is not None
        return _switch(agent, self.name, pid, source, lc.Promote(pid), loads.Promote(), known)


def _switch(
    agent: AgentControl,
    command: str,
    pid: str,
    source: Path,
    event: lc.Promote | lc.Rollback,
    load: loads.OperatorLoad,
    known: bool,
) -> dict[str, Any]:
    """Queue the switch to policy ``pid`` for the control thread: a known policy kept warm is
    swapped in at once (``event``); any other is loaded from ``source`` off the control thread
    first (``load`` says what its arrival does)."""

    def change(core: ControlCore) -> dict[str, Any]:
        if known and core.warm(pid):
            core.step(event)
            return {"policy": pid, "swapped": True}
        core.load(source, load)
        return {"loading": pid}

    return _queued(agent.enqueue(command, change), loading=pid)


class Stats(Command):
    """Success counts and rates per condition, policy and mode; decision latency percentiles.

    Args: none. Result: {"table": [...], "latency_ms": {...}, "grasps"}. Runs on the
    command thread's own connection, from running totals (the same cost at any log size).
    """

    name = "stats"

    def run(self, agent: AgentControl, args: dict[str, str]) -> dict[str, Any]:
        lat = np.asarray(agent.latencies_ms(), dtype=np.float64)
        pct = (
            {f"p{q}": round(float(np.percentile(lat, q)), 3) for q in (50, 90, 99)}
            if lat.size
            else {}
        )
        return {
            "table": agent.queries.stats(),
            "latency_ms": {**pct, "n": int(lat.size)},
            "grasps": agent.snapshot().get("grasps", 0),
        }

    @classmethod
    def render(cls, result: dict[str, Any]) -> str:
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


COMMANDS: dict[str, type[Command]] = {
    c.name: c
    for c in (Status, MarkCondition, Finetune, Pause, Resume, Policies, Rollback, Promote, Stats)
}


def error_reply(req_id: Any, code: str, message: str) -> dict[str, Any]:
    """The reply header of a failed request (``code`` from :data:`agent.wire.ERROR_CODES`)."""
    return {"id": req_id, "ok": False, "error": {"code": code, "message": message}}


def _valid_id(req_id: Any) -> bool:
    if req_id is None:
        return True
    if isinstance(req_id, str):
        return len(req_id) <= MAX_ID_CHARS
    return type(req_id) is int and abs(req_id) < 2**53


def check_request(header: dict[str, Any]) -> tuple[type[Command], dict[str, str]] | dict[str, Any]:
    """Parse a request header against the command schemas: (class, args) or an error reply."""
    req_id = header.get("id")
    if not _valid_id(req_id):
        return error_reply(
            None, "bad_request", f"field 'id' must be a string of <= {MAX_ID_CHARS} or an integer"
        )
    unknown = sorted(set(header) - REQUEST_FIELDS)
    if unknown:
        return error_reply(req_id, "bad_request", f"unknown header field {unknown[0][:64]!r}")
    name = header.get("command")
    if not isinstance(name, str):
        return error_reply(req_id, "bad_request", "field 'command' must be a string")
    cls = COMMANDS.get(name)
    if cls is None:
        return error_reply(
            req_id,
            "unknown_command",
            f"unknown command {name[:64]!r}; known: {', '.join(COMMANDS)}",
        )
    args = header.get("args", {})
    if not isinstance(args, dict):
        return error_reply(req_id, "bad_args", "field 'args' must be an object")
    extra = sorted(set(args) - {p.name for p in cls.params})
    if extra:
        return error_reply(req_id, "bad_args", f"{name}: unknown argument {extra[0][:64]!r}")
    for p in cls.params:
        if p.name not in args:
            if p.required:
                return error_reply(req_id, "bad_args", f"{name}: missing argument {p.name!r}")
            continue
        problem = p.check(name, args[p.name])
        if problem:
            return error_reply(req_id, "bad_args", problem)
    return cls, args


def handle(agent: AgentControl, header: dict[str, Any]) -> dict[str, Any]:
    """Run one decoded request header; always returns a reply header."""
    parsed = check_request(header)
    if isinstance(parsed, dict):
        return parsed
    cls, args = parsed
    req_id, name = header.get("id"), cls.name
    try:
        result = cls().run(agent, args)
    except Exception as exc:
        known = operator_error(exc)
        if known is None:
            log.exception("command %s failed", name)
            known = "internal", f"{type(exc).__name__}: {exc}"
        return error_reply(req_id, *known)
    return {"id": req_id, "ok": True, "result": result}


REPLY_MAX_BYTES = MAX_MESSAGE_BYTES
"""Cap on a reply, header included (a long policy list must not hit the 64 KiB request cap)."""


def dispatch(agent: AgentControl, frames: Sequence[bytes], max_bytes: int) -> list[bytes]:
    """Decode a request, run it, encode the reply. Never raises for a bad request."""
    try:
        reply = _reply_header(agent, frames, max_bytes)
    except Exception as exc:  # a bug, never the client's doing: still answer
        log.exception("dispatch failed")
        reply = error_reply(None, "internal", f"{type(exc).__name__}: {exc}")
    try:
        return encode("reply", reply, max_bytes=REPLY_MAX_BYTES, max_header_bytes=REPLY_MAX_BYTES)
    except WireError as exc:  # e.g. a result too large or not JSON-serialisable
        return encode("reply", error_reply(reply.get("id"), exc.code, exc.message))


def _reply_header(agent: AgentControl, frames: Sequence[bytes], max_bytes: int) -> dict[str, Any]:
    try:
        msg = decode(frames, max_bytes=max_bytes)
    except WireError as exc:  # echo the request's id when it can be read (bad_version)
        req_id = peek_field(frames, "id") if exc.code != "too_large" else None
        return error_reply(req_id if _valid_id(req_id) else None, exc.code, exc.message)
    req_id = msg.header.get("id")
    if not _valid_id(req_id):
        req_id = None
    if msg.type != "command":
        return error_reply(req_id, "bad_type", f"expected type 'command', got {msg.type[:64]!r}")
    if msg.arrays:
        return error_reply(req_id, "bad_request", "commands take no arrays")
    return handle(agent, msg.header)
