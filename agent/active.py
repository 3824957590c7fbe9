"""The warm policies: the one being served and the fallback, by id (control thread only).

Which policy is active is decided by the lifecycle state (``State.policy``);
this module only holds the warmed :class:`agent.policy.Policy` objects, so that
a swap, a rollback after a failed probation or after a run-time fault is a
change of reference between two grasps and never waits on a load.
"""

from __future__ import annotations

from agent.policy import Policy


class WarmPolicies:
    """Warmed policies keyed by id; keeps what :meth:`keep` names, drops the rest."""

    def __init__(self) -> None:
        self._by_id: dict[str, Policy] = {}

    def get(self, policy_id: str | None) -> Policy | None:
        """The warmed policy with this id, or None (not loaded yet, or dropped)."""
        return None if policy_id is None else self._by_id.get(policy_id)

    def __contains__(self, policy_id: object) -> bool:
        return policy_id in self._by_id

    def put(self, policy: Policy) -> None:
        self._by_id[policy.id] = policy

    def drop(self, policy_id: str) -> None:
        self._by_id.pop(policy_id, None)

    def keep(self, *policy_ids: str | None) -> None:
        """Drop every policy not named (the active one and the fallback are kept warm)."""
        wanted = {p for p in policy_ids if p}
        for pid in [p for p in self._by_id if p not in wanted]:
            del self._by_id[pid]

    @property
    def ids(self) -> list[str]:
        return sorted(self._by_id)
