#!/usr/bin/env bash
# Install robot-agent and/or robot-trainer as systemd services from this checkout.
#
#   sudo systemd/install.sh                # both services on this host
#   sudo systemd/install.sh --agent        # robot controller: the agent only (no torch)
#   sudo systemd/install.sh --trainer      # GPU host: the trainer only
#
# Steps: system users robot-agent / robot-trainer; a venv under PREFIX (/opt/robot-continual/venv)
# with this package (not editable: the services never read the checkout); the shipped policies and
# docs under PREFIX; /etc/robot-agent/agent.toml and /etc/robot-trainer/trainer.toml from the
# templates next to this script; the units in /etc/systemd/system; daemon-reload, enable, restart.
# Idempotent: re-running upgrades the venv and units, and never overwrites an existing config.
#
# Options:
#   --agent / --trainer   which services (default: both)
#   --extras LIST         extras for the venv (default: "sim" with --agent, plus "trainer")
#   --prefix DIR          install root of the venv, policies and docs (default /opt/robot-continual)
#   --root DIR            stage everything under DIR (an image being built); systemctl --root
#   --no-users --no-venv --no-systemctl   skip those steps (--no-start: enable without starting)
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=/opt/robot-continual
ROOT=""
EXTRAS=""
AGENT=0 TRAINER=0 USERS=1 VENV=1 SYSTEMCTL=1 START=1

die() { echo "install.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --agent) AGENT=1 ;;
    --trainer) TRAINER=1 ;;
    --extras) EXTRAS="${2:?--extras needs a value}"; shift ;;
    --prefix) PREFIX="${2:?--prefix needs a value}"; shift ;;
    --root) ROOT="$(realpath -m "${2:?--root needs a value}")"; shift ;;
    --no-users) USERS=0 ;;
    --no-venv) VENV=0 ;;
    --no-systemctl) SYSTEMCTL=0 ;;
    --no-start) START=0 ;;
    -h|--help) sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (try --help)" ;;
  esac
  shift
done
case "$PREFIX" in /*) ;; *) die "--prefix must be an absolute path" ;; esac
if [ "$AGENT" = 0 ] && [ "$TRAINER" = 0 ]; then AGENT=1 TRAINER=1; fi
SERVICES=()
[ "$AGENT" = 1 ] && SERVICES+=(robot-agent)
[ "$TRAINER" = 1 ] && SERVICES+=(robot-trainer)
if [ -z "$EXTRAS" ]; then
  [ "$AGENT" = 1 ] && EXTRAS="sim"
  [ "$TRAINER" = 1 ] && EXTRAS="${EXTRAS:+$EXTRAS,}trainer"
fi
if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ] && [ "$USERS$VENV$SYSTEMCTL" != 000 ]; then
  die "run as root (sudo), or stage with --root DIR"
fi
DEST="$ROOT$PREFIX"
say() { echo "install.sh: $*"; }

# 1. System users (no login, no home): one per service, its own group.
if [ "$USERS" = 1 ]; then
  for svc in "${SERVICES[@]}"; do
    if getent passwd "$svc" >/dev/null; then
      say "user $svc exists"
    else
      useradd ${ROOT:+--root "$ROOT"} --system --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin "$svc"
      say "created user $svc"
    fi
  done
fi

# 2. The venv, the package (from this checkout, pinned by constraints.txt), policies and docs.
install -d -m 0755 "$DEST"
if [ "$VENV" = 1 ]; then
  [ -x "$DEST/venv/bin/python" ] || python3 -m venv "$DEST/venv"
  "$DEST/venv/bin/pip" install -q -c "$SRC/constraints.txt" "$SRC[$EXTRAS]"
  # Same version number, newer code: reinstall the package itself (dependencies stay).
  "$DEST/venv/bin/pip" install -q --no-deps --force-reinstall "$SRC"
  say "venv $PREFIX/venv with [$EXTRAS]"
fi
for d in policies docs; do
  rm -rf "$DEST/$d.new"
  cp -r "$SRC/$d" "$DEST/$d.new"
  rm -rf "$DEST/$d"
  mv "$DEST/$d.new" "$DEST/$d"
done
chmod -R u=rwX,go=rX "$DEST/policies" "$DEST/docs"

# 3. Configs in /etc from the templates: written once, never overwritten.
for svc in "${SERVICES[@]}"; do
  name="${svc#robot-}.toml"
  conf="$ROOT/etc/$svc/$name"
  install -d -m 0750 "$ROOT/etc/$svc"
  if [ -e "$conf" ]; then
    say "kept $conf"
  else
    sed "s#@PREFIX@#$PREFIX#g" "$SRC/systemd/$name" > "$conf.new"
    chmod 0640 "$conf.new"
    mv "$conf.new" "$conf"
    say "wrote $conf"
  fi
  if getent group "$svc" >/dev/null; then
    chgrp "$svc" "$ROOT/etc/$svc" "$conf"
  fi
done

# 4. Units, with ExecStart and Documentation pointing into PREFIX.
install -d -m 0755 "$ROOT/etc/systemd/system"
for svc in "${SERVICES[@]}"; do
  sed "s#/opt/robot-continual#$PREFIX#g" "$SRC/systemd/$svc.service" > "$ROOT/etc/systemd/system/$svc.service.new"
  chmod 0644 "$ROOT/etc/systemd/system/$svc.service.new"
  mv "$ROOT/etc/systemd/system/$svc.service.new" "$ROOT/etc/systemd/system/$svc.service"
  say "unit /etc/systemd/system/$svc.service"
done

# 5. Enable (and restart, so an upgrade takes effect).
if [ "$SYSTEMCTL" = 1 ]; then
  if [ -n "$ROOT" ]; then
    systemctl --root="$ROOT" enable "${SERVICES[@]/%/.service}"
  elif [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable "${SERVICES[@]/%/.service}"
    if [ "$START" = 1 ]; then
      systemctl restart "${SERVICES[@]/%/.service}"
      say "started: systemctl status ${SERVICES[*]}; journalctl -u robot-agent -f"
    fi
  else
    say "systemd is not running here: units installed but not enabled"
  fi
fi
say "done"
