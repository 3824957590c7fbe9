"""The trainer side for tests and benches: tiny bundles, synthetic exports, a trainer
process, an in-process job service, a raw protocol client and a line-cutting proxy.

These helpers stay torch-light (torch only inside :func:`make_parent`) so the tests are fast;
the exports are real ``robot-agent-dataset`` v1 directories.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from agent.export import DATASET_FORMAT, DATASET_VERSION
from agent.spec import DEFAULT_SPEC
from agent.wire import Message, decode, encode
from testkit.net import free_port, wait_for
from testkit.procs import ModuleProcess

__all__ = [
    "TINY_FINETUNE",
    "Client",
    "Proxy",
    "TrainerProcess",
    "free_port",
    "make_export",
    "make_parent",
    "running_service",
    "wait_for",
    "write_service_config",
]

REPO = Path(__file__).resolve().parents[1]


def make_parent(store: Path, seed: int = 0) -> str:
    """A tiny random policy bundle under ``store/<id>``; returns its id."""
    import torch

    from testkit.qnet import TINY
    from trainer.export import make_bundle
    from trainer.qnet import QNet

    torch.manual_seed(seed)
    b = make_bundle(QNet(TINY).eval(), {"condition": "baseline"}, store)
    return b.id


def make_export(dest: Path, grasps: int, condition: str, seed: int = 0) -> Path:
    """A robot-agent-dataset v1 export of ``grasps`` one-step grasps (success iff x > 0)."""
    rng = np.random.default_rng(seed)
    n = grasps
    actions = rng.uniform(-1, 1, (n, DEFAULT_SPEC.action_dim)).astype(np.float32)
    success = actions[:, 0] > 0
    arrays: dict[str, np.ndarray[Any, Any]] = {
        "images": rng.integers(0, 256, (n, *DEFAULT_SPEC.image_shape), dtype=np.uint8),
        "actions": actions,
        "rewards": success.astype(np.float32),
        "dones": np.ones(n, np.bool_),
        "grasp_ids": np.arange(1, n + 1, dtype=np.int64),
        "steps": np.zeros(n, np.int32),
        "successes": success,
    }
    dest.mkdir(parents=True)
    for k, v in arrays.items():
        np.save(dest / f"{k}.npy", v, allow_pickle=False)
    records = [
        {
            "grasp_id": i + 1,
            "policy_id": "p",
            "t_start": 1.0 + i,
            "t_end": 2.0 + i,
            "mode": "explore",
            "success": bool(success[i]),
            "reward": float(success[i]),
            "q": 0.5,
            "sensed_by": "test",
        }
        for i in range(n)
    ]
    (dest / "grasps.json").write_text(json.dumps(records))
    index = {
        "format": DATASET_FORMAT,
        "version": DATASET_VERSION,
        "condition": condition,
        "condition_note": "",
        "created_at": 1000.0 + seed,
        "spec": DEFAULT_SPEC.to_dict(),
        "transitions": n,
        "grasps": n,
        "successes": int(success.sum()),
        "policies": ["p"],
        "arrays": {
            k: {"file": f"{k}.npy", "dtype": v.dtype.name, "shape": list(v.shape)}
            for k, v in arrays.items()
        },
    }
    (dest / "index.json").write_text(json.dumps(index))
    return dest


TINY_FINETUNE = {
    "max_steps": 80,
    "lr": 0.01,
    "holdout": 0.25,
    "eval_every": 10,
    "patience": 2,
    "batch_size": 16,
    "augment": "off",
    "probe_steps": 10,
    "threads": 1,
    "device": "cpu",
    "checkpoint_every": 10,
    "min_gain": 0.0,
    "se_margin": 0.0,
    "prior_tolerance": 1.0,
    "max_eval": 64,
}
"""The real fine-tune recipe on a tiny budget (about 2 s per job on the tiny network). With
200-grasp exports of :func:`make_export` it returned "improved" for 30 of 30 data/parent seeds
(40 steps at the recipe's lr: 9 of 10; the held-out set is then too small to be sure)."""


def write_service_config(
    path: Path, data_dir: Path, port: int, finetune: dict[str, Any] | None = None, **service: Any
) -> Path:
    """A trainer.toml for tests: loopback port, 64 KiB chunks, fast heartbeats."""
    s = {
        "endpoint": f"tcp://127.0.0.1:{port}",
        "data_dir": str(data_dir),
        "max_chunk_bytes": 65536,
        "credit": 4,
        "heartbeat_s": 0.2,
        "progress_interval_s": 0.0,
        **service,
    }

    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        return repr(v)

    lines = ["[service]", *(f"{k} = {val(v)}" for k, v in s.items()), "", "[finetune]"]
    lines += [f"{k} = {val(v)}" for k, v in (finetune or TINY_FINETUNE).items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class Client:
    """A raw DEALER speaking the job protocol (for protocol-level tests)."""

    def __init__(self, endpoint: str, agent: str = "raw", max_bytes: int = 1 << 22) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.agent = agent
        self.max_bytes = max_bytes
        self.rid = 0

    def send(self, type_: str, header: dict[str, Any], data: bytes | None = None) -> None:
        arrays = None if data is None else {"data": np.frombuffer(data, np.uint8)}
        head = {"agent": self.agent, **header}
        self.sock.send_multipart(encode(type_, head, arrays, max_bytes=self.max_bytes))

    def recv(self, timeout_s: float = 5.0) -> Message | None:
        if not self.sock.poll(int(timeout_s * 1000)):
            return None
        return decode(self.sock.recv_multipart(), max_bytes=self.max_bytes)

    def request(
        self, type_: str, header: dict[str, Any], data: bytes | None = None, timeout_s: float = 5.0
    ) -> Message:
        """Send and return the reply carrying this request's ``rid`` (pushes are skipped)."""
        self.rid += 1
        self.send(type_, {"rid": self.rid, **header}, data)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = self.recv(deadline - time.monotonic())
            if msg is not None and msg.header.get("rid") == self.rid:
                return msg
        raise AssertionError(f"no reply to {type_} within {timeout_s} s")

    def close(self) -> None:
        self.sock.close(0)


class TrainerProcess(ModuleProcess):
    """``python -m trainer.cli serve --config ...`` as a child process."""

    def __init__(
        self, config: Path, log: Path, port: int, env: dict[str, str] | None = None
    ) -> None:
        super().__init__(["trainer.cli", "serve", "--config", str(config)], log, env)
        self.config = config
        self.endpoint = f"tcp://127.0.0.1:{port}"

    def start(self, timeout_s: float = 30.0) -> TrainerProcess:
        """Spawn it and wait until it answers a ping."""
        proc = self.spawn()
        c = Client(self.endpoint)
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise AssertionError(f"trainer exited: {self.log.read_text()[-2000:]}")
                c.send("ping", {})
                if c.recv(0.5) is not None:
                    return self
            raise AssertionError("trainer did not answer")
        finally:
            c.close()

    def jobs(self) -> dict[str, Any]:
        c = Client(self.endpoint)
        try:
            return c.request("jobs", {}).header
        finally:
            c.close()

    def stop(self) -> int:
        """SIGTERM (SIGKILL after 30 s); its exit code, 0 if it never started."""
        rc = self.terminate(30)
        return 0 if rc is None else int(rc)


class Proxy:
    """A ROUTER<->DEALER relay between one link and the trainer that can cut the line or
    corrupt a chunk, to test resumption and checksums on real sockets."""

    def __init__(self, port: int, upstream: str) -> None:
        self.port = port
        self.upstream = upstream
        self.chunks = 0
        self.cut_after: int | None = None
        self.corrupt_chunk: int | None = None
        self.down_s = 1.0
        self.cuts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Proxy:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        while not self._stop.is_set():
            front = ctx.socket(zmq.ROUTER)
            back = ctx.socket(zmq.DEALER)
            for s in (front, back):
                s.setsockopt(zmq.LINGER, 0)
            front.bind(f"tcp://127.0.0.1:{self.port}")
            back.connect(self.upstream)
            cut = self._relay(front, back)
            front.close(0)
            back.close(0)
            if cut:
                self.cuts += 1
                time.sleep(self.down_s)

    def _relay(self, front: zmq.Socket[bytes], back: zmq.Socket[bytes]) -> bool:
        poller = zmq.Poller()
        poller.register(front, zmq.POLLIN)
        poller.register(back, zmq.POLLIN)
        ident = b""
        while not self._stop.is_set():
            for sock, _ in poller.poll(50):
                if sock is front:
                    frames = front.recv_multipart()
                    ident, rest = frames[0], frames[1:]
                    if json.loads(rest[0]).get("type") == "chunk":
                        self.chunks += 1
                        if self.chunks == self.corrupt_chunk:
                            data = bytearray(rest[1])
                            data[0] ^= 0xFF
                            rest = [rest[0], bytes(data)]
                        if self.cut_after is not None and self.chunks > self.cut_after:
                            self.cut_after = None
                            return True
                    back.send_multipart(rest)
                elif ident:
                    front.send_multipart([ident, *back.recv_multipart()])
                else:
                    back.recv_multipart()
        return False


@contextlib.contextmanager
def running_service(
    tmp_path: Path, finetune: dict[str, Any], max_chunk_bytes: int, **service: Any
) -> Iterator[Any]:
    """An in-process ``JobService`` on a free loopback port (data under ``tmp_path/trainer``,
    credit 4, heartbeats every 0.2 s, ``service`` overrides), served on a thread until the
    block ends."""
    from trainer.service import JobService
    from trainer.service_config import service_config_from_dict

    base = {
        "endpoint": "tcp://127.0.0.1:*",
        "data_dir": str(tmp_path / "trainer"),
        "max_chunk_bytes": max_chunk_bytes,
        "credit": 4,
        "heartbeat_s": 0.2,
    }
    svc = JobService(service_config_from_dict({"service": base | service, "finetune": finetune}))
    svc.start()
    t = threading.Thread(target=svc.run, daemon=True)
    t.start()
    try:
        yield svc
    finally:
        svc.stop.set()
        t.join(30)
        svc.close()
