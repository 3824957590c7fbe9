"""Reading a ROUTER server's socket in bounded batches (the trainer's job service, the robot
bridge).

A server loop that drains its socket dry would starve its other chores (heartbeats, the
worker, progress) under a flood; one that reads one message a poll falls behind. Both
servers read what is waiting, up to :data:`MAX_BATCH` messages, and then get on with the rest.
"""

from __future__ import annotations

from collections.abc import Iterator

import zmq

MAX_BATCH = 64
"""Messages read in one go before the loop turns to its other chores."""


def waiting(sock: zmq.Socket[bytes], limit: int = MAX_BATCH) -> Iterator[list[bytes]]:
    """Yield the multipart messages already queued on ``sock`` (never blocks), at most
    ``limit`` of them."""
    for _ in range(limit):
        try:
            yield sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
