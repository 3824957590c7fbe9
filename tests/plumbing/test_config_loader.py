"""The config loader: typed dataclasses from TOML tables, errors that name the key."""

from __future__ import annotations

import argparse
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from plumbing.config_loader import (
    ConfigError,
    build_dataclass,
    check_scheme,
    field_docs,
    from_options,
    load_toml,
    toml_table,
    toml_value,
)


@dataclass(frozen=True)
class Inner:
    """A sub-table."""

    pairs: tuple[tuple[int, str], ...] = ()
    """Counted names."""


@dataclass(frozen=True)
class Outer:
    """A table with one field of each kind."""

    name: str = "x"
    """A string."""
    n: int = 1
    """An integer."""
    rate: float = 0.5
    """A number."""
    on: bool = True
    """A flag."""
    mode: Literal["a", "b"] = "a"
    """A choice."""
    extra: dict[str, float] = field(default_factory=dict)
    """A free table."""
    inner: Inner = field(default_factory=Inner)
    """A nested table."""

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("n must be >= 0")


def test_a_full_table_builds_the_dataclass_and_ints_become_floats() -> None:
    raw = {"name": "y", "n": 3, "rate": 2, "on": False, "mode": "b", "extra": {"k": 1.5}}
    raw["inner"] = {"pairs": [[0, "a"], [5, "b"]]}
    cfg = build_dataclass(Outer, raw)
    assert cfg == Outer("y", 3, 2.0, False, "b", {"k": 1.5}, Inner(((0, "a"), (5, "b"))))
    assert isinstance(cfg.rate, float)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"nme": "y"}, "unknown key t.nme; allowed keys here: extra, inner, mode, n, name"),
        ({"n": True}, "t.n must be an integer, got True"),
        ({"n": 1.5}, "t.n must be an integer"),
        ({"rate": "1"}, "t.rate must be a number"),
        ({"on": 1}, "t.on must be true or false"),
        ({"mode": "c"}, "t.mode = 'c' is not allowed; allowed values: 'a', 'b'"),
        ({"extra": 3}, "t.extra must be a table"),
        ({"inner": {"pairs": [[0, "a", 1]]}}, "t.inner.pairs[0] must be an array of 2 items"),
        ({"inner": {"pairs": [["0", "a"]]}}, "t.inner.pairs[0][0] must be an integer"),
        ({"inner": 3}, "t.inner: expected a table"),
        ({"n": -1}, "n must be >= 0"),
    ],
)
def test_errors_name_the_key_and_what_is_allowed(raw: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as ei:
        build_dataclass(Outer, raw, "t.")
    assert needle in str(ei.value)


def test_field_docs_are_the_strings_under_the_fields() -> None:
    docs = field_docs(Outer)
    assert docs["name"] == "A string." and docs["inner"] == "A nested table." and len(docs) == 7


def test_example_table_round_trips_to_the_defaults() -> None:
    text = "\n".join(toml_table("t", Outer, [("kind", "Which kind.", "outer")]))
    assert text.startswith('[t]\n# Which kind.\nkind = "outer"\n# A string.\nname = "x"')
    assert "[t.inner]\n# Counted names.\npairs = []" in text
    raw = tomllib.loads(text)["t"]
    assert raw.pop("kind") == "outer" and build_dataclass(Outer, raw) == Outer()


def test_toml_values_parse_back() -> None:
    v = {"s": 'a "q" \\ b', "b": True, "f": 0.25, "l": (1, 2), "d": {"k": "v"}}
    text = "\n".join(f"{k} = {toml_value(x)}" for k, x in v.items())
    assert tomllib.loads(text) == {**v, "l": [1, 2]}


def test_load_toml_says_which_file_is_bad(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[t\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML"):
        load_toml(bad)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_toml(tmp_path / "missing.toml")


def test_endpoint_schemes() -> None:
    check_scheme("s.endpoint", "ipc:///tmp/x")
    with pytest.raises(ConfigError, match=r"s\.endpoint = 'http://x': allowed schemes: tcp://"):
        check_scheme("s.endpoint", "http://x")


def test_from_options_keeps_the_default_of_an_option_not_given() -> None:
    args = argparse.Namespace(name="y", n=None, rate=2.0, unrelated=1)
    cfg = from_options(Outer, args, rate=3.0)
    assert cfg == Outer(name="y", n=Outer().n, rate=3.0)  # None: default; given wins


def test_any_typed_items_pass_through_for_their_owner_to_check() -> None:
    @dataclass(frozen=True)
    class Steps:
        steps: tuple[Any, ...] = ()

    raw = {"steps": [[0, "a"], [5, "b", {"k": 1.5}]]}
    assert build_dataclass(Steps, raw).steps == ([0, "a"], [5, "b", {"k": 1.5}])
    with pytest.raises(ConfigError, match=r"t\.steps must be an array"):
        build_dataclass(Steps, {"steps": 3}, "t.")
