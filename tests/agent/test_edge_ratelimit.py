"""Size and rate limits on the command socket: token buckets per client and in total."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import zmq
import zmq.auth

from agent.commands import dispatch
from agent.config import SocketsConfig, config_from_dict
from agent.ratelimit import RateLimiter, TokenBucket
from agent.transport import CommandLimits, CommandServer, Security
from agent.wire import decode, encode
from plumbing.config_loader import ConfigError
from plumbing.curve import ClientKeys
from testkit.edge_fakes import RecordingControl, ServerThread, dealer

pytestmark = pytest.mark.timeout(60)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_token_bucket_spends_and_refills() -> None:
    b = TokenBucket(rate=2.0, burst=3.0, tokens=3.0, stamp=0.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.take(0.5) and not b.take(0.5)  # 0.5 s at 2/s: one token
    assert [b.take(100.0) for _ in range(4)] == [True, True, True, False]  # capped at burst


def test_rate_limiter_isolates_clients_and_caps_the_total() -> None:
    clock = Clock()
    rl = RateLimiter(1.0, 2, 10.0, 3, clock, max_clients=2)
    assert [rl.allow(b"a") for _ in range(3)] == [True, True, False]
    assert rl.allow(b"b") and not rl.allow(b"b")  # total burst 3 spent: b's 2nd refused
    clock.t += 0.1  # total refills 1 token, clients none
    assert not rl.allow(b"a") and rl.allow(b"c")
    assert rl.clients == 2  # least recently seen client forgotten
    assert rl.refused == 3
    off = RateLimiter(0.0, 1, 0.0, 1, clock)
    assert all(off.allow(bytes([i % 7])) for i in range(1000)) and off.clients == 0


def test_total_refusal_gives_the_client_token_back() -> None:
    clock = Clock()
    rl = RateLimiter(0.001, 2, 1000.0, 1, clock)
    assert rl.allow(b"a") and not rl.allow(b"a")  # the second refused by the total bucket
    clock.t += 0.01  # the total bucket refills; the client's would not have
    assert rl.allow(b"a")  # so this token is the one given back


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"command_rate_per_s": -1}, "sockets.command_rate_per_s"),
        ({"command_burst": 0}, "sockets.command_burst"),
        ({"command_total_burst": 0}, "sockets.command_total_burst"),
        ({"max_frame_bytes": 2048, "max_message_bytes": 4096}, "sockets.max_frame_bytes"),
    ],
)
def test_limit_config_is_validated(raw: dict[str, int], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        config_from_dict({"sockets": raw})


def _serve_until_quiet(server: CommandServer, control: RecordingControl) -> int:
    def handle(frames: Sequence[bytes]) -> list[bytes]:
        return dispatch(control, frames, server.max_bytes)

    served, idle = 0, 0
    while idle < 5:
        n = server.serve(handle, 20)
        served += n
        idle = 0 if n else idle + 1
    return served


def _codes(sock: zmq.Socket[bytes], n: int) -> list[str]:
    out = []
    for _ in range(n):
        h = decode(sock.recv_multipart()).header
        out.append("ok" if h["ok"] else h["error"]["code"])
    return out


def test_excess_requests_get_rate_limited_per_client_and_in_total() -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    clock = Clock()
    limits = CommandLimits(
        command_rate_per_s=1.0,
        command_burst=5,
        command_total_rate_per_s=100.0,
        command_total_burst=8,
        command_read_rate_per_s=0.0,  # the clock is frozen: no read budget would come back
    )
    server = CommandServer(ctx, "tcp://127.0.0.1:*", 4096, limits, clock=clock)
    ep = server.bind(Security(SocketsConfig()))
    control = RecordingControl()
    a, b = dealer(ctx, ep), dealer(ctx, ep)
    for i in range(50):
        a.send_multipart(encode("command", {"id": i, "command": "status"}))
    _serve_until_quiet(server, control)
    codes = _codes(a, 50)
    assert codes.count("ok") == 5 and codes.count("rate_limited") == 45
    for i in range(10):
        b.send_multipart(encode("command", {"id": i, "command": "status"}))
    _serve_until_quiet(server, control)
    assert _codes(b, 10).count("ok") == 3  # the total bucket (8) had 3 left
    assert control.count() == 8 and server.counts["rate_limited"] == 52
    clock.t += 2.0  # a refills 2 tokens
    for i in range(3):
        a.send_multipart(encode("command", {"id": i, "command": "status"}))
    _serve_until_quiet(server, control)
    assert _codes(a, 3) == ["ok", "ok", "rate_limited"]
    for s in (a, b):
        s.close(0)
    server.close()
    ctx.term()


def test_reconnecting_does_not_evade_the_limit_under_curve(tmp_path: Path) -> None:
    zmq.auth.create_certificates(tmp_path, "server")
    (tmp_path / "clients").mkdir()
    zmq.auth.create_certificates(tmp_path / "clients", "alice")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sec = Security(
        SocketsConfig(
            curve_server_secret=str(tmp_path / "server.key_secret"),
            curve_clients_dir=str(tmp_path / "clients"),
        )
    )
    sec.start(ctx)
    limits = CommandLimits(
        command_rate_per_s=1.0,
        command_burst=4,
        command_total_rate_per_s=0,
        command_read_rate_per_s=0,
    )
    server = CommandServer(ctx, "tcp://127.0.0.1:*", 4096, limits, clock=Clock())
    ep = server.bind(sec)
    keys = ClientKeys.load(
        str(tmp_path / "clients" / "alice.key_secret"), str(tmp_path / "server.key")
    )
    control = RecordingControl()
    socks = []
    for _ in range(3):  # three connections, one key: one bucket
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVTIMEO, 5000)
        keys.apply(s)
        s.connect(ep)
        for i in range(4):
            s.send_multipart(encode("command", {"id": i, "command": "status"}))
        socks.append(s)
    deadline = time.monotonic() + 10
    while server.counts["received"] < 12:
        assert time.monotonic() < deadline
        _serve_until_quiet(server, control)
    codes = [c for s in socks for c in _codes(s, 4)]
    assert codes.count("ok") == 4 and codes.count("rate_limited") == 8
    assert control.count() == 4
    for s in socks:
        s.close(0)
    server.close()
    sec.stop()
    ctx.term()


def test_a_flood_is_read_at_the_read_rate_and_the_operator_still_gets_through() -> None:
    """1,500 requests queued at once by 5 clients: read at <= 300/s in batches, each serve()
    call reading <= 32; an operator's request sent mid-flood is answered within a second.
    (300/s rather than the default 100/s keeps the test short; the rule is the same.)"""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    control = RecordingControl()
    limits = CommandLimits(command_read_rate_per_s=300.0, command_total_rate_per_s=200.0)
    srv = ServerThread(ctx, Security(SocketsConfig()), control, limits=limits)
    ep = srv.start()
    clients = [dealer(ctx, ep) for _ in range(5)]
    t0 = time.monotonic()
    for s in clients:
        for i in range(300):
            s.send_multipart(encode("command", {"id": i, "command": "status"}))
    time.sleep(1.0)
    operator = dealer(ctx, ep)
    t_op = time.monotonic()
    operator.send_multipart(encode("command", {"id": "op", "command": "status"}))
    op_reply = decode(operator.recv_multipart()).header
    op_latency = time.monotonic() - t_op
    codes = [c for s in clients for c in _codes(s, 300)]
    elapsed = time.monotonic() - t0
    srv.stop()
    counts = srv.server.counts
    assert op_reply["ok"] and op_reply["id"] == "op" and op_latency < 1.0, op_latency
    assert counts["received"] == 1501 and len(codes) == 1500
    assert elapsed >= (1501 - 64) / 300 * 0.9, elapsed  # the read rate held
    assert max(srv.per_call) <= 32
    executed = control.count()
    assert executed == 1501 - counts["rate_limited"] == codes.count("ok") + 1
    assert 5 * 40 <= executed <= 5 * 40 + 5 * 20 * elapsed + 1  # bursts plus refill
    for s in [*clients, operator]:
        s.close(0)
    ctx.term()
