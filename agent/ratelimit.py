"""Token buckets for the command socket: one per client identity, plus one for all clients.

Pure logic (a clock is passed in). A request costs one token from its client's bucket and
one from the shared bucket; with either empty it is refused. Buckets refill continuously at
their rate up to their burst. The number of client buckets kept is bounded: the least
recently seen client is forgotten first (it comes back with a full bucket).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class TokenBucket:
    """``tokens`` refill at ``rate`` per second up to ``burst``; ``take`` spends one."""

    rate: float
    """Tokens added per second."""
    burst: float
    """Most tokens held (and the starting amount)."""
    tokens: float
    """Tokens available at time ``stamp``."""
    stamp: float
    """Clock reading of the last update."""

    def take(self, now: float) -> bool:
        """Spend one token if there is one; returns whether the request may go on."""
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def give_back(self) -> None:
        """Return a token taken for a request that another bucket refused."""
        self.tokens = min(self.burst, self.tokens + 1.0)


class RateLimiter:
    """Per-client and total token buckets; ``rate <= 0`` turns that limit off."""

    def __init__(
        self,
        per_client_rate: float,
        per_client_burst: int,
        total_rate: float,
        total_burst: int,
        clock: Callable[[], float],
        max_clients: int = 1024,
    ) -> None:
        self._rate, self._burst = per_client_rate, float(per_client_burst)
        self._clock = clock
        self._clients: OrderedDict[bytes, TokenBucket] = OrderedDict()
        self._max_clients = max_clients
        now = clock()
        self._total = (
            TokenBucket(total_rate, float(total_burst), float(total_burst), now)
            if total_rate > 0
            else None
        )
        self.refused = 0
        """Requests refused so far."""

    def allow(self, client: bytes) -> bool:
        """Whether one more request from ``client`` may be served now (spends its tokens)."""
        now = self._clock()
        bucket: TokenBucket | None = None
        if self._rate > 0:
            bucket = self._clients.get(client)
            if bucket is None:
                bucket = TokenBucket(self._rate, self._burst, self._burst, now)
                self._clients[client] = bucket
                if len(self._clients) > self._max_clients:
                    self._clients.popitem(last=False)
            else:
                self._clients.move_to_end(client)
            if not bucket.take(now):
                self.refused += 1
                return False
        if self._total is not None and not self._total.take(now):
            if bucket is not None:
                bucket.give_back()
            self.refused += 1
            return False
        return True

    @property
    def clients(self) -> int:
        """Client buckets currently kept."""
        return len(self._clients)
