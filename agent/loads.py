"""What a policy load is for: the arrival of a loaded bundle means something different for
each kind of request (pure data; :class:`agent.policies.PolicySlot` acts on it).

Light on purpose: the commands (and the ``ctl`` client, which imports them for its help)
name a load without importing ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Initial:
    """The configured first policy (``policy.bundle``), with nothing served yet."""

    purpose: ClassVar[str] = "initial"


@dataclass(frozen=True)
class Promote:
    """An operator's ``promote``: on probation against the active policy."""

    purpose: ClassVar[str] = "promote"


@dataclass(frozen=True)
class Rollback:
    """An operator's ``rollback`` to a policy that served before: trusted."""

    purpose: ClassVar[str] = "rollback"


@dataclass(frozen=True)
class Trained:
    """The trainer's result for ``job`` (None: whatever job the lifecycle waits for)."""

    job: int | None
    purpose: ClassVar[str] = "trained"


@dataclass(frozen=True)
class Warm:
    """A reload of a stored policy the lifecycle names (active or fallback)."""

    purpose: ClassVar[str] = "warm"


LoadRequest = Initial | Promote | Rollback | Trained | Warm
OperatorLoad = Promote | Rollback
"""The loads an operator's command may ask for."""
