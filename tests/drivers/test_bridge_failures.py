"""The bridge link under faults: hangs, freezes, restarts, retries, refusals (real sockets)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import zmq

from agent.driver import DriverUnavailable, GraspOutcome
from agent.spec import DEFAULT_SPEC, Spec
from agent.wire import decode
from drivers.bridge import protocol as proto
from drivers.bridge.client import BridgeDriver
from drivers.bridge.config import BridgeClientConfig, BridgeServerConfig, check_client
from drivers.bridge.server import BridgeServer, Grasp, RobotUnavailable
from testkit.net import free_port

pytestmark = pytest.mark.timeout(30)


class ToyRobot:
    """A counting fake arm: grasps succeed when x > 0; a grasp can be held open by a gate."""

    def __init__(self, grasp_s: float = 0.0) -> None:
        self.grasps: list[Grasp] = []
        self.homes = 0
        self.grasp_s = grasp_s
        self.gate = threading.Event()
        self.gate.set()
        self.refuse = False

    def observe(self) -> npt.NDArray[np.uint8]:
        return np.random.default_rng(len(self.grasps)).integers(0, 255, (64, 64, 3), np.uint8)

    def grasp(self, grasp: Grasp) -> GraspOutcome:
        if self.refuse:
            raise RobotUnavailable("e-stop pressed")
        self.grasps.append(grasp)
        time.sleep(self.grasp_s)
        self.gate.wait(20)
        return GraspOutcome(grasp.x_m > 0, "gripper_width", {"width_m": 0.02})

    def home(self) -> None:
        self.homes += 1


class ServerThread:
    """A BridgeServer served on a thread; ``freeze`` stops its socket loop (no heartbeats)."""

    def __init__(self, robot: Any, port: int, spec: Spec = DEFAULT_SPEC) -> None:
        cfg = BridgeServerConfig(endpoint=f"tcp://127.0.0.1:{port}", heartbeat_s=0.05)
        self.server = BridgeServer(robot, spec, cfg)
        self.stop = threading.Event()
        self.frozen = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.server.start()
        try:
            while not self.stop.is_set():
                if self.frozen.is_set():
                    time.sleep(0.01)
                    continue
                self.server.serve_once(20)
        finally:
            self.server.close()

    def __enter__(self) -> ServerThread:
        self.thread.start()
        assert self.server.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


@pytest.fixture
def port() -> int:
    return free_port()


def client(port: int, timeout_s: float = 0.3, **kw: Any) -> BridgeDriver:
    cfg = BridgeClientConfig(endpoint=f"tcp://127.0.0.1:{port}", timeout_s=timeout_s, **kw)
    return BridgeDriver(cfg)


@pytest.fixture
def hanging_bridge(port: int) -> Iterator[zmq.Socket[bytes]]:
    """A ROUTER that accepts connections and reads requests but never answers."""
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(f"tcp://127.0.0.1:{port}")
    yield sock
    sock.close(0)


def test_hanging_bridge_is_detected_within_the_timeout(
    hanging_bridge: zmq.Socket[bytes], port: int
) -> None:
    d = client(port, timeout_s=0.4, reconnect_min_s=0.05)
    t0 = time.monotonic()
    d.start()  # the bridge is away: start does not fail, the outage shows on the next call
    assert time.monotonic() - t0 < 0.4 + 0.35
    assert hanging_bridge.poll(1000)  # the hello did reach it
    time.sleep(0.06)  # past the backoff: the next call tries again and times out
    t0 = time.monotonic()
    with pytest.raises(DriverUnavailable, match=r"did not answer hello within 0\.4 s"):
        d.observe()
    assert 0.35 < time.monotonic() - t0 < 0.4 + 0.35
    with pytest.raises(DriverUnavailable, match="next try in"):
        d.observe()  # inside the backoff: fails at once, nothing sent
    d.close()


def test_bridge_that_stops_answering_mid_session_is_detected_within_the_timeout(port: int) -> None:
    robot = ToyRobot()
    with ServerThread(robot, port) as srv:
        d = client(port, timeout_s=0.3)
        d.start()
        d.observe()
        srv.frozen.set()  # accepts bytes, never answers
        t0 = time.monotonic()
        with pytest.raises(DriverUnavailable, match=r"did not answer observe within 0\.3 s"):
            d.observe()
        assert time.monotonic() - t0 < 0.3 + 0.35
        srv.frozen.clear()
        time.sleep(d.cfg.reconnect_min_s)
        d.observe()  # reconnected by itself
        d.close()


def test_heartbeats_keep_a_long_grasp_alive(port: int) -> None:
    robot = ToyRobot(grasp_s=1.0)  # > 3 x timeout_s
    with ServerThread(robot, port), client(port, timeout_s=0.3) as d:
        r = d.execute(np.array([0.5, 0, 0], np.float32))
    assert r.outcome is not None and r.outcome.success and r.outcome.sensed_by == "gripper_width"
    assert r.duration_s >= 1.0 and len(robot.grasps) == 1


@contextlib.contextmanager
def gated(port: int) -> Iterator[tuple[ToyRobot, ServerThread, BridgeDriver]]:
    """A robot whose grasps wait for its gate (closed), its bridge served, and a started
    client with a 0.3 s timeout; the client is the caller's to close."""
    robot = ToyRobot()
    robot.gate.clear()
    with ServerThread(robot, port) as srv:
        d = client(port, timeout_s=0.3)
        d.start()
        yield robot, srv, d


def test_bridge_frozen_during_a_grasp_means_outcome_unknown(port: int) -> None:
    with gated(port) as (robot, srv, d):
        threading.Timer(0.2, srv.frozen.set).start()
        t0 = time.monotonic()
        with pytest.raises(DriverUnavailable, match="outcome unknown"):
            d.execute(np.zeros(3, np.float32))
        assert time.monotonic() - t0 < 0.2 + 2 * 0.3 + 0.3  # silence, then one unanswered hello
        robot.gate.set()
        srv.frozen.clear()
        d.close()
    assert len(robot.grasps) == 1


def test_lost_reply_is_recovered_without_grasping_twice(port: int) -> None:
    """A grasp whose bridge went quiet is asked for again by id: attached, never re-run."""
    with gated(port) as (robot, srv, d):
        # the socket loop pauses for longer than timeout_s mid-grasp, then recovers
        threading.Timer(0.1, srv.frozen.set).start()
        threading.Timer(0.5, srv.frozen.clear).start()
        threading.Timer(0.7, robot.gate.set).start()
        r = d.execute(np.array([0.5, 0, 0], np.float32))
        d.close()
    assert r.outcome is not None and r.outcome.success
    assert len(robot.grasps) == 1 and srv.server.executed == 1


def test_retried_execute_is_answered_from_the_cache(port: int) -> None:
    robot = ToyRobot()
    with ServerThread(robot, port) as srv:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(srv.server.endpoint)

        def ask(frames: list[bytes]) -> Any:
            sock.send_multipart(frames)
            while True:
                assert sock.poll(5000)
                msg = decode(sock.recv_multipart())
                if msg.type == "reply":
                    return msg

        hello = ask(proto.request("hello", "h", {"protocol": 1}))
        session = hello.header["result"]["session"]
        act = {"action": np.array([0.5, 0.1, 0.0], np.float32)}
        frames = proto.request("execute", "x-1", {"session": session}, act)
        first, second = ask(frames), ask(frames)
        assert first.header == second.header and first.header["ok"]
        assert len(robot.grasps) == 1 and srv.server.executed == 1
        other = ask(proto.request("execute", "x-2", {"session": session}, act))
        assert other.header["ok"] and len(robot.grasps) == 2
        stale = ask(proto.request("observe", "o", {"session": "old"}))
        assert stale.header["error"]["code"] == "stale_session"
        sock.close(0)


def test_bridge_restarted_during_a_grasp_means_outcome_unknown(port: int) -> None:
    robot = ToyRobot()
    robot.gate.clear()
    srv = ServerThread(robot, port).__enter__()
    d = client(port, timeout_s=0.3)
    d.start()

    def restart() -> None:
        srv.frozen.set()
        time.sleep(0.05)  # a poll in progress ends: the finished grasp is never answered
        robot.gate.set()
        srv.__exit__()

    new = ServerThread(ToyRobot(), port)
    threading.Timer(0.15, restart).start()
    threading.Timer(0.3, new.__enter__).start()
    with pytest.raises(DriverUnavailable, match=r"restarted during a grasp|outcome unknown"):
        d.execute(np.zeros(3, np.float32))
    time.sleep(0.3)
    d.observe()  # the new bridge serves
    assert d.session == new.server.session
    d.close()
    new.__exit__()


def test_robot_refusal_is_an_outage_not_an_error(port: int) -> None:
    robot = ToyRobot()
    robot.refuse = True
    with ServerThread(robot, port), client(port) as d:
        with pytest.raises(DriverUnavailable, match="e-stop pressed"):
            d.execute(np.zeros(3, np.float32))
        robot.refuse = False
        assert d.execute(np.zeros(3, np.float32)).done


def test_missing_optional_operations_say_so(port: int) -> None:
    with ServerThread(ToyRobot(), port), client(port) as d:
        assert d.hello["capabilities"] == []
        with pytest.raises(NotImplementedError, match="shuffle"):
            d.shuffle()


def test_spec_mismatch_is_a_configuration_error(port: int) -> None:
    other = Spec(image_height=32, image_width=32)
    with ServerThread(ToyRobot(), port, spec=other):
        d = client(port)
        with pytest.raises(proto.BridgeError, match="spec"):
            d.start()
        d.close()


def test_client_refuses_exposed_endpoint_without_curve() -> None:
    d = BridgeDriver(BridgeClientConfig(endpoint="tcp://10.1.2.3:5570"))
    with pytest.raises(ValueError, match="CURVE"):
        d.start()


def test_server_refuses_exposed_endpoint_without_curve() -> None:
    srv = BridgeServer(ToyRobot(), DEFAULT_SPEC, BridgeServerConfig(endpoint="tcp://0.0.0.0:5999"))
    with pytest.raises(ValueError, match="CURVE"):
        srv.start()
    srv.close()


@pytest.mark.parametrize(
    ("over", "key"),
    [
        ({"timeout_s": 0.0}, "timeout_s"),
        ({"execute_timeout_s": 9.5}, "execute_timeout_s"),
        ({"endpoint": "http://x"}, "endpoint"),
        ({"curve_server_public": "k"}, "curve_server_public"),
    ],
)
def test_client_config_names_the_bad_key(over: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=f"driver.bridge.{key}"):
        check_client(BridgeClientConfig(**over), "driver.bridge.")


def test_curve_link_works_off_loopback_rules(tmp_path: Any, port: int) -> None:
    import zmq.auth

    keys = tmp_path / "keys"
    clients = tmp_path / "clients"
    keys.mkdir()
    clients.mkdir()
    _, server_secret = zmq.auth.create_certificates(str(keys), "bridge")
    client_public, client_secret = zmq.auth.create_certificates(str(keys), "agent")
    (clients / "agent.key").write_text(Path(client_public).read_text())
    server_public = str(keys / "bridge.key")
    cfg = BridgeServerConfig(
        endpoint=f"tcp://127.0.0.1:{port}",
        curve_server_secret=server_secret,
        curve_clients_dir=str(clients),
    )
    srv = BridgeServer(ToyRobot(), DEFAULT_SPEC, cfg)
    stop = threading.Event()
    th = threading.Thread(target=srv.run, args=(stop,), daemon=True)
    th.start()
    assert srv.ready.wait(10)
    good = BridgeClientConfig(
        endpoint=f"tcp://127.0.0.1:{port}",
        curve_server_public=server_public,
        curve_client_secret=client_secret,
    )
    with BridgeDriver(good) as d:
        assert d.observe().image.shape == (64, 64, 3)
    _, stranger_secret = zmq.auth.create_certificates(str(keys), "stranger")
    bad = BridgeClientConfig(
        endpoint=f"tcp://127.0.0.1:{port}",
        timeout_s=0.3,
        curve_server_public=server_public,
        curve_client_secret=stranger_secret,
    )
    with BridgeDriver(bad) as d, pytest.raises(DriverUnavailable):
        d.observe()
    stop.set()
    th.join(10)


def test_grasp_overrunning_execute_timeout_is_an_outage_not_a_retry(port: int) -> None:
    robot = ToyRobot()
    robot.gate.clear()  # heartbeats keep coming, the grasp never ends
    with ServerThread(robot, port):
        d = client(port, timeout_s=0.3, execute_timeout_s=0.6)
        d.start()
        t0 = time.monotonic()
        with pytest.raises(DriverUnavailable, match=r"still running after 0\.6 s"):
            d.execute(np.zeros(3, np.float32))
        assert 0.55 < time.monotonic() - t0 < 0.6 + 0.35
        assert len(robot.grasps) == 1
        robot.gate.set()
        d.close()


def test_local_camera_replaces_the_bridge_observe(tmp_path: Path, port: int) -> None:
    import cv2

    from drivers.camera import Camera, CameraConfig

    video = tmp_path / "cam.avi"
    out = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (80, 80))
    for _ in range(5):
        out.write(np.full((80, 80, 3), (0, 200, 0), np.uint8))  # green: not the robot's image
    out.release()
    robot = ToyRobot()
    cfg = BridgeClientConfig(endpoint=f"tcp://127.0.0.1:{port}", timeout_s=0.3)
    camera = Camera(CameraConfig(source=str(video)))
    with ServerThread(robot, port), BridgeDriver(cfg, camera=camera) as d:
        obs = d.observe()
        r, g, b = obs.image.reshape(-1, 3).mean(0)
        assert g > 150 and r < 50 and b < 50
        assert d.execute(np.array([0.5, 0, 0], np.float32)).done
        for _ in range(4):
            d.observe()
        with pytest.raises(DriverUnavailable, match="stopped delivering"):
            d.observe()  # the camera ran dry: an outage, nothing executed
    assert len(robot.grasps) == 1


def test_garbage_requests_get_error_replies_and_the_bridge_serves_on(port: int) -> None:
    with ServerThread(ToyRobot(), port) as srv:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(srv.server.endpoint)
        codes = []
        for frames in (
            [b"not json"],
            [b'{"v": 9, "type": "hello", "id": "a"}'],
            [b'{"v": 1, "type": "hello"}'],
            [b'{"v": 1, "type": "dance", "id": "b"}'],
            [b'{"v": 1, "type": "hello", "id": "c", "protocol": 7}'],
            [b'{"v": 1, "type": "execute", "id": "d", "session": "nope"}'],
        ):
            sock.send_multipart(frames)
            assert sock.poll(5000)
            codes.append(decode(sock.recv_multipart()).header["error"]["code"])
        assert codes == [
            "bad_json",
            "bad_version",
            "bad_request",
            "bad_request",
            "bad_protocol",
            "stale_session",
        ]
        sock.close(0)
        with client(port) as d:
            assert d.observe().image.shape == (64, 64, 3)
