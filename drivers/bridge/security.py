"""CURVE for the bridge link, with the agent's rule: loopback may go bare, anything else may not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zmq

from agent.config import is_loopback_endpoint
from drivers.bridge.config import BridgeClientConfig, BridgeServerConfig


class ServerSecurity:
    """The bridge's CURVE server keys and client authenticator (nothing on loopback)."""

    def __init__(self, cfg: BridgeServerConfig) -> None:
        self.cfg = cfg
        self._auth: Any = None
        self._keys: tuple[bytes, bytes] | None = None

    def start(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        """Load keys and start the authenticator; ValueError on an exposed bare endpoint."""
        cfg = self.cfg
        if not is_loopback_endpoint(cfg.endpoint) and not cfg.curve_server_secret:
            raise ValueError(
                f"bridge endpoint {cfg.endpoint!r} is not a loopback address; binding it needs "
                "CURVE keys (curve_server_secret and curve_clients_dir), refusing to start"
            )
        if not cfg.curve_server_secret:
            return
        import zmq.auth
        from zmq.auth.thread import ThreadAuthenticator

        public, secret = zmq.auth.load_certificate(cfg.curve_server_secret)
        if secret is None:
            raise ValueError(f"{cfg.curve_server_secret}: no secret key in this file")
        if not Path(cfg.curve_clients_dir).is_dir():
            raise ValueError(f"curve_clients_dir {cfg.curve_clients_dir!r} is not a directory")
        self._keys = (public, secret)
        self._auth = ThreadAuthenticator(ctx)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=cfg.curve_clients_dir)

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        if self._keys is not None:
            sock.curve_publickey, sock.curve_secretkey = self._keys
            sock.curve_server = True

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


def client_keys(cfg: BridgeClientConfig) -> tuple[bytes, bytes, bytes] | None:
    """(server public, client public, client secret) or None on loopback; ValueError if exposed."""
    if not cfg.curve_server_public:
        if not is_loopback_endpoint(cfg.endpoint):
            raise ValueError(
                f"driver.bridge.endpoint = {cfg.endpoint!r} is not a loopback address; "
                "connecting needs CURVE keys (curve_server_public and curve_client_secret)"
            )
        return None
    import zmq.auth

    server_public, _ = zmq.auth.load_certificate(cfg.curve_server_public)
    public, secret = zmq.auth.load_certificate(cfg.curve_client_secret)
    if secret is None:
        raise ValueError(f"{cfg.curve_client_secret}: no secret key in this file")
    return server_public, public, secret


def apply_client(sock: zmq.Socket[bytes], keys: tuple[bytes, bytes, bytes] | None) -> None:
    """Make ``sock`` a CURVE client of the bridge (no-op without keys)."""
    if keys is not None:
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = keys
