"""Safe names and ids: one rule for what may become a file name or a row key."""

from __future__ import annotations

import pytest

from plumbing.names import is_bundle_id, is_safe_name, is_sha256_hex


@pytest.mark.parametrize("name", ["a", "base", "harsh_lighting", "cell-3.v2", "9" * 64])
def test_safe_names(name: str) -> None:
    assert is_safe_name(name) and is_safe_name(name, allow_dotdot=False)


@pytest.mark.parametrize(
    "name", ["", ".hidden", "-x", "a/b", "../x", "a b", "x" * 65, "é", "a\n", None, 3]
)
def test_unsafe_names(name: object) -> None:
    assert not is_safe_name(name)


def test_dotdot_inside_a_name_is_refused_only_when_asked() -> None:
    assert is_safe_name("a..b") and not is_safe_name("a..b", allow_dotdot=False)


def test_bundle_ids_and_digests_are_exact_lowercase_hex() -> None:
    assert is_bundle_id("0123456789abcdef")
    for bad in ("0123456789ABCDEF", "0123456789abcde", "0123456789abcdef0", "0123456789abcdef\n"):
        assert not is_bundle_id(bad)
    assert is_sha256_hex("ab" * 32) and not is_sha256_hex("ab" * 32 + "\n")
    assert not is_bundle_id(None) and not is_sha256_hex(b"ab" * 32)
