"""CURVE key pairs for tests on real sockets: a server, an authorised client and a stranger
whose public key is not in the clients directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import zmq.auth


@dataclass(frozen=True)
class Keys:
    """Paths of the key files :func:`make_keys` wrote (``zmq.auth`` certificate files)."""

    server_secret: str
    server_public: str
    client_secret: str
    stranger_secret: str
    clients: str


def make_keys(root: Path) -> Keys:
    """Write a server, a client and a stranger key pair under ``root/keys`` and the client's
    public key (only) into ``root/clients``, the directory a server authorises from."""
    d, clients = root / "keys", root / "clients"
    d.mkdir()
    clients.mkdir()
    server_public, server_secret = zmq.auth.create_certificates(d, "server")
    client_public, client_secret = zmq.auth.create_certificates(d, "client")
    _, stranger_secret = zmq.auth.create_certificates(d, "stranger")
    (clients / "client.key").write_text(Path(client_public).read_text())
    return Keys(server_secret, server_public, client_secret, stranger_secret, str(clients))
