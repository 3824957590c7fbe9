"""Bounded reads of a ROUTER socket (real ZeroMQ on loopback)."""

from __future__ import annotations

import time

import zmq

from plumbing.router import waiting


def test_waiting_reads_at_most_the_limit_and_never_blocks() -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    srv = ctx.socket(zmq.ROUTER)
    srv.setsockopt(zmq.LINGER, 0)
    port = srv.bind_to_random_port("tcp://127.0.0.1")
    cli = ctx.socket(zmq.DEALER)
    cli.setsockopt(zmq.LINGER, 0)
    cli.connect(f"tcp://127.0.0.1:{port}")
    for i in range(5):
        cli.send(b"%d" % i)
    assert srv.poll(2000)
    deadline = time.monotonic() + 2.0
    got: list[list[bytes]] = []
    while len(got) < 3 and time.monotonic() < deadline:
        got += list(waiting(srv, limit=3 - len(got)))
    assert [m[1] for m in got] == [b"0", b"1", b"2"]  # the limit holds; order is kept
    rest: list[list[bytes]] = []
    while len(rest) < 2 and time.monotonic() < deadline:
        rest += list(waiting(srv))
    assert [m[1] for m in rest] == [b"3", b"4"]
    t0 = time.monotonic()
    assert list(waiting(srv)) == []  # nothing waiting: returns at once
    assert time.monotonic() - t0 < 0.5
    cli.close(0)
    srv.close(0)
    ctx.term()
