"""What an operator command is: its argument schema, its base class, what it may act on.

:class:`Command` (name, ``params``, ``run``) with :class:`Param` schemas checked before a
command runs; :class:`AgentControl`, the daemon as a command sees it (the command thread's
snapshot and queries, and a queue of changes); :class:`ControlCore`, what a queued
:data:`Change` may do on the control thread; :class:`CommandError`, the domain errors that
become operator error replies. The commands themselves are :mod:`agent.commands`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from agent import lifecycle as lc
from agent.diskfull import is_disk_full
from agent.loads import OperatorLoad
from plumbing.names import SAFE_NAME_NO_DOTDOT, SAFE_NAME_RULE

if TYPE_CHECKING:
    from agent.queries import Queries


class CommandError(Exception):
    """A command failed in a way the operator should see; ``code`` is stable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def operator_error(exc: Exception) -> tuple[str, str] | None:
    """The error code and message an operator gets for a domain exception: the command's
    own :class:`CommandError`, ``conflict`` for a lifecycle refusal, ``storage_full`` for a
    full disk. None for anything else: a bug, answered ``internal`` and logged with its
    traceback by the caller."""
    if isinstance(exc, CommandError):
        return exc.code, exc.message
    if isinstance(exc, lc.LifecycleError):
        return "conflict", str(exc)
    if is_disk_full(exc):
        return "storage_full", str(exc)
    return None


class AgentControl(Protocol):
    """What commands need from the daemon, on the command thread (never the control thread).

    Read-only commands answer from :meth:`snapshot` and :attr:`queries` (the
    command thread's own read-only SQLite connection). A command that changes
    something checks what it can here, then hands a ``change`` to
    :meth:`enqueue`: the control thread applies it between two grasps, and its
    outcome is published (and recorded) as an ``agent.command`` event.
    """

    def snapshot(self) -> dict[str, Any]: ...
    @property
    def queries(self) -> Queries: ...
    def latencies_ms(self) -> list[float]: ...
    def enqueue(self, command: str, change: Change) -> int: ...


class ControlCore(Protocol):
    """What a queued change may do, on the control thread between grasps."""

    @property
    def state(self) -> lc.State: ...
    def step(self, event: lc.Event) -> lc.State: ...
    def load(self, source: Path, request: OperatorLoad) -> None: ...
    def warm(self, policy_id: str) -> bool: ...
    def set_paused(self, paused: bool, reason: str) -> None: ...


Change = Callable[[ControlCore], dict[str, Any]]


NAME_PATTERN = SAFE_NAME_NO_DOTDOT
"""A condition name or a policy id: 1-64 of [A-Za-z0-9._-], starting alphanumeric, no "..";
safe as a single directory name under data_dir."""
NAME_RULE = f"{SAFE_NAME_RULE}, no '..'"
TEXT_PATTERN = r"[^\x00-\x08\x0a-\x1f\x7f]*"
"""Free text (notes, reasons): anything but control characters (tab allowed)."""
REQUEST_FIELDS = frozenset({"id", "command", "args"})
"""Header fields a command request may carry (besides "v" and "type")."""
MAX_ID_CHARS = 128
"""Longest string request id echoed back."""


@dataclass(frozen=True)
class Param:
    """One argument of a command: every argument is a JSON string checked against this."""

    name: str
    """Argument name (the key in "args"; its position on the ctl command line)."""
    required: bool = True
    """Whether the request must carry it."""
    pattern: str = TEXT_PATTERN
    """Regular expression the whole value must match."""
    rule: str = "text without control characters"
    """The pattern in words, for error messages and help."""
    max_chars: int = 1024
    """Longest value accepted."""

    def check(self, command: str, value: Any) -> str | None:
        """None if ``value`` is acceptable, else the ``bad_args`` message."""
        if not isinstance(value, str):
            return f"{command}: argument {self.name!r} must be a string"
        if len(value) > self.max_chars:
            return f"{command}: argument {self.name!r} is longer than {self.max_chars} characters"
        if not re.fullmatch(self.pattern, value):
            return f"{command}: argument {self.name!r} = {value[:80]!r}: expected {self.rule}"
        return None


def name_param(name: str) -> Param:
    """A required name/id argument (NAME_PATTERN)."""
    return Param(name, True, NAME_PATTERN, NAME_RULE, 64)


class Command:
    """Base class: ``name``, positional ``params`` (argument schemas) and ``run``."""

    name: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()

    def run(self, agent: AgentControl, args: dict[str, str]) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def render(cls, result: dict[str, Any]) -> str:
        """The result for a person (``robot-agent ctl``): one ``key: value`` line each."""
        return "\n".join(
            f"{k}: {json.dumps(v) if isinstance(v, dict | list) else v}" for k, v in result.items()
        )

    @classmethod
    def help(cls) -> str:
        return (cls.__doc__ or "").strip()

    @classmethod
    def usage(cls) -> str:
        ps = " ".join(p.name if p.required else f"[{p.name}]" for p in cls.params)
        return f"{cls.name} {ps}".strip()
