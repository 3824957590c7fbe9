"""The daemon's event topics: one name per kind of event on the PUB socket and in the
``events`` table (the two carry the same set; docs/agent.md lists each payload).

A :class:`Topic` is a ``str``, so it compares equal to the literal and is written and
sent as its value.
"""

from __future__ import annotations

from enum import StrEnum


class Topic(StrEnum):
    GRASP = "agent.grasp"
    """A grasp was committed to the log (published only: the grasps table holds it)."""
    JOB = "agent.job"
    """A fine-tune job's status changed."""
    ALARM = "agent.alarm"
    """A success drop, a failed job, a policy taken out of service, a full disk."""
    CONDITION = "agent.condition"
    """A new condition was marked."""
    ERROR = "agent.error"
    """An unexpected error (with its traceback)."""
    COMMAND = "agent.command"
    """The reply to a queued operator command."""
    DRIVER = "agent.driver"
    """The driver went down or came back."""
    STORAGE = "agent.storage"
    """The held writes were flushed once the disk had space again."""
    PAUSED = "agent.paused"
    RESUMED = "agent.resumed"
    POLICY_REJECTED = "agent.policy.rejected"
    POLICY_SWAPPED = "agent.policy.swapped"
    POLICY_ROLLED_BACK = "agent.policy.rolled_back"
    POLICY_PROBATION = "agent.policy.probation"
    """A probation verdict on the active policy."""
    RACE = "agent.race"
    """A race of trained children against their parent: started, eliminated, decided, abandoned."""
    ROUND = "agent.round"
    """Learning in rounds under a condition: a round started, collecting for the next, ended."""
