"""Typed settings of the bridge client (the agent side) and server (the robot side); pure.

:class:`BridgeDriverSettings` is the agent's ``[driver]`` table for ``type = "bridge"``;
:func:`check_settings` names its first bad key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from drivers.camera import CameraConfig, check_config
from plumbing.curve import require_curve

WATCHDOG_S = 10.0
"""systemd WatchdogSec of robot-agent.service: one grasp's bridge calls must fit well inside."""


@dataclass(frozen=True)
class BridgeClientConfig:
    """How the agent reaches a robot bridge (``[driver.bridge]`` in the agent config)."""

    endpoint: str = "tcp://127.0.0.1:5570"
    """The bridge's ROUTER endpoint; a non-loopback address needs the two CURVE key files."""
    timeout_s: float = 1.0
    """Longest silence accepted from the bridge (a reply or a heartbeat) before it is down."""
    execute_timeout_s: float = 7.0
    """Longest one grasp may take on the robot, heartbeats notwithstanding."""
    reconnect_min_s: float = 0.2
    """First wait before reconnecting to a bridge that stopped answering (doubles each time)."""
    reconnect_max_s: float = 5.0
    """Cap on the wait between reconnection attempts."""
    robot_id: str = ""
    """Expected robot id from the bridge's hello; empty accepts any."""
    curve_server_public: str = ""
    """Certificate file (zmq.auth format) holding the bridge's public key."""
    curve_client_secret: str = ""
    """Certificate file holding this agent's key pair (its public key is authorised there)."""
    max_message_bytes: int = 4 << 20
    """Largest reply accepted from the bridge."""


@dataclass(frozen=True)
class BridgeServerConfig:
    """How a robot bridge listens (the integrator's process)."""

    endpoint: str = "tcp://127.0.0.1:5570"
    """ROUTER endpoint to bind; a non-loopback address needs CURVE keys."""
    robot_id: str = "robot"
    """Name of this robot, sent in hello."""
    heartbeat_s: float = 0.25
    """Interval of heartbeats sent while a request runs on the robot."""
    dedup_size: int = 64
    """Execute request ids whose outcome is remembered (a retried execute never runs twice)."""
    curve_server_secret: str = ""
    """Certificate file with the bridge's key pair; required to bind a non-loopback address."""
    curve_clients_dir: str = ""
    """Directory of authorised agent public-key files; required with curve_server_secret."""
    max_message_bytes: int = 1 << 20
    """Largest request accepted."""


def client_problems(cfg: BridgeClientConfig) -> list[tuple[str, str]]:
    """(key, problem) pairs of an invalid client config; empty when valid."""
    out: list[tuple[str, str]] = []
    if not cfg.endpoint.startswith(("tcp://", "ipc://", "inproc://")):
        out.append(("endpoint", f"{cfg.endpoint!r}: allowed schemes: tcp://, ipc://, inproc://"))
    if not 0 < cfg.timeout_s < WATCHDOG_S / 2:
        out.append(("timeout_s", f"{cfg.timeout_s}: must be in (0, {WATCHDOG_S / 2})"))
    if not cfg.timeout_s <= cfg.execute_timeout_s:
        out.append(("execute_timeout_s", f"{cfg.execute_timeout_s}: must be >= timeout_s"))
    # worst grasp: observe (timeout_s) + execute (execute_timeout_s) + the hello of its retry
    if 2 * cfg.timeout_s + cfg.execute_timeout_s >= WATCHDOG_S:
        out.append(
            (
                "execute_timeout_s",
                f"{cfg.execute_timeout_s}: 2 x timeout_s + execute_timeout_s must stay below the "
                f"systemd watchdog ({WATCHDOG_S} s)",
            )
        )
    if not 0 < cfg.reconnect_min_s <= cfg.reconnect_max_s:
        out.append(("reconnect_min_s", "must be > 0 and <= reconnect_max_s"))
    if bool(cfg.curve_server_public) != bool(cfg.curve_client_secret):
        out.append(("curve_server_public", "must be set together with curve_client_secret"))
    if cfg.max_message_bytes < 1024:
        out.append(("max_message_bytes", "must be >= 1024"))
    return out


def check_client(cfg: BridgeClientConfig, prefix: str = "") -> None:
    """Raise ValueError naming the first bad key (``prefix`` + key)."""
    problems = client_problems(cfg)
    if problems:
        key, why = problems[0]
        raise ValueError(f"{prefix}{key}: {why}")


@dataclass(frozen=True)
class BridgeDriverSettings:
    """``[driver]`` with ``type = "bridge"``: a robot bridge process, optionally a local camera."""

    bridge: BridgeClientConfig = field(default_factory=BridgeClientConfig)
    """Endpoint, timeouts, reconnect backoff and CURVE keys of the bridge."""
    camera: CameraConfig = field(default_factory=CameraConfig)
    """A camera on this computer to observe with instead of the bridge's (empty source: none)."""


def check_settings(s: BridgeDriverSettings, prefix: str = "driver.") -> None:
    """ValueError naming the first bad key (``prefix`` + key) and what is allowed."""
    for key, why in client_problems(s.bridge)[:1]:
        raise ValueError(f"{prefix}bridge.{key} = {getattr(s.bridge, key)!r}: {why}")
    check_config(s.camera, f"{prefix}camera.")
    has_keys = bool(s.bridge.curve_server_public)
    require_curve(f"{prefix}bridge.endpoint", s.bridge.endpoint, has_keys, server=False)
