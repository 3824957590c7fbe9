"""CURVE for every ZeroMQ link of the project, and its one rule: loopback may go bare,
anything else needs keys.

The rule (:func:`require_curve`) is applied to every server bind (:class:`Security`, the
agent's command and event sockets, the trainer's job socket, the robot bridge) and every
client connect (:meth:`ClientKeys.for_endpoint`, the trainer link and the bridge driver).
Key files are zmq.auth certificates (``robot-agent keygen`` makes them). A server's keys
are ``curve_server_secret`` + ``curve_clients_dir`` (the public keys it accepts, checked by a
ZAP authenticator in the server's own domain); a client's are ``curve_server_public`` +
``curve_client_secret``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from plumbing.config_loader import ConfigError

log = logging.getLogger(__name__)

HANDSHAKE_MS = 5000
"""A connection that has not completed its (CURVE) handshake by then is closed."""


def is_loopback_endpoint(endpoint: str) -> bool:
    """True for ipc/inproc endpoints and tcp endpoints bound to a loopback address."""
    if not endpoint.startswith("tcp://"):
        return True
    host = endpoint[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # an interface name or '*': not loopback


def require_curve(key: str, endpoint: str, has_keys: bool, *, server: bool, hint: str = "") -> None:
    """The rule: ConfigError unless ``endpoint`` is loopback or CURVE keys are set.

    ``key`` names the endpoint (``"sockets.command_endpoint"``); the message names the key
    files to set in the same table (a server's or a client's pair), then ``hint``.
    """
    if has_keys or is_loopback_endpoint(endpoint):
        return
    table = key.rpartition(".")[0]
    pre = f"{table}." if table else ""
    if server:
        keys, verb, tail = "curve_server_secret", "binding", ", refusing to start"
        other = "curve_clients_dir"
    else:
        keys, verb, tail, other = "curve_server_public", "reaching", "", "curve_client_secret"
    raise ConfigError(
        f"{key} = {endpoint!r} is not a loopback address; {verb} it needs CURVE keys "
        f"(set {pre}{keys} and {pre}{other}{hint}){tail}"
    )


class CurveSettings(Protocol):
    """Where a server's CURVE keys are (the agent's ``[sockets]``, the trainer's ``[service]``,
    the bridge's settings all have these)."""

    @property
    def curve_server_secret(self) -> str: ...
    @property
    def curve_clients_dir(self) -> str: ...


def check_server_exposure(cfg: CurveSettings, table: str = "", hint: str = "") -> None:
    """The rule for every ``endpoint`` / ``*_endpoint`` field of the dataclass ``cfg`` (named
    ``table.field`` in the message): ConfigError for the first one that breaks it."""
    if not dataclasses.is_dataclass(cfg):
        return
    for f in dataclasses.fields(cfg):
        if f.name == "endpoint" or f.name.endswith("_endpoint"):
            key = f"{table}.{f.name}" if table else f.name
            has_keys = bool(cfg.curve_server_secret)
            require_curve(key, getattr(cfg, f.name), has_keys, server=True, hint=hint)


class Security:
    """CURVE server keys and the ZAP authenticator shared by all server sockets of a process.

    Without ``curve_server_secret`` it does nothing but refuse non-loopback binds. With it,
    :meth:`start` loads the server key and every ``*.key`` in ``curve_clients_dir`` and starts
    a ``zmq.auth`` ThreadAuthenticator for ``domain``; a client whose public key is not in that
    directory fails the handshake and never reaches a socket. ``table`` names the settings in
    messages (``"sockets"``: ``sockets.command_endpoint``); every ``endpoint`` or
    ``*_endpoint`` field of a dataclass ``cfg`` is checked by :meth:`start`.
    """

    def __init__(self, cfg: CurveSettings, domain: str, table: str = "", hint: str = "") -> None:
        self.cfg = cfg
        self.domain = domain
        self.table = table
        self.hint = hint
        self._auth: Any = None
        self._keys: tuple[bytes, bytes] | None = None
        self.client_keys = 0
        """Authorised client keys loaded by :meth:`start`."""

    @property
    def enabled(self) -> bool:
        """True once CURVE keys are loaded (after :meth:`start`)."""
        return self._keys is not None

    def _key(self, name: str) -> str:
        return f"{self.table}.{name}" if self.table else name

    def start(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        """Load keys and start the authenticator (before any socket binds); ConfigError
        first if an endpoint of the settings breaks the rule."""
        check_server_exposure(self.cfg, self.table, self.hint)
        if not self.cfg.curve_server_secret:
            return
        self._keys = load_secret_key(self.cfg.curve_server_secret, "curve_server_secret")
        self.client_keys = len(load_public_keys(self.cfg.curve_clients_dir, self._clients_key))
        if not self.client_keys:
            log.warning(
                "no client keys in %s: no client can connect until one is added",
                self.cfg.curve_clients_dir,
            )
        self._auth = ThreadAuthenticator(ctx, log=logging.getLogger("plumbing.curve.zap"))
        self._auth.start()
        self._auth.configure_curve(domain=self.domain, location=self.cfg.curve_clients_dir)

    @property
    def _clients_key(self) -> str:
        return self._key("curve_clients_dir")

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        """Make ``sock`` a CURVE server in this ZAP domain (no-op without keys)."""
        sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
        if self._keys is not None:
            sock.curve_publickey, sock.curve_secretkey = self._keys
            sock.curve_server = True
            sock.zap_domain = self.domain.encode()

    def bind(self, sock: zmq.Socket[bytes], endpoint: str, key: str) -> str:
        """Secure and bind ``sock``; refuses (ConfigError) off loopback without CURVE keys.

        ``key`` names the endpoint in messages (e.g. ``"sockets.command_endpoint"``).
        Returns the resolved endpoint (a ``*`` port replaced by the real one). On any failure
        ``sock`` is closed before the error propagates: a caller never holds an unbound one.
        """
        try:
            require_curve(key, endpoint, self.enabled, server=True, hint=self.hint)
            self.apply(sock)
            sock.bind(endpoint)
        except BaseException:
            sock.close(0)
            raise
        return str(sock.getsockopt_string(zmq.LAST_ENDPOINT))

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


def load_secret_key(path: str, key: str = "key file") -> tuple[bytes, bytes]:
    """(public, secret) from a zmq.auth secret certificate; ConfigError saying what is wrong."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{key} = {path!r}: cannot read a CURVE key: {exc}") from exc
    if secret is None:
        raise ConfigError(f"{key} = {path!r} holds only a public key; give the *.key_secret file")
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s: secret key readable by others (mode %o); chmod 600 it", path, mode & 0o777)
    return public, secret


def load_public_keys(directory: str, key: str = "curve_clients_dir") -> list[bytes]:
    """Public keys of every ``*.key`` file in ``directory``; ConfigError naming a bad file."""
    d = Path(directory)
    if not d.is_dir():
        raise ConfigError(f"{key} = {directory!r} is not a directory")
    keys: list[bytes] = []
    for f in sorted(d.glob("*.key")):
        try:
            public, _ = zmq.auth.load_certificate(f)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{f}: not a CURVE public key file: {exc}") from exc
        keys.append(public)
    return keys


@dataclass(frozen=True)
class ClientKeys:
    """A CURVE client's key pair and the server public key it expects."""

    public: bytes
    """Client public key (z85)."""
    secret: bytes
    """Client secret key (z85)."""
    server_public: bytes
    """The server's public key (z85): the client refuses any other server."""

    @classmethod
    def load(cls, client_secret_file: str, server_public_file: str) -> ClientKeys:
        """Read ``NAME.key_secret`` (client) and ``SERVER.key`` (server public key)."""
        public, secret = load_secret_key(client_secret_file, "client key")
        try:
            server_public, _ = zmq.auth.load_certificate(server_public_file)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"server key {server_public_file!r}: cannot read a CURVE key: {exc}"
            ) from exc
        return cls(public, secret, server_public)

    @classmethod
    def for_endpoint(
        cls, key: str, endpoint: str, server_public_file: str, client_secret_file: str
    ) -> ClientKeys | None:
        """The keys for reaching ``endpoint`` (named ``key``): None on loopback without key
        files, ConfigError (the rule) off loopback without them."""
        require_curve(key, endpoint, bool(server_public_file), server=False)
        if not server_public_file:
            return None
        return cls.load(client_secret_file, server_public_file)

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        """Make ``sock`` a CURVE client of that server (before connect)."""
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
