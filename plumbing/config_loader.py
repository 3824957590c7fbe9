"""Typed frozen dataclass configs from TOML: build, check, document (one loader for all configs).

A config is a tree of frozen dataclasses, one TOML table per dataclass field, each field
documented by the string literal under it. :func:`build_dataclass` turns a parsed table into
that tree, rejecting unknown keys, wrong types and values outside a ``Literal`` with a
:class:`ConfigError` that names the key (dotted from the root) and what is allowed;
:func:`field_docs` and :func:`toml_table` turn the same classes into help and example files.
Pure apart from :func:`load_toml`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import tomllib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")

ENDPOINT_SCHEMES = ("tcp://", "ipc://", "inproc://")
"""ZeroMQ transports a configured endpoint may use."""


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and the allowed values."""


def load_toml(path: Path | str) -> dict[str, Any]:
    """The parsed TOML file; ConfigError saying why it cannot be read or parsed."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc


def need(cond: bool, msg: str) -> None:
    """Raise ConfigError(``msg``) unless ``cond``: one line per cross-field check."""
    if not cond:
        raise ConfigError(msg)


def check_scheme(key: str, endpoint: str) -> None:
    """ConfigError naming ``key`` unless ``endpoint`` uses one of :data:`ENDPOINT_SCHEMES`."""
    need(
        endpoint.startswith(ENDPOINT_SCHEMES),
        f"{key} = {endpoint!r}: allowed schemes: {', '.join(ENDPOINT_SCHEMES)}",
    )


def build_dataclass(cls: type[Any], raw: Any, prefix: str = "") -> Any:
    """A (frozen) dataclass ``cls`` from a parsed TOML table.

    Nested tables become nested dataclasses and values are checked against the field types
    (Literal, dict, tuple, ...); raises ConfigError naming the key (``prefix`` + name) on an
    unknown key or a bad value. A ValueError from the class itself (one that checks itself in
    ``__post_init__``) becomes a ConfigError with the same message.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]}; allowed keys here: {', '.join(sorted(fields))}"
        )
    kwargs = {name: _coerce(hints[name], value, f"{prefix}{name}") for name, value in raw.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _coerce(tp: Any, value: Any, key: str) -> Any:
    if tp is Any:  # the class (or its owner's check) validates this value itself
        return value
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return build_dataclass(tp, value, key + ".")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(
                f"{key} = {value!r} is not allowed; allowed values: "
                + ", ".join(repr(a) for a in allowed)
            )
        return value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, got {type(value).__name__}")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{key}: unsupported union type")  # none are used
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if origin is tuple:  # a TOML array: tuple[X, ...] or a fixed tuple[X, Y]
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be an array, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key} must be an array of {len(args)} items, got {value!r}")
        return tuple(
            _coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    raise ConfigError(f"{key}: unsupported field type {tp!r}")


def from_options(cls: type[T], options: object, **given: Any) -> T:
    """``cls`` built from the command-line options (an ``argparse.Namespace``) named like its
    fields, ``given`` over them; an option that is absent or None leaves the field's default
    (a flag defined with ``default=None`` means "not given")."""
    values = {
        f.name: getattr(options, f.name)
        for f in dataclasses.fields(cls)
        if getattr(options, f.name, None) is not None
    }
    return cls(**{**values, **given})


def field_docs(cls: type[Any]) -> dict[str, str]:
    """Field docstrings (the string literal under each field) read from the source."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for a, b in itertools.pairwise(body):
        if (
            isinstance(a, ast.AnnAssign)
            and isinstance(a.target, ast.Name)
            and isinstance(b, ast.Expr)
            and isinstance(b.value, ast.Constant)
            and isinstance(b.value.value, str)
        ):
            docs[a.target.id] = b.value.value.strip()
    return docs


def toml_value(v: Any) -> str:
    """``v`` written as a TOML value (bool, str, number, inline table, array)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, dict):
        if not v:
            return "{}"
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, tuple | list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return repr(v)


def toml_table(name: str, cls: type[Any], head: Sequence[tuple[str, str, Any]] = ()) -> list[str]:
    """Lines of an example TOML table ``[name]`` for dataclass ``cls``: every key with its
    default and its field docstring as a comment; a nested dataclass field becomes a sub-table
    (``[name.field]``) after its parent. ``head`` adds (key, help, value) lines first."""
    lines = [f"[{name}]"]
    for key, doc, value in head:
        lines += [f"# {doc}", f"{key} = {toml_value(value)}"]
    subs: list[tuple[str, type[Any]]] = []
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    default = cls()
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            subs.append((f"{name}.{f.name}", hints[f.name]))
            continue
        doc = " ".join(docs.get(f.name, "").split())  # one comment line, whatever the docstring
        lines += [f"# {doc}", f"{f.name} = {toml_value(getattr(default, f.name))}"]
    lines.append("")
    for sub_name, sub in subs:
        lines += toml_table(sub_name, sub)
    return lines
