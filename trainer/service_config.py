"""Configuration of ``robot-trainer serve``: typed frozen dataclasses loaded from TOML.

Two tables: ``[service]`` (:class:`ServiceConfig`: socket, limits, where data
lives, which runner trains) and ``[finetune]`` (options handed to the runner's
config class, e.g. ``trainer.finetune.FinetuneConfig``). Unknown keys and wrong
types are rejected with a message naming the key (the agent's loader).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plumbing.config_loader import build_dataclass, check_scheme, load_toml
from plumbing.config_loader import need as _need
from plumbing.curve import require_curve


@dataclass(frozen=True)
class ServiceConfig:
    """The job service."""

    endpoint: str = "tcp://127.0.0.1:5570"
    """ROUTER socket agents connect to (loopback unless CURVE keys are set)."""
    data_dir: str = ""
    """Root of the job table, bundles, uploads and lineages; empty: $STATE_DIRECTORY or
    ./robot-trainer-data."""
    base_dataset: str = ""
    """Episode store of the base condition, prior data of every job (empty: none)."""
    base_bundle: str = ""
    """Bundle directory copied into the trainer's bundle store at start (spares the upload)."""
    curve_server_secret: str = ""
    """Server secret-key file (zmq.auth format); required to bind a non-loopback address."""
    curve_clients_dir: str = ""
    """Directory of authorised agents' public-key files; required with curve_server_secret."""
    max_chunk_bytes: int = 1 << 20
    """Largest chunk accepted; ZMQ_MAXMSGSIZE is this plus 64 KiB (the header cap)."""
    max_job_bytes: int = 8 << 30
    """Largest upload (export plus parent bundle) of one job."""
    credit: int = 8
    """Chunks an agent may have in flight (each chunk_ok returns one credit)."""
    heartbeat_s: float = 1.0
    """Heartbeat interval both ways (ZMTP heartbeats; agents ping at this rate)."""
    max_attempts: int = 3
    """Training runs of one job the trainer may crash during before the job is failed."""
    progress_interval_s: float = 0.5
    """Least time between two progress messages of a job."""
    abandon_upload_s: float = 14 * 24 * 3600.0
    """An upload untouched this long is failed and its files deleted (its agent is gone)."""
    runner: str = "trainer.finetune:finetune"
    """The fine-tune function, "module:callable" (the finetune(...) signature)."""
    runner_config: str = "trainer.finetune:FinetuneConfig"
    """Its config class, "module:class", built from the [finetune] table."""


@dataclass(frozen=True)
class TrainerServiceConfig:
    """The whole ``robot-trainer serve`` configuration."""

    service: ServiceConfig = field(default_factory=ServiceConfig)
    """The job service."""
    finetune: dict[str, Any] = field(default_factory=dict)
    """Options of the runner's config class."""

    def data_root(self) -> Path:
        root = self.service.data_dir or os.environ.get("STATE_DIRECTORY", "")
        return Path(root.split(":")[0] if root else "robot-trainer-data")


def load_service_config(path: Path | str) -> TrainerServiceConfig:
    """Read and validate a TOML file; raises ConfigError naming the bad key."""
    return service_config_from_dict(load_toml(path))


def service_config_from_dict(raw: dict[str, Any]) -> TrainerServiceConfig:
    """Build and validate from nested dicts (the parsed TOML)."""
    cfg = build_dataclass(TrainerServiceConfig, raw, "")
    assert isinstance(cfg, TrainerServiceConfig)
    validate_service(cfg.service)
    return cfg


def validate_service(s: ServiceConfig) -> None:
    """Cross-field checks; raises ConfigError naming the key."""
    check_scheme("service.endpoint", s.endpoint)
    _need(
        bool(s.curve_server_secret) == bool(s.curve_clients_dir),
        "service.curve_server_secret and service.curve_clients_dir must be set together",
    )
    _need(
        4096 <= s.max_chunk_bytes <= 64 << 20, "service.max_chunk_bytes: must be in [4096, 64 MiB]"
    )
    _need(s.max_job_bytes >= s.max_chunk_bytes, "service.max_job_bytes: must be >= max_chunk_bytes")
    _need(1 <= s.credit <= 256, "service.credit: must be in [1, 256]")
    _need(0.05 <= s.heartbeat_s <= 60, "service.heartbeat_s: must be in [0.05, 60]")
    _need(s.max_attempts >= 1, "service.max_attempts: must be >= 1")
    _need(s.progress_interval_s >= 0, "service.progress_interval_s: must be >= 0")
    _need(s.abandon_upload_s > 0, "service.abandon_upload_s: must be > 0")
    for key in ("runner", "runner_config"):
        _need(":" in getattr(s, key), f"service.{key}: must be 'package.module:name'")


def check_service_exposure(s: ServiceConfig) -> None:
    """Refuse a non-loopback bind without CURVE keys, saying why (plumbing.curve's rule)."""
    require_curve("service.endpoint", s.endpoint, bool(s.curve_server_secret), server=True)
