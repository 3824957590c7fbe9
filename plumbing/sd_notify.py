"""systemd notification, hand-written from the sd_notify protocol (no libsystemd).

The protocol: if ``$NOTIFY_SOCKET`` is set, send newline-separated
``KEY=VALUE`` assignments as one datagram to that AF_UNIX socket; a path that
starts with ``@`` names the abstract namespace (the ``@`` becomes a NUL
byte). ``$WATCHDOG_USEC`` gives the watchdog interval; pinging at half of it is
the documented advice. Without ``$NOTIFY_SOCKET`` every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping


class Notifier:
    """Sends READY/STATUS/WATCHDOG/STOPPING datagrams to systemd (or nowhere)."""

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if env is None else env
        self.address = env.get("NOTIFY_SOCKET", "")
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_interval_s = (
            int(usec) / 1e6 / 2 if usec.isdigit() and (not pid or pid == str(os.getpid())) else 0.0
        )
        self._clock = clock
        self._last_ping = -1e18
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()  # the decision guard feeds the watchdog from its thread
        self.ready_sent = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, **fields: str) -> bool:
        """Send one datagram of KEY=VALUE lines; returns False if there is no socket."""
        if not self.address:
            return False
        payload = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        addr = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        with self._lock:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, addr)
        return True

    def ready(self, status: str = "") -> None:
        """READY=1 (once), with an optional STATUS line."""
        if self.ready_sent:
            return
        fields = {"READY": "1", "MAINPID": str(os.getpid())}
        if status:
            fields["STATUS"] = status
        self.send(**fields)
        self.ready_sent = True

    def status(self, text: str) -> None:
        self.send(STATUS=text.replace("\n", " "))

    def stopping(self, status: str = "") -> None:
        self.send(STOPPING="1", **({"STATUS": status} if status else {}))

    def watchdog(self) -> None:
        """WATCHDOG=1, at most every half watchdog interval (every 1 s if none is set)."""
        with self._lock:
            now = self._clock()
            due = now - self._last_ping >= (self.watchdog_interval_s or 1.0)
            if due:
                self._last_ping = now
        if due:
            self.send(WATCHDOG="1")

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
