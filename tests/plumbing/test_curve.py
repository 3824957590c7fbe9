"""The one CURVE rule (loopback may go bare, anything else needs keys) and the key handling,
over real ZeroMQ sockets on loopback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
import zmq.auth

from plumbing.config_loader import ConfigError
from plumbing.curve import ClientKeys, Security, is_loopback_endpoint, require_curve
from testkit.curve import Keys, make_keys


@pytest.mark.parametrize(
    ("endpoint", "loopback"),
    [
        ("tcp://127.0.0.1:5560", True),
        ("tcp://127.3.2.1:1", True),
        ("tcp://[::1]:5560", True),
        ("tcp://localhost:5560", True),
        ("ipc:///tmp/x", True),
        ("inproc://x", True),
        ("tcp://0.0.0.0:5560", False),
        ("tcp://*:5560", False),
        ("tcp://eth0:5560", False),
        ("tcp://10.0.0.2:5560", False),
    ],
)
def test_loopback_endpoints(endpoint: str, loopback: bool) -> None:
    assert is_loopback_endpoint(endpoint) is loopback


def test_the_rule_names_the_key_and_the_key_files_of_its_table() -> None:
    require_curve("service.endpoint", "tcp://127.0.0.1:1", False, server=True)
    require_curve("service.endpoint", "tcp://0.0.0.0:1", True, server=True)
    with pytest.raises(ConfigError) as ei:
        require_curve("service.endpoint", "tcp://0.0.0.0:1", False, server=True, hint="; see X")
    assert str(ei.value) == (
        "service.endpoint = 'tcp://0.0.0.0:1' is not a loopback address; binding it needs CURVE "
        "keys (set service.curve_server_secret and service.curve_clients_dir; see X), "
        "refusing to start"
    )
    with pytest.raises(ConfigError, match=r"reaching it needs .*trainer\.curve_server_public"):
        require_curve("trainer.endpoint", "tcp://10.0.0.2:1", False, server=False)


@dataclass(frozen=True)
class Server:
    endpoint: str = "tcp://127.0.0.1:0"
    curve_server_secret: str = ""
    curve_clients_dir: str = ""


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path)


def test_a_bare_server_refuses_to_start_or_bind_off_loopback() -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    with pytest.raises(ConfigError, match=r"^srv\.endpoint = 'tcp://0.0.0.0:1'"):
        Security(Server("tcp://0.0.0.0:1"), "test", table="srv").start(ctx)
    sec = Security(Server(), "test")
    sec.start(ctx)
    s = ctx.socket(zmq.ROUTER)
    with pytest.raises(ConfigError, match="binding it needs CURVE keys"):
        sec.bind(s, "tcp://0.0.0.0:*", "endpoint")
    s.close(0)
    ctx.term()


def test_a_refused_or_failed_bind_closes_its_socket() -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sec = Security(Server(), "test")
    sec.start(ctx)
    refused = ctx.socket(zmq.ROUTER)
    with pytest.raises(ConfigError):
        sec.bind(refused, "tcp://0.0.0.0:*", "endpoint")
    assert refused.closed
    taken = ctx.socket(zmq.ROUTER)
    taken.setsockopt(zmq.LINGER, 0)
    ep = sec.bind(taken, "tcp://127.0.0.1:*", "endpoint")
    second = ctx.socket(zmq.ROUTER)
    with pytest.raises(zmq.ZMQError):
        sec.bind(second, ep, "endpoint")  # address in use
    assert second.closed
    taken.close(0)
    ctx.term()  # returns: no socket was left open behind a failed bind


def test_only_an_authorised_client_is_answered(keys: Keys) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sec = Security(Server("tcp://0.0.0.0:1", keys.server_secret, keys.clients), "test")
    sec.start(ctx)  # keys set: off loopback is allowed
    assert sec.enabled and sec.client_keys == 1
    srv = ctx.socket(zmq.ROUTER)
    ep = sec.bind(srv, "tcp://127.0.0.1:*", "endpoint")
    answered = {}
    for who in (keys.client_secret, keys.stranger_secret):
        c = ctx.socket(zmq.DEALER)
        c.setsockopt(zmq.LINGER, 0)
        ClientKeys.load(who, keys.server_public).apply(c)
        c.connect(ep)
        c.send(b"ping")
        if srv.poll(1500 if who == keys.client_secret else 300):
            ident, msg = srv.recv_multipart()
            srv.send_multipart([ident, msg])
        answered[who] = bool(c.poll(1000))
        c.close(0)
    assert answered == {keys.client_secret: True, keys.stranger_secret: False}
    srv.close(0)
    sec.stop()
    ctx.term()


def test_client_keys_follow_the_rule(keys: Keys) -> None:
    assert ClientKeys.for_endpoint("x.endpoint", "tcp://127.0.0.1:1", "", "") is None
    with pytest.raises(ConfigError, match=r"x\.endpoint .*x\.curve_client_secret"):
        ClientKeys.for_endpoint("x.endpoint", "tcp://10.0.0.2:1", "", "")
    k = ClientKeys.for_endpoint(
        "x.endpoint", "tcp://10.0.0.2:1", keys.server_public, keys.client_secret
    )
    assert k is not None and len(k.server_public) == 40
    with pytest.raises(ConfigError, match="holds only a public key"):
        ClientKeys.load(keys.server_public, keys.server_public)
