"""CURVE + ZAP on the agent's sockets: only listed client keys execute anything."""

from __future__ import annotations

import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth

from agent.cli import main
from agent.config import SocketsConfig, config_from_dict
from agent.ctl import CtlError, request
from agent.transport import EventPublisher, Security
from agent.wire import encode
from plumbing.config_loader import ConfigError
from plumbing.curve import ClientKeys
from testkit.daemon import Running
from testkit.edge_fakes import RecordingControl, ServerThread, command_server

pytestmark = pytest.mark.timeout(60)


@dataclass
class Keys:
    root: Path
    server_secret: Path
    server_public: Path
    clients: Path
    alice: Path
    """A listed client (its .key is in clients/)."""
    mallory: Path
    """A valid key pair that is not listed."""
    other_server_public: Path
    """Another server's public key (a client pinned to it must fail)."""

    def sockets(self) -> SocketsConfig:
        """The daemon's sockets secured with the server key, admitting the listed clients."""
        return SocketsConfig(
            curve_server_secret=str(self.server_secret), curve_clients_dir=str(self.clients)
        )


def _keygen(out: Path, name: str) -> None:
    assert main(["keygen", "--out", str(out), "--name", name]) == 0


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    root = tmp_path / "curve"
    _keygen(root, "server")
    _keygen(root, "alice")
    _keygen(root, "mallory")
    _keygen(root / "other", "server")
    clients = root / "clients"
    clients.mkdir()
    (clients / "alice.key").write_bytes((root / "alice.key").read_bytes())
    return Keys(
        root,
        root / "server.key_secret",
        root / "server.key",
        clients,
        root / "alice.key_secret",
        root / "mallory.key_secret",
        root / "other" / "server.key",
    )


@pytest.fixture
def secured(keys: Keys) -> Iterator[tuple[str, RecordingControl, Security]]:
    with command_server(keys.sockets()) as (endpoint, control, _, sec):
        yield endpoint, control, sec


def test_keygen_writes_private_keys_mode_600_and_never_overwrites(keys: Keys) -> None:
    for secret in (keys.server_secret, keys.alice, keys.mallory):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        public, private = zmq.auth.load_certificate(secret)
        assert public and private
    assert stat.S_IMODE(keys.server_public.stat().st_mode) == 0o644
    before = keys.alice.read_bytes()
    assert main(["keygen", "--out", str(keys.root), "--name", "alice"]) == 2
    assert keys.alice.read_bytes() == before
    assert main(["keygen", "--out", str(keys.root), "--name", "../evil"]) == 2


def test_right_client_key_executes_commands(keys: Keys, secured: Any) -> None:
    endpoint, control, _ = secured
    k = ClientKeys.load(str(keys.alice), str(keys.server_public))
    for _ in range(5):
        assert request(endpoint, "status", timeout_s=5, keys=k)["ok"]
    assert control.count() == 5


def _attempts(
    endpoint: str, configure: Callable[[zmq.Socket[bytes]], None], n: int = 20
) -> list[bytes]:
    """Send ``n`` valid status commands from one socket; returns what came back in 1 s."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    configure(sock)
    sock.connect(endpoint)
    for i in range(n):
        try:
            sock.send_multipart(encode("command", {"id": i, "command": "status"}), zmq.NOBLOCK)
        except zmq.Again:  # the refused handshake dropped the pipe (a loaded box): none sent
            break
    got: list[bytes] = []
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        if sock.poll(50):
            got.extend(sock.recv_multipart())
    sock.close(0)
    return got


def test_clients_without_the_right_key_execute_nothing(keys: Keys, secured: Any) -> None:
    endpoint, control, _ = secured
    mallory = ClientKeys.load(str(keys.mallory), str(keys.server_public))
    alice_wrong_server = ClientKeys.load(str(keys.alice), str(keys.other_server_public))
    fresh_pub, fresh_sec = zmq.curve_keypair()
    cases: dict[str, Callable[[zmq.Socket[bytes]], None]] = {
        "no key": lambda s: None,
        "unlisted key": mallory.apply,
        "wrong server key": alice_wrong_server.apply,
        "fresh random key": lambda s: ClientKeys(fresh_pub, fresh_sec, mallory.server_public).apply(
            s
        ),
    }
    for name, configure in cases.items():
        assert _attempts(endpoint, configure) == [], name
    assert control.count() == 0  # 80 valid commands sent, none executed
    # and the listed client still gets through afterwards
    alice = ClientKeys.load(str(keys.alice), str(keys.server_public))
    assert request(endpoint, "status", timeout_s=5, keys=alice)["ok"]
    assert control.count() == 1


def _started_security(keys: Keys) -> tuple[zmq.Context[zmq.Socket[bytes]], Security]:
    """A fresh context and the daemon's CURVE security of :meth:`Keys.sockets` started on it
    (its authenticator running)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sec = Security(keys.sockets())
    sec.start(ctx)
    return ctx, sec


def test_zap_domain_is_enforced(keys: Keys) -> None:
    """A socket outside the authenticator's ZAP domain admits nobody, not even a listed key."""
    ctx, sec = _started_security(keys)
    rogue = Security(keys.sockets(), domain="elsewhere")
    rogue._keys = sec._keys  # same server keys, other domain, no authenticator of its own
    control = RecordingControl()
    srv = ServerThread(ctx, rogue, control)
    endpoint = srv.start()
    alice = ClientKeys.load(str(keys.alice), str(keys.server_public))
    assert _attempts(endpoint, alice.apply, n=5) == []
    assert control.count() == 0
    srv.stop()
    sec.stop()
    ctx.term()


def test_ctl_with_keys_end_to_end(
    keys: Keys, secured: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint, control, _ = secured
    base = ["ctl", "status", "--endpoint", endpoint, "--server-key", str(keys.server_public)]
    assert main([*base, "--client-key", str(keys.alice), "--json"]) == 0
    assert '"ok": true' in capsys.readouterr().out
    assert control.count() == 1
    assert main([*base, "--client-key", str(keys.mallory), "--timeout", "1"]) == 3
    assert "refused our key" in capsys.readouterr().err
    assert main([*base[:4], "--timeout", "1"]) == 3  # no key at all: no reply
    assert main([*base]) == 2  # --server-key without --client-key
    assert main([*base, "--client-key", str(keys.server_public)]) == 2  # a public key file
    assert control.count() == 1


def test_ctl_says_when_the_key_is_refused(keys: Keys, secured: Any) -> None:
    endpoint, _, _ = secured
    mallory = ClientKeys.load(str(keys.mallory), str(keys.server_public))
    with pytest.raises(CtlError, match="refused our key"):
        request(endpoint, "status", timeout_s=1, keys=mallory)


def test_events_need_a_listed_key(keys: Keys) -> None:
    ctx, sec = _started_security(keys)
    pub = EventPublisher(ctx, "tcp://127.0.0.1:*")
    endpoint = pub.bind(sec)

    def sub(k: ClientKeys) -> zmq.Socket[bytes]:
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        k.apply(s)
        s.setsockopt(zmq.SUBSCRIBE, b"agent.")
        s.connect(endpoint)
        return s

    good = sub(ClientKeys.load(str(keys.alice), str(keys.server_public)))
    bad = sub(ClientKeys.load(str(keys.mallory), str(keys.server_public)))
    got_good = got_bad = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not got_good:
        pub.publish("agent.test", {"n": 1})
        got_good += bool(good.poll(50)) and bool(good.recv_multipart())
        got_bad += bool(bad.poll(0))
    assert got_good and not got_bad and not bad.poll(300)
    for s in (good, bad):
        s.close(0)
    pub.close()
    sec.stop()
    ctx.term()


@pytest.mark.parametrize(
    "endpoint", ["tcp://0.0.0.0:*", "tcp://*:*", "tcp://eth0:5560", "tcp://10.0.0.2:5560"]
)
def test_non_loopback_bind_without_keys_refused_on_every_socket(endpoint: str) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sec = Security(SocketsConfig())
    sec.start(ctx)
    for key in ("sockets.command_endpoint", "sockets.event_endpoint", "trainer.endpoint"):
        s = ctx.socket(zmq.ROUTER)
        with pytest.raises(ConfigError, match=rf"{key}.*CURVE"):
            sec.bind(s, endpoint, key)
        s.close(0)
    with pytest.raises(ConfigError, match=r"sockets\.event_endpoint"):
        EventPublisher(ctx, endpoint).bind(sec)
    for field in ("command_endpoint", "event_endpoint"):
        cfg = config_from_dict({"sockets": {field: endpoint.replace("*:*", "*:1")}})
        with pytest.raises(ConfigError, match=rf"sockets\.{field}"):
            Security(cfg.sockets).start(ctx)
    ctx.term()


def test_curve_config_errors_name_the_file(keys: Keys, tmp_path: Path) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    bad = [
        SocketsConfig(  # a public key where the secret one belongs
            curve_server_secret=str(keys.server_public), curve_clients_dir=str(keys.clients)
        ),
        SocketsConfig(
            curve_server_secret=str(keys.server_secret), curve_clients_dir=str(tmp_path / "no")
        ),
    ]
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.key").write_text("not a key")
    bad.append(
        SocketsConfig(
            curve_server_secret=str(keys.server_secret), curve_clients_dir=str(tmp_path / "junk")
        )
    )
    for cfg in bad:
        with pytest.raises(ConfigError):
            Security(cfg).start(ctx)
    ctx.term()


def test_secured_daemon_answers_ctl_with_keys_only(
    keys: Keys, start_daemon: Callable[..., Running]
) -> None:
    r = start_daemon(
        sockets={
            "curve_server_secret": str(keys.server_secret),
            "curve_clients_dir": str(keys.clients),
        }
    )
    ep = r.daemon.endpoints["commands"]
    alice = ClientKeys.load(str(keys.alice), str(keys.server_public))
    deadline = time.monotonic() + 20
    while request(ep, "status", timeout_s=5, keys=alice)["result"]["grasps"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    mallory = ClientKeys.load(str(keys.mallory), str(keys.server_public))
    with pytest.raises(CtlError):
        request(ep, "pause", timeout_s=1, keys=mallory)
    with pytest.raises(CtlError):
        request(ep, "pause", timeout_s=1)
    time.sleep(0.3)  # a pause, had it gone through, is applied between grasps
    st = request(ep, "status", timeout_s=5, keys=alice)["result"]
    assert not st["paused"]
