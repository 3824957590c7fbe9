"""Names that travel into file paths, SQL rows and wire messages: one rule for each.

A safe name (a condition, an agent id, a key file stem, a job's file name) is 1-64 of
letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit, so it can never
name a parent directory or a hidden file or carry a path separator. Bundle ids are 16 hex
digits (a prefix of the bundle's sha256); file digests are 64.
"""

from __future__ import annotations

import re
from typing import TypeGuard

SAFE_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
"""The pattern of a safe name (unanchored, for use inside larger patterns)."""
SAFE_NAME_NO_DOTDOT = r"(?!.*\.\.)" + SAFE_NAME
"""A safe name without ``..`` anywhere in it (a path component that can never climb)."""
SAFE_NAME_RULE = "1-64 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"
"""The rule in words, for messages."""
BUNDLE_ID = r"[0-9a-f]{16}"
"""The pattern of a bundle id."""
SHA256_HEX = r"[0-9a-f]{64}"
"""The pattern of a sha256 digest in hex."""

_SAFE = re.compile(SAFE_NAME)
_NO_DOTDOT = re.compile(SAFE_NAME_NO_DOTDOT)
_BUNDLE = re.compile(BUNDLE_ID)
_SHA = re.compile(SHA256_HEX)


def is_safe_name(s: object, *, allow_dotdot: bool = True) -> TypeGuard[str]:
    """True if ``s`` is a safe name; ``allow_dotdot=False`` also refuses any ``..`` inside."""
    if not isinstance(s, str):
        return False
    return (_SAFE if allow_dotdot else _NO_DOTDOT).fullmatch(s) is not None


def is_bundle_id(s: object) -> TypeGuard[str]:
    """True for a bundle id: 16 lowercase hex digits."""
    return isinstance(s, str) and _BUNDLE.fullmatch(s) is not None


def is_sha256_hex(s: object) -> TypeGuard[str]:
    """True for a sha256 digest written as 64 lowercase hex digits."""
    return isinstance(s, str) and _SHA.fullmatch(s) is not None
