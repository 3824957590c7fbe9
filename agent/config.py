"""Daemon configuration: typed frozen dataclasses loaded from TOML and validated.

Each component owns one dataclass; :class:`AgentConfig` composes them, one TOML
table per component (``[policy]``, ``[cem]``, ...). Unknown keys, wrong types
and values outside their allowed set are rejected with a message naming the
key and what is allowed (:mod:`plumbing.config_loader`). The ``[driver]`` table
belongs to the driver type it names, which builds and checks it
(:mod:`agent.driver_types`). The defaults run the sim cell on loopback out of the box.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agent.cem import CemParams
from agent.driver import DriverType
from agent.driver_types import DriverConfig, driver_config, driver_type, installed_types
from agent.race import RaceConfig
from agent.rounds import RoundsConfig
from plumbing.config_loader import ConfigError, build_dataclass, check_scheme, load_toml, toml_table
from plumbing.config_loader import need as _need
from plumbing.curve import check_server_exposure, require_curve
from plumbing.names import SAFE_NAME_RULE, is_safe_name

KEYGEN_HINT = "; `robot-agent keygen` makes them"
"""Added to a refusal to bind off loopback: where the key files come from."""

ProviderChoice = Literal["auto", "cpu", "cuda"]
OnAlarm = Literal["mark", "alert"]
ThresholdMethod = Literal["markov", "simulate"]


@dataclass(frozen=True)
class PolicyConfig:
    """Where policies live and how ONNX Runtime runs them."""

    bundle: str = ""
    """Bundle directory to serve at start; empty = the active policy recorded in the grasp log."""
    store_dir: str = "policies"
    """Directory (relative to agent.data_dir) holding every bundle the agent ever ran."""
    provider: ProviderChoice = "auto"
    """ONNX Runtime provider: "auto" (CUDA when present, else CPU), "cpu" or "cuda"."""
    intra_op_threads: int = 1
    """ONNX Runtime intra-op threads (spinning is always off)."""
    warmup_runs: int = 3
    """Full CEM decisions run on a grey image before a session is used."""
    split_trunk: bool = True
    """Run the image-only part of the graph once per decision (checked equal to the full graph)."""
    max_bundle_bytes: int = 256 * 1024 * 1024
    """Largest total size of a bundle directory; checked before anything is copied or read."""
    probe_images: int = 8
    """Recorded images of the current condition probed at validation (besides grey and noise)."""
    latency_runs: int = 3
    """Timed decisions per probe image; warm latency = slowest image's fastest decision."""
    max_latency_factor: float = 1.5
    """A new policy's warm latency may be at most this times the active policy's."""
    latency_floor_s: float = 0.002
    """Warm latencies below this always pass the factor check (timer noise on tiny models)."""
    max_latency_s: float = 0.25
    """Absolute cap on a new policy's warm decision latency."""
    budget_factor: float = 4.0
    """Serving budget per decision = max(budget_factor x warm latency, budget_floor_s)."""
    budget_floor_s: float = 0.1
    """Smallest serving budget per decision."""
    budget_strikes: int = 5
    """Consecutive decisions over budget that take a policy out of service."""
    budget_hard_cap_s: float = 2.0
    """One decision this long (and busy on the CPU beyond budget) takes a policy out at once."""
    decision_deadline_s: float = 4.0
    """A decision still running this long is aborted and its policy taken out of service."""
    decision_grace_s: float = 2.0
    """An aborted decision not back this much later ends the agent (exit 3; never served again)."""


CemConfig = CemParams
"""The ``[cem]`` table is :class:`agent.cem.CemParams` itself (one CEM settings class)."""


@dataclass(frozen=True)
class GraspLogConfig:
    """The SQLite grasp log."""

    path: str = "grasps.db"
    """Database file (relative to agent.data_dir)."""
    busy_timeout_ms: int = 5000
    """How long a write waits for a lock before failing."""
    image_format: Literal["png", "jpg"] = "png"
    """How OpenCV encodes transition images ("png" is lossless)."""
    store_images: bool = True
    """Store each transition's image (turn off only to save disk in benchmarks)."""
    buffer_grasps: int = 500
    """Grasps held in memory while the disk is full; at the cap the daemon stops actuating."""
    stop_flush_s: float = 10.0
    """At a stop, how long held grasps are retried (keep under the unit's TimeoutStopSec)."""


@dataclass(frozen=True)
class DetectorConfig:
    """The success-drop detector (Bernoulli CUSUM on the active policy's stream)."""

    arl0: float = 2000.0
    """Wanted mean grasps between false alarms."""
    min_drop: float = 0.15
    """Smallest absolute drop of the success rate worth detecting."""
    reference_grasps: int = 100
    """Grasps of the active policy in its condition needed to fix the reference rate."""
    block_grasps: int = 20
    """Grasps per block for the overdispersion estimate (objects come in sets); 1: independent."""
    max_dispersion: float = 4.0
    """Largest overdispersion factor the threshold is raised by."""
    explore_arl0: float = 20000.0
    """Mean grasps between false alarms while exploring/training (a second change); 0: off."""
    threshold_method: ThresholdMethod = "markov"
    """How the threshold is computed for arl0: "markov" (exact chain) or "simulate"."""
    enabled: bool = True
    """Run the detector at all."""


@dataclass(frozen=True)
class LifecycleConfig:
    """Conditions, exploration and fine-tuning."""

    on_alarm: OnAlarm = "alert"
    """On an alarm: "mark" a new condition and explore, or only "alert"."""
    exploration_grasps: int = 200
    """Grasps to collect in a new condition before a fine-tune job is submitted."""
    initial_condition: str = "base"
    """Name of the condition the agent starts in when the log is empty."""


@dataclass(frozen=True)
class ProbationConfig:
    """The sequential test a swapped-in policy passes against the policy it replaced."""

    enabled: bool = True
    """Put trained and promoted policies on probation (operator rollbacks never are)."""
    alpha: float = 0.05
    """Target false-rollback rate: rolling back a policy as good as its parent."""
    beta: float = 0.1
    """Target rate of keeping a policy that is detector.min_drop worse than its parent."""
    max_grasps: int = 200
    """Probation ends (passed) after this many grasps without a verdict."""
    reference_grasps: int = 200
    """The parent's latest grasps under the condition that give its reference rate."""
    min_reference: int = 20
    """Fewer parent grasps under the condition than this: use its latest grasps anywhere."""


@dataclass(frozen=True)
class SocketsConfig:
    """ZeroMQ endpoints and their security."""

    command_endpoint: str = "tcp://127.0.0.1:5560"
    """ROUTER socket for operator commands."""
    event_endpoint: str = "tcp://127.0.0.1:5561"
    """PUB socket for events."""
    curve_server_secret: str = ""
    """Server secret-key file (`robot-agent keygen`); required to bind a non-loopback address."""
    curve_clients_dir: str = ""
    """Directory of authorised client public keys (*.key); required with curve_server_secret."""
    max_message_bytes: int = 64 << 10
    """Largest command message (all frames) answered; larger ones get `too_large`."""
    max_frame_bytes: int = 256 << 10
    """Largest single frame read (ZMQ_MAXMSGSIZE); libzmq drops a larger one unanswered."""
    command_rate_per_s: float = 20.0
    """Sustained requests per second per client (CURVE key, else connection); 0 = no limit."""
    command_burst: int = 40
    """Requests a client may send at once before command_rate_per_s applies."""
    command_total_rate_per_s: float = 100.0
    """Sustained requests per second from all clients together; 0 = no limit."""
    command_total_burst: int = 200
    """Requests all clients together may send at once before the total rate applies."""
    command_read_rate_per_s: float = 100.0
    """Requests read per second in all; more wait in libzmq's queues (TCP pushes back); 0 = off."""


@dataclass(frozen=True)
class DaemonConfig:
    """The control loop."""

    data_dir: str = ""
    """Root of database, policies and exports; empty: $STATE_DIRECTORY or ./robot-agent-data."""
    idle_sleep_s: float = 0.05
    """Sleep between command polls when paused or without a policy."""
    max_grasps: int = 0
    """Stop after this many grasps (0 = run forever); for smoke tests."""
    exports_dir: str = "exports"
    """Directory (relative to data_dir) for dataset exports and job inputs."""
    exports_budget_mb: int = 2048
    """Disk budget of exports_dir in MiB: beyond it the oldest ended jobs' exports go; 0 = none."""


@dataclass(frozen=True)
class TrainerConfig:
    """The link to the trainer's job service (agent.link; docs/trainer-service.md)."""

    endpoint: str = ""
    """Job socket of `robot-trainer serve`, e.g. "tcp://127.0.0.1:5570"; empty: no trainer."""
    agent_id: str = ""
    """This robot's name on the trainer (its lineage); empty: the host name."""
    state_dir: str = "trainer-link"
    """Directory (relative to agent.data_dir) for job records and downloaded bundles."""
    curve_server_public: str = ""
    """The trainer's public key file; required for a non-loopback endpoint."""
    curve_client_secret: str = ""
    """This agent's secret key file (`robot-agent keygen`); set with curve_server_public."""
    chunk_bytes: int = 1 << 20
    """Upload chunk size (the trainer may cap it lower)."""
    heartbeat_s: float = 1.0
    """Ping interval while connected."""
    timeout_s: float = 5.0
    """Silence after which the trainer counts as away (reconnect with backoff)."""
    backoff_min_s: float = 0.5
    """First retry delay after the trainer went away."""
    backoff_max_s: float = 30.0
    """Longest retry delay."""
    fetch_retries: int = 6
    """Retries of a result download that does not verify (sha256, stall) before the job fails."""
    fetch_backoff_s: float = 0.5
    """Pause after the first failed download round; doubles each time, up to backoff_max_s."""


@dataclass(frozen=True)
class AgentConfig:
    """The whole daemon configuration, one table per component."""

    agent: DaemonConfig = field(default_factory=DaemonConfig)
    """The control loop."""
    driver: DriverConfig = field(default_factory=DriverConfig)
    """Which robot to drive: a registered driver type and its own settings."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """Policy store and ONNX Runtime."""
    cem: CemParams = field(default_factory=CemParams)
    """Action selection."""
    grasp_log: GraspLogConfig = field(default_factory=GraspLogConfig)
    """SQLite grasp log."""
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    """Success-drop detector."""
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)
    """Conditions and fine-tuning."""
    probation: ProbationConfig = field(default_factory=ProbationConfig)
    """Probation of promoted policies (and of trained ones when ``rounds.race`` is off)."""
    race: RaceConfig = field(default_factory=RaceConfig)
    """The race of a trained child against its parent (docs/race.md)."""
    rounds: RoundsConfig = field(default_factory=RoundsConfig)
    """Learning in rounds under a condition until the drop is recovered."""
    sockets: SocketsConfig = field(default_factory=SocketsConfig)
    """Command and event sockets."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """The trainer link."""

    def data_path(self, rel: str) -> Path:
        """Resolve a path relative to ``agent.data_dir`` (absolute paths pass through)."""
        p = Path(rel)
        root = self.agent.data_dir or os.environ.get("STATE_DIRECTORY", "") or "robot-agent-data"
        return p if p.is_absolute() else Path(root.split(":")[0]) / p


def load_config(path: Path | str, drivers: Mapping[str, DriverType] | None = None) -> AgentConfig:
    """Read and validate a TOML file; raises ConfigError naming the bad key.

    ``drivers``: the driver types ``[driver] type`` may name (default: the installed ones,
    :func:`agent.driver_types.installed_types`)."""
    return config_from_dict(load_toml(path), drivers)


def config_from_dict(
    raw: dict[str, Any], drivers: Mapping[str, DriverType] | None = None
) -> AgentConfig:
    """Build and validate an AgentConfig from nested dicts (the parsed TOML).

    The ``[driver]`` table is built by the driver type it names (see :func:`load_config`)."""
    rest = dict(raw)
    table = rest.pop("driver", {})
    cfg = build_dataclass(AgentConfig, rest)
    assert isinstance(cfg, AgentConfig)
    cfg = dataclasses.replace(cfg, driver=driver_config(table, drivers))
    validate(cfg)
    return cfg


def validate(cfg: AgentConfig) -> None:
    """Check cross-field constraints; raises ConfigError naming the key."""
    # [cem] is agent.cem.CemParams, which checks itself when built (ConfigError, build_dataclass).
    _need(cfg.agent.exports_budget_mb >= 0, "agent.exports_budget_mb: must be >= 0 (0 = no budget)")
    p = cfg.policy
    _need(1 <= p.intra_op_threads <= 64, "policy.intra_op_threads: must be in [1, 64]")
    _need(p.warmup_runs >= 1, "policy.warmup_runs: must be >= 1 (a session is warmed before use)")
    _need(p.max_bundle_bytes >= 1024, "policy.max_bundle_bytes: must be >= 1024")
    _need(p.probe_images >= 0, "policy.probe_images: must be >= 0")
    _need(p.latency_runs >= 1, "policy.latency_runs: must be >= 1")
    _need(p.max_latency_factor >= 1, "policy.max_latency_factor: must be >= 1")
    _need(p.latency_floor_s >= 0, "policy.latency_floor_s: must be >= 0")
    _need(p.max_latency_s > 0, "policy.max_latency_s: must be > 0")
    _need(p.budget_factor >= 1, "policy.budget_factor: must be >= 1")
    _need(p.budget_floor_s > 0, "policy.budget_floor_s: must be > 0")
    _need(p.budget_strikes >= 1, "policy.budget_strikes: must be >= 1")
    _need(
        p.budget_hard_cap_s >= p.budget_floor_s,
        "policy.budget_hard_cap_s: must be >= policy.budget_floor_s",
    )
    _need(
        p.decision_deadline_s > p.budget_hard_cap_s,
        "policy.decision_deadline_s: must be > policy.budget_hard_cap_s",
    )
    _need(p.decision_grace_s > 0, "policy.decision_grace_s: must be > 0")
    d = cfg.detector
    _need(d.arl0 >= 10, f"detector.arl0 = {d.arl0}: must be >= 10 grasps")
    _need(
        d.explore_arl0 == 0 or d.explore_arl0 >= 10,
        f"detector.explore_arl0 = {d.explore_arl0}: must be 0 (off) or >= 10 grasps",
    )
    _need(0 < d.min_drop < 1, f"detector.min_drop = {d.min_drop}: must be in (0, 1)")
    _need(d.reference_grasps >= 10, "detector.reference_grasps: must be >= 10")
    _need(d.block_grasps >= 1, "detector.block_grasps: must be >= 1")
    _need(d.max_dispersion >= 1, "detector.max_dispersion: must be >= 1")
    lc = cfg.lifecycle
    _need(lc.exploration_grasps >= 1, "lifecycle.exploration_grasps: must be >= 1")
    pb = cfg.probation
    _need(0 < pb.alpha < 0.5, f"probation.alpha = {pb.alpha}: must be in (0, 0.5)")
    _need(0 < pb.beta < 0.5, f"probation.beta = {pb.beta}: must be in (0, 0.5)")
    _need(pb.max_grasps >= 1, "probation.max_grasps: must be >= 1")
    _need(pb.reference_grasps >= 1, "probation.reference_grasps: must be >= 1")
    _need(cfg.grasp_log.buffer_grasps >= 1, "grasp_log.buffer_grasps: must be >= 1")
    _need(cfg.grasp_log.stop_flush_s >= 0, "grasp_log.stop_flush_s: must be >= 0")
    _need(bool(lc.initial_condition), "lifecycle.initial_condition: must not be empty")
    g = cfg.grasp_log
    _need(g.busy_timeout_ms >= 0, "grasp_log.busy_timeout_ms: must be >= 0")
    s = cfg.sockets
    for key in ("command_endpoint", "event_endpoint"):
        check_scheme(f"sockets.{key}", getattr(s, key))
    _need(s.max_message_bytes >= 1024, "sockets.max_message_bytes: must be >= 1024")
    _need(
        s.max_frame_bytes >= s.max_message_bytes,
        "sockets.max_frame_bytes: must be >= sockets.max_message_bytes",
    )
    _need(s.command_rate_per_s >= 0, "sockets.command_rate_per_s: must be >= 0 (0 = no limit)")
    _need(
        s.command_total_rate_per_s >= 0,
        "sockets.command_total_rate_per_s: must be >= 0 (0 = no limit)",
    )
    _need(s.command_burst >= 1, "sockets.command_burst: must be >= 1")
    _need(s.command_total_burst >= 1, "sockets.command_total_burst: must be >= 1")
    _need(
        s.command_read_rate_per_s >= 0,
        "sockets.command_read_rate_per_s: must be >= 0 (0 = no limit)",
    )
    _need(
        bool(s.curve_server_secret) == bool(s.curve_clients_dir),
        "sockets.curve_server_secret and sockets.curve_clients_dir must be set together",
    )
    _need(cfg.agent.max_grasps >= 0, "agent.max_grasps: must be >= 0")
    _need(cfg.agent.idle_sleep_s > 0, "agent.idle_sleep_s: must be > 0")
    validate_trainer(cfg.trainer)


def validate_trainer(t: TrainerConfig) -> None:
    """Checks of the [trainer] table; raises ConfigError naming the key."""
    if t.endpoint:
        check_scheme("trainer.endpoint", t.endpoint)
    _need(
        bool(t.curve_server_public) == bool(t.curve_client_secret),
        "trainer.curve_server_public and trainer.curve_client_secret must be set together",
    )
    if t.endpoint:
        require_curve("trainer.endpoint", t.endpoint, bool(t.curve_server_public), server=False)
    _need(
        not t.agent_id or is_safe_name(t.agent_id),
        f"trainer.agent_id = {t.agent_id!r}: {SAFE_NAME_RULE}, no '/'",
    )
    _need(4096 <= t.chunk_bytes <= 64 << 20, "trainer.chunk_bytes: must be in [4096, 64 MiB]")
    _need(t.heartbeat_s > 0, "trainer.heartbeat_s: must be > 0")
    _need(t.timeout_s > t.heartbeat_s, "trainer.timeout_s: must be > trainer.heartbeat_s")
    _need(
        0 < t.backoff_min_s <= t.backoff_max_s,
        "trainer.backoff_min_s: must be > 0 and <= trainer.backoff_max_s",
    )
    _need(0 <= t.fetch_retries <= 1000, "trainer.fetch_retries: must be in [0, 1000]")
    _need(
        0 < t.fetch_backoff_s <= t.backoff_max_s,
        "trainer.fetch_backoff_s: must be > 0 and <= trainer.backoff_max_s",
    )


def check_exposure(cfg: SocketsConfig) -> None:
    """Refuse a non-loopback bind without CURVE keys; raises ConfigError saying why.

    Every ``*_endpoint`` field of the sockets table is checked (the one rule,
    :func:`plumbing.curve.check_server_exposure`), so a socket added later is covered.
    """
    check_server_exposure(cfg, "sockets", KEYGEN_HINT)


def check_paths(cfg: AgentConfig) -> None:
    """Refuse to start on a configured ``policy.bundle`` that is not a directory, whatever
    the data directory holds (a restart would otherwise serve an earlier run's policy and
    never say the configured one is missing); raises ConfigError naming the key."""
    bundle = cfg.policy.bundle
    if bundle and not Path(bundle).is_dir():
        what = "does not exist" if not Path(bundle).exists() else "is not a directory"
        raise ConfigError(
            f"policy.bundle = {bundle!r} {what} (relative paths start at {os.getcwd()}); "
            "fix the path, or set it empty to serve the active policy recorded in the grasp log"
        )


def example_toml(drivers: Mapping[str, DriverType] | None = None) -> str:
    """A TOML file listing every key with its default and help line (for docs and `--print`).

    ``[driver]`` shows the default type's keys; the other registered types are named."""
    types = installed_types() if drivers is None else drivers
    default = DriverConfig()
    kind = driver_type(default.type, types)
    lines: list[str] = []
    hints = typing.get_type_hints(AgentConfig)
    for top in dataclasses.fields(AgentConfig):
        if top.name != "driver":
            lines += toml_table(top.name, hints[top.name])
            continue
        others = ", ".join(f'"{n}" ({types[n].summary})' for n in types if n != default.type)
        doc = f'"{default.type}" ({kind.summary}); or {others}, with their own keys'
        lines += toml_table("driver", kind.config, [("type", doc, default.type)])
    return "\n".join(lines)
