"""Regression tests for the protocol findings of issue 9 (item 8), over real loopback sockets."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from agent.commands import COMMANDS, dispatch
from agent.config import SocketsConfig
from agent.transport import Security
from agent.wire import ERROR_CODES, MAX_HEADER_BYTES, WireError, decode, encode
from testkit.edge_fakes import NO_LIMITS, RecordingControl, ServerThread, command_server, dealer

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def served() -> Iterator[tuple[str, RecordingControl, ServerThread]]:
    with command_server() as (endpoint, control, srv, _):
        yield endpoint, control, srv


def _ask(sock: zmq.Socket[bytes], frames: list[bytes]) -> dict[str, Any]:
    sock.send_multipart(frames)
    msg = decode(sock.recv_multipart(), max_header_bytes=1 << 24)
    assert msg.type == "reply"
    return msg.header


def _cmd(command: str, req_id: Any = 1, **args: Any) -> list[bytes]:
    return encode("command", {"id": req_id, "command": command, "args": args})


def _local_reply(frames: list[bytes]) -> dict[str, Any]:
    control = RecordingControl()
    reply = decode(dispatch(control, frames, 4096), max_header_bytes=1 << 24).header
    if not reply["ok"] and reply["error"]["code"] not in ("conflict", "not_found", "internal"):
        assert control.calls == [], "a refused request must change nothing"
    return reply


def test_single_oversize_frame_gets_too_large(served: Any) -> None:
    endpoint, control, _ = served
    sock = dealer(zmq.Context.instance(), endpoint)
    big = b"x" * (NO_LIMITS.max_message_bytes + 1)  # one frame over the cap, under the drop limit
    reply = _ask(sock, [big])
    assert reply["ok"] is False and reply["error"]["code"] == "too_large"
    reply = _ask(sock, [b'{"v":1,"type":"command","pad":"' + b"y" * 5000 + b'"}'])
    assert reply["error"]["code"] == "too_large"
    assert control.count() == 0
    assert _ask(sock, _cmd("status"))["ok"]
    sock.close(0)


def test_frame_over_max_frame_bytes_is_dropped_and_server_keeps_serving(served: Any) -> None:
    endpoint, _, srv = served
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = dealer(ctx, endpoint, timeout_ms=500)
    sock.send_multipart([b"x" * (NO_LIMITS.max_frame_bytes + 1)])
    with pytest.raises(zmq.Again):  # the documented drop rule: libzmq closes the connection
        sock.recv_multipart()
    sock.close(0)
    fresh = dealer(ctx, endpoint)
    assert _ask(fresh, _cmd("status"))["ok"] and srv.alive
    fresh.close(0)
    ctx.term()


def test_header_cap_is_64_kib() -> None:
    head, tail = b'{"v":1,"type":"command","p":"', b'"}'
    at_cap = head + b"a" * (MAX_HEADER_BYTES - len(head) - len(tail)) + tail
    assert len(at_cap) == MAX_HEADER_BYTES
    decode([at_cap])
    with pytest.raises(WireError) as ei:
        decode([at_cap[:-2] + b'a"}'])
    assert ei.value.code == "too_large"


@pytest.mark.parametrize("v", [b"true", b"1.0", b'"1"', b"[1]", b"null", b"false"])
def test_bool_version_rejected(v: bytes) -> None:
    reply = _local_reply([b'{"v":' + v + b',"type":"command","id":1,"command":"status"}'])
    assert reply["error"]["code"] == "bad_version"


def test_deeply_nested_header_gets_bad_json_not_a_crash(served: Any) -> None:
    endpoint, _, srv = served
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = dealer(ctx, endpoint)
    for depth in (33, 1500, 30000):  # json.loads alone raises RecursionError at ~1,000
        nested = b'{"v":1,"type":"command","x":' + b"[" * depth + b"]" * depth + b"}"
        if len(nested) <= NO_LIMITS.max_message_bytes:
            assert _ask(sock, [nested])["error"]["code"] == "bad_json"
        with pytest.raises(WireError) as ei:
            decode([nested])  # default caps: 64 KiB header
        assert ei.value.code == "bad_json"
    assert _ask(sock, _cmd("status"))["ok"] and srv.alive
    sock.close(0)
    ctx.term()


def test_bad_header_is_documented() -> None:
    assert _local_reply([b"[1, 2]"])["error"]["code"] == "bad_header"
    assert "bad_header" in ERROR_CODES
    assert "`bad_header`" in (ROOT / "docs" / "agent.md").read_text()


@pytest.mark.parametrize("pid", ["", " ", ".", "..", "../x", "x/../../y", "a\x00b"])
def test_empty_promote_id_rejected(pid: str) -> None:
    assert _local_reply(_cmd("promote", id=pid))["error"]["code"] == "bad_args"


@pytest.mark.parametrize(
    "name", ["", "x/../../../../outside", "..", "a..b", ".hidden", "-x", "a b", "x" * 65, "é"]
)
def test_condition_name_that_could_leave_data_dir_rejected(name: str) -> None:
    reply = _local_reply(_cmd("mark-condition", name=name))
    assert reply["error"]["code"] == "bad_args" and "name" in reply["error"]["message"]


@pytest.mark.parametrize("pid", ["", "../../etc", "/abs/path", "a/b"])
def test_rollback_id_must_be_a_policy_id(pid: str) -> None:
    assert _local_reply(_cmd("rollback", id=pid))["error"]["code"] == "bad_args"


def test_valid_arguments_reach_the_command() -> None:
    for frames in (
        _cmd("mark-condition", name="glare-2.b_c", note="new lamp\tleft"),
        _cmd("promote", id="0123456789abcdef"),
        _cmd("promote", id="/var/lib/robot-agent/incoming/bundle 1"),
        _cmd("rollback", id="0123456789abcdef"),
        _cmd("pause"),
    ):
        control = RecordingControl()
        dispatch(control, frames, 4096)
        assert control.calls, frames


@pytest.mark.parametrize(
    "header",
    [
        {"id": True, "command": "status"},
        {"id": 1.5, "command": "status"},
        {"id": {"a": 1}, "command": "status"},
        {"id": "x" * 129, "command": "status"},
        {"id": 2**60, "command": "status"},
        {"id": 1, "command": "status", "arg": {}},
        {"id": 1, "command": ["status"]},
    ],
)
def test_bad_request_fields_rejected(header: dict[str, Any]) -> None:
    reply = _local_reply(encode("command", header))
    assert reply["error"]["code"] == "bad_request"
    assert reply["id"] in (None, 1)


def test_large_reply_is_not_cut_at_the_request_header_cap() -> None:
    class ManyPolicies(RecordingControl):
        def policies(self) -> list[dict[str, Any]]:  # queries.policies()
            return [{"id": f"{i:016x}", "status": "retired"} for i in range(5000)]

    frames = dispatch(ManyPolicies(), _cmd("policies"), 4096)
    assert len(frames[0]) > MAX_HEADER_BYTES
    reply = decode(frames, max_header_bytes=1 << 24).header
    assert reply["ok"] and len(reply["result"]["policies"]) == 5000


def test_handler_exception_becomes_internal_reply() -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sec = Security(SocketsConfig())

    def boom(frames: Any) -> list[bytes]:
        raise RuntimeError("bug")

    from agent.transport import CommandServer

    server = CommandServer(ctx, "tcp://127.0.0.1:*", 4096, NO_LIMITS)
    ep = server.bind(sec)
    sock = dealer(ctx, ep)
    sock.send_multipart(_cmd("status"))
    deadline = time.monotonic() + 5
    while not server.serve(boom, 50):
        assert time.monotonic() < deadline
    reply = decode(sock.recv_multipart()).header
    assert reply["error"]["code"] == "internal"
    sock.close(0)
    server.close()
    ctx.term()


def test_a_bug_inside_a_command_answers_internal_with_its_traceback_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # a KeyError or ValueError from a bug is not the operator's doing: never not_found/bad_args
    for exc in (KeyError("policy"), ValueError("shape"), RuntimeError("bug")):

        class Broken(RecordingControl):
            def policies(self, _exc: Exception = exc) -> list[dict[str, Any]]:
                raise _exc

        caplog.clear()
        with caplog.at_level("ERROR", logger="agent.commands"):
            reply = decode(dispatch(Broken(), _cmd("policies"), 4096)).header
        assert reply["error"]["code"] == "internal", reply
        assert any(r.exc_info for r in caplog.records), "no traceback logged"


def test_operator_errors_come_from_domain_exceptions_only() -> None:
    import sqlite3

    from agent import lifecycle as lc
    from agent.command_base import CommandError, operator_error

    assert operator_error(CommandError("not_found", "x")) == ("not_found", "x")
    assert operator_error(lc.LifecycleError("no"))[0] == "conflict"  # type: ignore[index]
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL  # as sqlite3 raises it
    assert operator_error(full) == ("storage_full", "database or disk is full")
    assert operator_error(KeyError("x")) is None and operator_error(ValueError("x")) is None


def test_a_queued_change_that_hits_a_bug_answers_internal_and_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from agent.command_thread import ChangeQueue

    posted: list[Any] = []
    replies: list[dict[str, Any]] = []
    queue = ChangeQueue(posted.append, RecordingControl(), replies.append)  # type: ignore[arg-type]

    def change(core: Any) -> dict[str, Any]:
        raise KeyError("a bug")

    queue.enqueue("promote", change)
    with caplog.at_level("ERROR", logger="agent.command_thread"):
        posted[0]()
    assert replies[0]["error"]["code"] == "internal" and replies[0]["ticket"] == 1
    assert any(r.exc_info for r in caplog.records)


def test_each_command_renders_its_own_result_for_ctl() -> None:
    from agent.ctl import format_reply

    stats = {"table": [], "latency_ms": {"p50": 1.5, "n": 3}, "grasps": 0}
    assert "decision latency ms: p50=1.5, n=3" in format_reply(
        "stats", {"ok": True, "result": stats}
    )
    pol = {"policies": [{"id": "a1", "parent_id": None, "status": "active"}]}
    table = format_reply("policies", {"ok": True, "result": pol}).splitlines()
    assert table[0].startswith("id") and table[1].split()[:3] == ["a1", "-", "active"]
    assert format_reply("status", {"ok": True, "result": {"phase": "serving", "x": [1]}}) == (
        "phase: serving\nx: [1]"
    )
    err = {"ok": False, "error": {"code": "conflict", "message": "busy"}}
    assert format_reply("finetune", err) == "error [conflict]: busy"


def test_every_error_code_is_documented() -> None:
    used: set[str] = set()
    for path in sorted((ROOT / "agent").glob("*.py")):
        text = path.read_text()
        used |= set(re.findall(r'CommandError\(\s*"([a-z_]+)"', text))
        used |= set(re.findall(r'error_reply\([^,()]+(?:\([^)]*\))?,\s*"([a-z_]+)"', text))
        if path.name in ("wire.py", "commands.py", "transport.py"):
            used |= set(re.findall(r'WireError\(\s*"([a-z_]+)"', text))
        if path.name == "transport.py":
            used |= set(re.findall(r'_error\(\s*"([a-z_]+)"', text))
    assert {"bad_header", "too_large", "rate_limited", "bad_args"} <= used, "stale patterns"
    assert used <= set(ERROR_CODES), sorted(used - set(ERROR_CODES))
    docs = (ROOT / "docs" / "agent.md").read_text()
    undocumented = [c for c in ERROR_CODES if f"| `{c}` |" not in docs]
    assert not undocumented, undocumented


def test_every_command_declares_its_arguments() -> None:
    for cls in COMMANDS.values():
        assert cls.__doc__ and cls.name
        for p in cls.params:
            assert p.rule and p.max_chars > 0
            assert re.compile(p.pattern)
    assert json.dumps(sorted(COMMANDS))  # names are plain strings


def test_bad_version_reply_echoes_the_request_id() -> None:
    reply = _local_reply([b'{"v":2,"type":"command","id":"req-7","command":"status"}'])
    assert reply["error"]["code"] == "bad_version" and reply["id"] == "req-7"
    unreadable = _local_reply([b'{"v":2,"type":"command","id":[1],"command":"status"}'])
    assert unreadable["error"]["code"] == "bad_version" and unreadable["id"] is None
