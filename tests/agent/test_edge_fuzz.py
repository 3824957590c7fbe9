"""Fuzz the command socket: >= 10,000 malformed, oversize and random messages, no crash.

A real CommandServer on loopback with a recording fake control answers every message; each
reply must carry a documented error code (or ok), and a request refused by the parsing
layer must have executed nothing. Frames over the drop limit are covered in
test_edge_protocol (the one rule under which no reply comes).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from agent.commands import COMMANDS
from agent.config import SocketsConfig
from agent.transport import Security
from agent.wire import ERROR_CODES, decode, encode
from testkit.edge_fakes import NO_LIMITS, RecordingControl, ServerThread, dealer

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]

EXECUTING = {"conflict", "not_found", "internal"}
"""Codes a command body may raise after it ran: everything else is refused before it runs."""

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
names = st.one_of(st.sampled_from([*COMMANDS, "help", "", "STATUS"]), st.text(max_size=20))
arg_keys = st.one_of(st.sampled_from(["name", "note", "id", "reason", "x"]), st.text(max_size=8))
arg_values = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["", ".", "..", "../../x", "/", "/tmp", "a" * 65, "ok-name", "x/../y"]),
    json_values,
)
headers = st.fixed_dictionaries(
    {  # mostly well-formed envelopes, so that the deeper layers get fuzzed too
        "v": st.one_of(st.just(1), st.just(1), st.just(1), json_scalars),
        "type": st.one_of(st.just("command"), st.just("command"), st.just("command"), names),
        "command": st.one_of(st.sampled_from(list(COMMANDS)), names, json_values),
    },
    optional={
        "id": st.one_of(st.integers(), st.text(max_size=140), json_values),
        "args": st.one_of(
            st.dictionaries(arg_keys, arg_values, max_size=3),
            st.dictionaries(arg_keys, arg_values, max_size=3),
            json_values,
        ),
        "arrays": json_values,
        "extra": json_values,
    },
)


@st.composite
def messages(draw: st.DrawFn) -> list[bytes]:
    """One request: a (possibly mangled) JSON header and (possibly) more frames."""
    head = draw(headers)
    raw = json.dumps(head).encode()
    mangle = draw(st.integers(0, 9))
    if mangle == 0:
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif mangle == 1:
        i = draw(st.integers(0, max(0, len(raw) - 1)))
        raw = raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i + 1 :]
    elif mangle == 2:
        raw = draw(st.binary(max_size=64))
    elif mangle == 3:
        raw = raw + b" " * draw(st.sampled_from([0, 5000]))  # over the 4 KiB test cap
    extra = draw(st.lists(st.binary(max_size=32), max_size=2))
    if draw(st.integers(0, 19)) == 0:
        extra.append(b"z" * 5000)
    return [raw, *extra]


def check(reply_frames: list[bytes], before: int, control: RecordingControl) -> str:
    msg = decode(reply_frames, max_header_bytes=1 << 24)
    assert msg.type == "reply" and not msg.arrays
    head = msg.header
    assert isinstance(head["ok"], bool)
    rid = head.get("id")
    assert rid is None or (isinstance(rid, str | int) and not isinstance(rid, bool))
    if head["ok"]:
        return "ok"
    code = head["error"]["code"]
    assert code in ERROR_CODES, head
    assert isinstance(head["error"]["message"], str)
    if code not in EXECUTING:
        assert control.count() == before, f"refused with {code} but executed {head}"
    return code


@pytest.fixture(scope="module", autouse=True)
def hypothesis_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Hypothesis keeps its caches under the test's temporary directory, not the checkout."""
    set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))
    yield
    set_hypothesis_home_dir(None)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[zmq.Socket[bytes], RecordingControl, ServerThread, dict[str, int]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    control = RecordingControl()
    sec = Security(SocketsConfig())
    sec.start(ctx)
    srv = ServerThread(ctx, sec, control)
    sock = dealer(ctx, srv.start(), timeout_ms=5000)
    tally: dict[str, int] = {}
    yield sock, control, srv, tally
    sock.close(0)
    srv.stop()
    sec.stop()
    ctx.term()
    assert srv.error is None


def _round_trip(server: Any, frames: list[bytes]) -> None:
    sock, control, _, tally = server
    before = control.count()
    sock.send_multipart(frames)
    reply = sock.recv_multipart()
    if frames[0] == b"":  # read as a REQ envelope: the empty delimiter comes back first
        assert reply[0] == b""
        reply = reply[1:]
    code = check(reply, before, control)
    tally[code] = tally.get(code, 0) + 1


@settings(
    max_examples=260,
    deadline=2000,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(batch=st.lists(messages(), min_size=20, max_size=20))
def test_hypothesis_fuzzed_commands_are_each_answered_with_a_documented_code(
    server: Any, batch: list[list[bytes]]
) -> None:
    for frames in batch:
        _round_trip(server, frames)


def test_raw_byte_fuzz_is_each_answered_with_a_documented_code(server: Any) -> None:
    rng = np.random.default_rng(7)
    valid = [encode("command", {"id": i, "command": c}) for i, c in enumerate(COMMANDS)]
    valid += [
        encode("command", {"id": "m", "command": "mark-condition", "args": {"name": "glare"}}),
        encode("command", {"id": "p", "command": "promote", "args": {"id": "/tmp/x"}}),
    ]
    for i in range(5000):
        base = [bytes(f) for f in valid[i % len(valid)]]
        kind = i % 6
        if kind == 0:  # random bytes, random frame count
            frames = [rng.bytes(int(rng.integers(0, 200))) for _ in range(int(rng.integers(1, 4)))]
        elif kind == 1:  # bit flips
            b = bytearray(base[0])
            for _ in range(int(rng.integers(1, 4))):
                b[int(rng.integers(0, len(b)))] ^= 1 << int(rng.integers(0, 8))
            frames = [bytes(b)]
        elif kind == 2:  # truncation
            frames = [base[0][: int(rng.integers(0, len(base[0])))]]
        elif kind == 3:  # oversize, one frame or several
            n = int(rng.integers(NO_LIMITS.max_message_bytes + 1, NO_LIMITS.max_frame_bytes))
            frames = [base[0], b"\0" * n] if i % 12 == 3 else [b"{" * n]
        elif kind == 4:  # the valid header plus junk frames
            frames = [base[0], *(rng.bytes(8) for _ in range(int(rng.integers(1, 3))))]
        else:  # splice two headers
            other = valid[int(rng.integers(0, len(valid)))][0]
            cut = int(rng.integers(0, len(base[0])))
            frames = [base[0][:cut] + bytes(other)[cut:]]
        _round_trip(server, frames)


def test_fuzz_volume_and_server_health(server: Any) -> None:
    """Runs last in this module: >= 10,000 answered, the server alive, valid commands work."""
    _, control, srv, tally = server
    before = control.count()
    _round_trip(server, encode("command", {"id": "final", "command": "status"}))
    assert control.count() == before + 1
    total = sum(tally.values())
    assert total >= 10_000, tally
    assert srv.alive and srv.error is None
    assert tally.get("too_large", 0) > 100 and tally.get("bad_json", 0) > 100, tally
    print(json.dumps({"answered": total, "codes": tally}))
