"""Whether a storage error means "the disk is full" (light: the ``ctl`` client imports it
through the command error mapping, and must not load OpenCV or SQLite helpers for it)."""

from __future__ import annotations

import sqlite3


def is_disk_full(exc: BaseException) -> bool:
    """True when a SQLite error means the disk (or the page cap) is full."""
    return (
        isinstance(exc, sqlite3.OperationalError)
        and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    )
