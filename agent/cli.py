"""``robot-agent``: run the daemon, or talk to a running one.

- ``robot-agent run --config FILE``: run the daemon (systemd Type=notify).
- ``robot-agent ctl COMMAND [ARGS...] [--json] [--timeout S]``: send an operator command.
- ``robot-agent config``: print a TOML file with every key, its default and its help.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from agent.commands import COMMANDS
from agent.config import AgentConfig, ConfigError, example_toml, load_config


def _run(args: argparse.Namespace) -> int:
    from agent.daemon import Daemon
    from agent.drivers import make_driver

    try:
        cfg = load_config(args.config) if args.config else AgentConfig()
        from agent.config import check_exposure

        check_exposure(cfg.sockets)
        driver = make_driver(cfg.driver)
    except (ConfigError, ValueError) as exc:
        print(f"robot-agent: {exc}", file=sys.stderr)
        return 2
    daemon = Daemon(cfg, driver)
    daemon.install_signal_handlers()
    return daemon.run()


def _ctl(args: argparse.Namespace) -> int:
    from agent.ctl import CtlError, format_reply, help_text, request

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
    cmd_args = {p: v for (p, _), v in zip(cls.params, args.args, strict=False)}
    endpoint = args.endpoint
    if endpoint is None:
        cfg = load_config(args.config) if args.config else AgentConfig()
        endpoint = cfg.sockets.command_endpoint
    try:
        reply = request(endpoint, args.command, cmd_args, timeout_s=args.timeout)
    except CtlError as exc:
        print(f"robot-agent ctl: {exc}", file=sys.stderr)
        return 3
    print(json.dumps(reply, indent=2) if args.json else format_reply(args.command, reply))
    return 0 if reply.get("ok") else 1


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
    c.set_defaults(func=_ctl)
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
        status: int = args.func(args)
    except BrokenPipeError:
        # Output piped into `head` and friends: stop quietly, like other CLI tools.
        sys.stderr.close()
        return 0
    return status


if __name__ == "__main__":
    sys.exit(main())
