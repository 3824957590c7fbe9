"""``robot-agent``: run the daemon, or talk to a running one.

- ``robot-agent run --config FILE``: run the daemon (systemd Type=notify).
- ``robot-agent ctl COMMAND [ARGS...] [--json] [--timeout S] [--client-key F --server-key F]``:
  send an operator command (CURVE keys for a daemon that binds off loopback).
- ``robot-agent keygen --out DIR [--name NAME]``: make a CURVE key pair (zmq.auth format).
- ``robot-agent config``: print a TOML file with every key, its default and its help.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from agent.commands import COMMANDS
from agent.config import AgentConfig, example_toml, load_config
from plumbing.config_loader import ConfigError
from plumbing.extras import run_entry

if TYPE_CHECKING:
    from agent.daemon import Daemon
    from agent.link import TrainerLink


def _run(args: argparse.Namespace) -> int:
    from plumbing.signals import StopSignals

    # first, before anything slow: a SIGTERM during start-up stops it cleanly (no READY=1)
    signals = StopSignals().install()
    from agent.daemon import Daemon
    from agent.driver_types import make_driver

    try:
        cfg = load_config(args.config) if args.config else AgentConfig()
        from agent.config import check_exposure, check_paths

        check_exposure(cfg.sockets)
        check_paths(cfg)
        driver = make_driver(cfg.driver)
    except (ConfigError, ValueError) as exc:
        print(f"robot-agent: {exc}", file=sys.stderr)
        return 2
    daemon = Daemon(cfg, driver, stop_event=signals.event)
    link = _attach_trainer_link(daemon, cfg)
    try:
        status = daemon.run()
    finally:
        if link is not None:
            link.close()
    if any(t.is_alive() for t in threading.enumerate() if t is not threading.current_thread()):
        # a worker still inside native code (e.g. a policy warm-up cut short by SIGTERM):
        # the log is closed and flushed; exit without interpreter teardown (it would abort)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def _attach_trainer_link(daemon: Daemon, cfg: AgentConfig) -> TrainerLink | None:
    """Start the trainer link when ``[trainer] endpoint`` is set; exports go to it as jobs.
    Without one an exploration's export is kept on disk and the lifecycle serves on."""
    if not cfg.trainer.endpoint:
        logging.getLogger("agent.cli").info(
            "no trainer configured ([trainer] endpoint): an exploration is exported and kept "
            "for robot-trainer finetune; no fine-tune job is sent"
        )
        daemon.set_export_hook(lambda job, path, _parent: _keep_export(daemon, job, path))
        return None
    from agent.link import TrainerLink

    link = TrainerLink(cfg, daemon.store, daemon.offer_trained, daemon.job_update)
    daemon.set_export_hook(link.submit)  # the daemon hands over the job, its export and parent
    daemon.set_cancel_hook(link.cancel)  # the trainer stops an abandoned job
    daemon.set_result_hook(link.release)  # a result imported or refused: drop its staged copy
    link.start()
    return link


def _keep_export(daemon: Daemon, job: int, path: Path) -> None:
    """The export hook without a trainer: say where the exploration went and end the job."""
    logging.getLogger("agent.cli").warning(
        "job %d: exploration exported to %s and kept; no trainer configured ([trainer] "
        "endpoint), so no fine-tune job is sent; serving on",
        job,
        path,
    )
    daemon.job_update(job, "kept", {"export": str(path), "reason": NO_TRAINER})


NO_TRAINER = "no trainer configured ([trainer] endpoint): no fine-tune job can be sent"
"""Why a job is kept rather than sent."""


def _ctl(args: argparse.Namespace) -> int:
    from agent.ctl import CtlError, format_reply, help_text, request
    from plumbing.curve import ClientKeys

    if args.command == "help":
        print(help_text())
        return 0
    cls = COMMANDS.get(args.command)
    if cls is None:
        print(f"unknown command {args.command!r}; try: robot-agent ctl help", file=sys.stderr)
        return 2
    if len(args.args) > len(cls.params):
        print(f"usage: robot-agent ctl {cls.usage()}", file=sys.stderr)
        return 2
    cmd_args = {p.name: v for p, v in zip(cls.params, args.args, strict=False)}
    if args.command == "promote" and "id" in cmd_args:
        cmd_args["id"] = _bundle_arg(cmd_args["id"])
    client_key = args.client_key or os.environ.get("ROBOT_AGENT_CLIENT_KEY", "")
    server_key = args.server_key or os.environ.get("ROBOT_AGENT_SERVER_KEY", "")
    keys = None
    if client_key or server_key:
        if not (client_key and server_key):
            print("robot-agent ctl: --client-key and --server-key go together", file=sys.stderr)
            return 2
        try:
            keys = ClientKeys.load(client_key, server_key)
        except ValueError as exc:
            print(f"robot-agent ctl: {exc}", file=sys.stderr)
            return 2
    endpoint = args.endpoint
    if endpoint is None:
        try:
            cfg = load_config(args.config) if args.config else AgentConfig()
        except ConfigError as exc:
            print(f"robot-agent ctl: {exc}", file=sys.stderr)
            return 2
        endpoint = cfg.sockets.command_endpoint
    try:
        reply = request(endpoint, args.command, cmd_args, timeout_s=args.timeout, keys=keys)
    except CtlError as exc:
        print(f"robot-agent ctl: {exc}", file=sys.stderr)
        return 3
    print(json.dumps(reply, indent=2) if args.json else format_reply(args.command, reply))
    return 0 if reply.get("ok") else 1


def _bundle_arg(value: str) -> str:
    """A promote argument that names a local directory is sent as an absolute path."""
    looks_like_path = os.sep in value or value in (".", "..") or Path(value).is_dir()
    return str(Path(value).resolve()) if value and looks_like_path else value


def _keygen(args: argparse.Namespace) -> int:
    import zmq.auth

    from plumbing.names import is_safe_name

    if not is_safe_name(args.name):
        print(f"robot-agent keygen: bad --name {args.name!r}", file=sys.stderr)
        return 2
    out = Path(args.out)
    public, secret = out / f"{args.name}.key", out / f"{args.name}.key_secret"
    for f in (public, secret):
        if f.exists():
            print(f"robot-agent keygen: {f} exists; not overwriting it", file=sys.stderr)
            return 2
    out.mkdir(parents=True, exist_ok=True)
    old = os.umask(0o077)  # the secret file is never readable by others, not even briefly
    try:
        zmq.auth.create_certificates(out, args.name)
    finally:
        os.umask(old)
    secret.chmod(0o600)
    public.chmod(0o644)
    print(f"public key: {public}\nsecret key: {secret} (mode 600; keep it private)")
    print(
        "server: set sockets.curve_server_secret to the secret file; clients need the public one\n"
        "client: copy the public file into the daemon's sockets.curve_clients_dir; "
        "run ctl with --client-key SECRET --server-key SERVER.key"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also the CLI help)."""
    p = argparse.ArgumentParser(prog="robot-agent", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING)")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the daemon")
    r.add_argument("--config", type=Path, help="TOML config file (defaults: the sim cell)")
    r.set_defaults(func=_run)
    c = sub.add_parser(
        "ctl",
        help="send an operator command",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {k.usage()}" for k in COMMANDS.values()) + "\n  help",
    )
    c.add_argument("command", help="command name, or 'help'")
    c.add_argument("args", nargs="*", help="positional arguments of the command")
    c.add_argument("--endpoint", help="command endpoint (default: from --config or the default)")
    c.add_argument("--config", type=Path, help="read the endpoint from this config")
    c.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the reply")
    c.add_argument("--json", action="store_true", help="print the raw JSON reply")
    c.add_argument(
        "--client-key",
        help="this client's secret key file, NAME.key_secret (env ROBOT_AGENT_CLIENT_KEY)",
    )
    c.add_argument(
        "--server-key",
        help="the daemon's public key file, NAME.key (env ROBOT_AGENT_SERVER_KEY)",
    )
    c.set_defaults(func=_ctl)
    k = sub.add_parser("keygen", help="make a CURVE key pair (NAME.key and NAME.key_secret)")
    k.add_argument("--out", required=True, help="directory to write the two files into")
    k.add_argument("--name", default="robot-agent", help="file name stem (default robot-agent)")
    k.set_defaults(func=_keygen)
    e = sub.add_parser("config", help="print a config file with every default")
    e.set_defaults(func=lambda a: print(example_toml()) or 0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``robot-agent`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        # no extra is needed by the agent itself; a driver may need one (sim: [sim])
        status: int = run_entry("robot-agent", lambda: int(args.func(args)))
    except BrokenPipeError:
        # Output piped into `head` and friends: stop quietly, like other CLI tools.
        sys.stderr.close()
        return 0
    return status


if __name__ == "__main__":
    sys.exit(main())
