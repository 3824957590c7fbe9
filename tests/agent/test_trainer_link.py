"""The agent's trainer link against a real `robot-trainer serve` process over loopback.

Real sockets, a real trainer process running the real fine-tune recipe on a tiny network and
budget (testkit/trainer.py), real files. A relay between link and trainer cuts the
line and corrupts a chunk to test resumption and checksums.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from agent.bundle import validate_bundle
from agent.config import config_from_dict
from agent.link import TrainerLink
from testkit.trainer import (
    TINY_FINETUNE,
    Proxy,
    TrainerProcess,
    free_port,
    make_export,
    make_parent,
    wait_for,
    write_service_config,
)

pytestmark = pytest.mark.timeout(90)


class Recorder:
    """Collects on_result and on_status calls (from the link's thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.results: list[tuple[Path, int]] = []
        self.statuses: list[tuple[int, str, dict[str, Any]]] = []

    def on_result(self, path: Path, job: int) -> None:
        with self.lock:
            self.results.append((path, job))

    def on_status(self, job: int, status: str, detail: dict[str, Any]) -> None:
        with self.lock:
            self.statuses.append((job, status, detail))

    def of(self, job: int) -> list[str]:
        with self.lock:
            return [s for j, s, _ in self.statuses if j == job]

    def result(self, job: int, timeout_s: float = 60.0) -> Path:
        """The bundle of ``job``; fails at once if the job ended without one."""

        def ended() -> bool:
            return any(j == job for _, j in self.results) or any(
                s in ("no_improvement", "failed") for s in self.of(job)
            )

        wait_for(ended, timeout_s, f"result of {job}")
        with self.lock:
            got = [p for p, j in self.results if j == job]
        assert got, f"job {job} ended without a bundle: {self.statuses[-3:]}"
        return got[0]


def make_link(
    root: Path, endpoint: str, agent_id: str, store: Path, **trainer: Any
) -> tuple[TrainerLink, Recorder]:
    cfg = config_from_dict(
        {
            "agent": {"data_dir": str(root)},
            "trainer": {
                "endpoint": endpoint,
                "agent_id": agent_id,
                "chunk_bytes": 65536,
                "heartbeat_s": 0.2,
                "timeout_s": 1.0,
                "backoff_min_s": 0.2,
                "backoff_max_s": 1.0,
                **trainer,
            },
        }
    )
    rec = Recorder()
    link = TrainerLink(cfg, store, rec.on_result, rec.on_status)
    link.start()
    return link, rec


def trainer(
    tmp_path: Path, name: str = "trainer", finetune: dict[str, Any] | None = None
) -> TrainerProcess:
    port = free_port()
    cfg = write_service_config(tmp_path / f"{name}.toml", tmp_path / name, port, finetune)
    return TrainerProcess(cfg, tmp_path / f"{name}.log", port)


def _job_rows(tr: TrainerProcess) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = tr.jobs()["jobs"]
    return rows


def test_job_end_to_end_over_loopback_with_lineage(tmp_path: Path) -> None:
    tr = trainer(tmp_path).start()
    store = tmp_path / "agent" / "policies"
    parent = make_parent(store)
    link, rec = make_link(tmp_path / "agent", tr.endpoint, "robot-a", store)
    try:
        export = make_export(tmp_path / "x" / "job-1", 200, "checkerboard", seed=1)
        link.submit(1, export, parent)
        child = validate_bundle(rec.result(1))
        assert child.parent_id == parent
        seq = rec.of(1)
        for a, b in [("uploading", "queued"), ("queued", "training"), ("training", "improved")]:
            assert seq.index(a) < seq.index(b), seq
        wait_for(lambda: _job_rows(tr)[0]["state"] == "acknowledged", 10, "acknowledged")
        # the trainer held the whole dataset: the export is gone from the robot
        assert not export.exists() and link.records.get(1).export_removed  # type: ignore[union-attr]
        # The child becomes the parent of the next job, in another condition: the trainer
        # already holds it (not uploaded again), and the lineage's first condition is prior.
        shutil.copytree(child.path, store / child.id)
        link.submit(
            2, make_export(tmp_path / "x" / "job-2", 200, "harsh_lighting", seed=2), child.id
        )
        second = validate_bundle(rec.result(2))
        assert second.parent_id == child.id
        first_key = _job_rows(tr)[0]["key"]
        prior = [p["path"] for p in second.meta["data"]["prior"]]
        assert any(f"lineages/robot-a/{first_key}" in p for p in prior), prior
        counters = tr.jobs()["counters"]
        assert counters["parent.upload"] == 1 and counters["parent.already_held"] == 1
        assert counters.get("chunks.duplicate", 0) == 0
    finally:
        link.close()
        assert tr.stop() == 0


def test_disconnect_mid_upload_resumes_with_only_missing_chunks(tmp_path: Path) -> None:
    tr = trainer(tmp_path).start()
    store = tmp_path / "agent" / "policies"
    parent = make_parent(store)
    proxy = Proxy(free_port(), tr.endpoint)
    proxy.cut_after = 12  # the 13th chunk message never arrives
    proxy.down_s = 2.0  # longer than the link's timeout_s: it must notice and reconnect
    proxy.corrupt_chunk = 5  # one byte flipped in transit
    proxy.start()
    link, rec = make_link(tmp_path / "agent", f"tcp://127.0.0.1:{proxy.port}", "robot-b", store)
    try:
        link.submit(7, make_export(tmp_path / "x" / "job-7", 200, "transparent", seed=3), parent)
        validate_bundle(rec.result(7))
        info = tr.jobs()
        counters = info["counters"]
        total = counters["chunks.written"]
        assert proxy.cuts == 1
        assert "waiting" in rec.of(7)  # the link told the daemon the trainer was away
        assert counters["chunks.rejected"] == 1 and link.stats["chunks_rejected"] == 1
        assert counters.get("chunks.duplicate", 0) == 0  # nothing the trainer had came again
        # sent = every chunk once + the corrupted one again + those lost in the cut (<= credit)
        assert total + 1 <= link.stats["chunks_sent"] <= total + 1 + 4
        assert link.stats["connects"] >= 2
    finally:
        link.close()
        proxy.close()
        tr.stop()


def test_trainer_sigkilled_mid_job_resumes_and_delivers_once(tmp_path: Path) -> None:
    port = free_port()
    slow = {
        "max_steps": 160,
        "lr": 0.01,
        "holdout": 0.25,
        "eval_every": 20,
        "patience": 100,
        "batch_size": 16,
        "augment": "off",
        "threads": 1,
        "device": "cpu",
        "checkpoint_every": 20,
        "min_gain": 0.0,
        "se_margin": 0.0,
        "prior_tolerance": 1.0,
        "max_eval": 32,
    }
    cfg = write_service_config(tmp_path / "t.toml", tmp_path / "trainer", port, finetune=slow)
    tr = TrainerProcess(cfg, tmp_path / "trainer.log", port).start()
    store = tmp_path / "agent" / "policies"
    parent = make_parent(store)
    link, rec = make_link(tmp_path / "agent", tr.endpoint, "robot-c", store)
    try:
        link.submit(3, make_export(tmp_path / "x" / "job-3", 200, "offset", seed=4), parent)

        def trained_some() -> bool:
            with rec.lock:
                steps = [d.get("step", 0) for _, s, d in rec.statuses if s == "training"]
            return any(isinstance(x, int) and x >= 20 for x in steps)

        wait_for(trained_some, 60, "training progress past the first checkpoint")
        tr.kill()
        time.sleep(0.5)
        tr.start()
        try:
            path = rec.result(3, timeout_s=75)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; trainer log:\n{tr.log.read_text()[-3000:]}") from exc
        validate_bundle(path)
        wait_for(lambda: link.phases().get(3) == "done", 10, "acknowledged")
        time.sleep(0.5)
        assert [j for _, j in rec.results] == [3]  # the link received the result once
        rows = _job_rows(tr)
        assert len(rows) == 1 and rows[0]["state"] == "acknowledged" and rows[0]["attempts"] == 2
        bundles = sorted(p.name for p in (tmp_path / "trainer" / "bundles").iterdir())
        assert bundles == sorted([parent, path.name])  # no duplicate bundle
        log = (tmp_path / "trainer.log").read_text()
        assert "was training when the trainer went down: resuming" in log
    finally:
        link.close()
        tr.stop()


def test_three_agents_on_one_trainer_fifo(tmp_path: Path) -> None:
    tr = trainer(tmp_path).start()
    links = []
    try:
        for i, name in enumerate(("r1", "r2", "r3")):
            store = tmp_path / name / "policies"
            parent = make_parent(store, seed=i)
            link, rec = make_link(tmp_path / name, tr.endpoint, name, store)
            links.append((link, rec))
            export = make_export(tmp_path / name / "exports" / "job-1", 200, "checkerboard", i)
            link.submit(1, export, parent)
            time.sleep(0.3)  # submissions in a known order
        for _, rec in links:
            validate_bundle(rec.result(1, timeout_s=75))
        rows = sorted(_job_rows(tr), key=lambda r: r["seq"])
        assert [r["agent"] for r in rows] == ["r1", "r2", "r3"]
        starts = [r["started_at"] for r in rows]
        ends = [r["finished_at"] for r in rows]
        assert starts == sorted(starts)
        assert all(ends[i] <= starts[i + 1] for i in range(2))  # one job at a time, FIFO
        for name in ("r1", "r2", "r3"):  # each agent's lineage on the trainer's disk
            assert len(list((tmp_path / "trainer" / "lineages" / name).iterdir())) == 1
    finally:
        for link, _ in links:
            link.close()
        tr.stop()


def test_curve_link_no_improvement_and_wrong_key_refused(tmp_path: Path) -> None:
    import zmq.auth

    from testkit.curve import make_keys
    from testkit.trainer import Client
    from trainer.service import JobService
    from trainer.service_config import service_config_from_dict

    keys = make_keys(tmp_path)
    cfg = service_config_from_dict(
        {
            "service": {
                "endpoint": f"tcp://0.0.0.0:{free_port()}",  # off loopback: CURVE required
                "data_dir": str(tmp_path / "trainer"),
                "max_chunk_bytes": 65536,
                "heartbeat_s": 0.2,
                "curve_server_secret": keys.server_secret,
                "curve_clients_dir": keys.clients,
            },
            # the strict gate: nothing can beat the parent by 1.0
            "finetune": {**TINY_FINETUNE, "gate": "strict", "min_gain": 1.0},
        }
    )
    svc = JobService(cfg)
    endpoint = svc.start().replace("0.0.0.0", "127.0.0.1")
    t = threading.Thread(target=svc.run, daemon=True)
    t.start()
    store = tmp_path / "agent" / "policies"
    parent = make_parent(store)
    link, rec = make_link(
        tmp_path / "agent",
        endpoint,
        "robot-d",
        store,
        curve_server_public=keys.server_public,
        curve_client_secret=keys.client_secret,
    )
    try:
        link.submit(4, make_export(tmp_path / "x" / "job-4", 200, "checkerboard", seed=5), parent)
        wait_for(lambda: link.phases().get(4) == "done", 60, "job 4 acknowledged")
        assert "no_improvement" in rec.of(4) and rec.results == []
        intruder = Client(endpoint, agent="intruder")
        ipub, isec = zmq.auth.load_certificate(keys.stranger_secret)
        intruder.sock.close(0)
        intruder.sock = intruder.ctx.socket(zmq.DEALER)
        intruder.sock.setsockopt(zmq.LINGER, 0)
        intruder.sock.curve_serverkey = zmq.auth.load_certificate(keys.server_public)[0]
        intruder.sock.curve_publickey, intruder.sock.curve_secretkey = ipub, isec
        intruder.sock.connect(endpoint)
        intruder.send("jobs", {})
        assert intruder.recv(1.0) is None  # unknown key: the handshake fails, nothing runs
        intruder.close()
    finally:
        link.close()
        svc.stop.set()
        t.join(30)
        svc.close()


def test_daemon_wired_to_the_link_swaps_in_the_trained_child(tmp_path: Path) -> None:
    """The wiring ``robot-agent run`` hands the daemon (agent.cli._attach_trainer_link), end
    to end: mark a condition, explore, export, job, fine-tune on the trainer, bundle back,
    swap."""
    from agent.ctl import request
    from testkit.daemon import linked_config, linked_daemon, serve, stop_linked
    from testkit.fakes import FakeDriver

    class LearnableDriver(FakeDriver):
        """Grasps succeed iff the action's x is above the median x so far: something a
        fine-tune can learn, with both outcomes whatever actions the serving policy picks."""

        xs: ClassVar[list[float]] = []

        def execute(self, action: Any) -> Any:
            res = super().execute(action)
            x = float(action[0])
            ok = bool(x > float(np.median(self.xs))) if len(self.xs) >= 5 else x > 0
            self.xs.append(x)
            outcome = type(res.outcome)(success=ok, sensed_by="fake", detail={})
            return type(res)(reward=float(ok), done=True, outcome=outcome, duration_s=0.0)

    # this test is about the wiring, not the recipe's verdict: 80 grasps of a learnable
    # driver returned "no improvement" once in a clean CI run (the held-out 20 grasps could
    # not show the gain), so any validated child ships
    tr = trainer(tmp_path, finetune={**TINY_FINETUNE, "min_gain": -1.0, "min_auc": 0.0}).start()
    incoming = tmp_path / "incoming"
    base = make_parent(incoming)
    cfg = linked_config(tmp_path, incoming / base, tr.endpoint, "robot-w", 80)
    daemon, link = linked_daemon(cfg, LearnableDriver())
    th = serve(daemon)
    try:
        ep = daemon.endpoints["commands"]
        # the median is over this condition's grasps only: how many ran before the mark
        # depends on the machine's speed, and made the labels (and the verdict) vary
        LearnableDriver.xs.clear()
        assert request(ep, "mark-condition", {"name": "checkerboard"})["ok"]

        def swapped() -> bool:
            snap = daemon.snapshot()
            return snap["policy"] not in (None, base) and snap["condition"] == "checkerboard"

        wait_for(swapped, 80, "the trained child serving")
        child = daemon.snapshot()["policy"]
        meta = validate_bundle(daemon.store / child).meta
        assert meta["parent_id"] == base and meta["condition"] == "checkerboard"
        wait_for(lambda: link.phases().get(1) == "done", 10, "result acknowledged")
    finally:
        stop_linked(daemon, th, link)
        tr.stop()


@pytest.mark.parametrize(
    ("trainer_table", "needle"),
    [
        ({"endpoint": "tcp://10.0.0.7:5570"}, "needs CURVE"),
        ({"endpoint": "http://x"}, "allowed schemes"),
        ({"agent_id": "../up"}, "trainer.agent_id"),
        ({"curve_server_public": "k"}, "set together"),
        ({"timeout_s": 0.5, "heartbeat_s": 1.0}, "trainer.timeout_s"),
    ],
)
def test_trainer_config_refuses_unsafe_values(trainer_table: dict[str, Any], needle: str) -> None:
    from plumbing.config_loader import ConfigError

    with pytest.raises(ConfigError, match=needle):
        config_from_dict({"trainer": trainer_table})


def test_download_rejects_bad_chunks_and_refetches_a_file_failing_its_whole_checksum(
    tmp_path: Path,
) -> None:
    from agent.jobwire import FileEntry, Manifest, chunk_sha, manifest_of_dir
    from agent.link.transfer import BundleDownload

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(bytes(range(256)) * 40)  # 10240 bytes: 3 chunks of 4096
    (src / "b.bin").write_bytes(b"b" * 100)
    good = manifest_of_dir(src, 4096)
    data = (src / "a.bin").read_bytes()
    chunks = [data[i : i + 4096] for i in range(0, len(data), 4096)]
    dl = BundleDownload(good, tmp_path / "x.partial", tmp_path / "x")
    dl.start()
    assert [dl.take(8, 0.0) for _ in range(5)][-1] is None  # 4 chunks in all, window 8
    flipped = bytes([chunks[0][0] ^ 0xFF]) + chunks[0][1:]
    assert not dl.on_data("a.bin", 0, flipped, chunk_sha(chunks[0]), 0.0)
    assert dl.rejected == 1 and ("a.bin", 0) in dl.pending  # asked for again
    for i, c in enumerate(chunks):
        assert not dl.on_data("a.bin", i, c, chunk_sha(c), 0.0)
    assert dl.on_data("b.bin", 0, b"b" * 100, chunk_sha(b"b" * 100), 0.0)
    assert (tmp_path / "x" / "a.bin").read_bytes() == data and not dl.partial.exists()
    # A manifest whose whole-file hash disagrees with the (individually fine) chunks.
    lying = Manifest(
        tuple(FileEntry(f.name, f.size, "0" * 64) if f.name == "b.bin" else f for f in good.files),
        4096,
    )
    dl2 = BundleDownload(lying, tmp_path / "y.partial", tmp_path / "y")
    dl2.start()
    assert not dl2.on_data("b.bin", 0, b"b" * 100, chunk_sha(b"b" * 100), 0.0)
    assert dl2.rejected == 1 and ("b.bin", 0) in dl2.pending and not dl2.got["b.bin"]


def test_agent_restart_mid_upload_resumes_from_its_records(tmp_path: Path) -> None:
    tr = trainer(tmp_path).start()
    store = tmp_path / "agent" / "policies"
    parent = make_parent(store)
    proxy = Proxy(free_port(), tr.endpoint)
    proxy.cut_after = 10
    proxy.down_s = 60.0  # the first agent never gets through again
    proxy.start()
    first, rec1 = make_link(tmp_path / "agent", f"tcp://127.0.0.1:{proxy.port}", "robot-e", store)
    export = make_export(tmp_path / "x" / "job-5", 200, "checkerboard", seed=6)
    try:
        first.submit(5, export, parent)
        wait_for(lambda: proxy.cuts == 1 or proxy.chunks > 10, 30, "the line cut mid-upload")

        def written() -> int:
            return int(tr.jobs()["counters"].get("chunks.written", 0))

        # the 10 chunks relayed before the cut are all written (the trainer may still be
        # writing the last of them when the cut is seen: counting then raced it)
        wait_for(lambda: written() == 10, 10, "the relayed chunks written")
        written_before = written()
        first.close()  # the agent stops; its job record stays on disk
        again, rec2 = make_link(tmp_path / "agent", tr.endpoint, "robot-e", store)
        again.submit(5, export, parent)  # the daemon offers it again at start-up: no-op
        validate_bundle(rec2.result(5))
        wait_for(lambda: again.phases().get(5) == "done", 10, "acknowledged")
        counters = tr.jobs()["counters"]
        assert counters.get("chunks.duplicate", 0) == 0
        assert again.stats["chunks_sent"] == counters["chunks.written"] - written_before
        assert rec1.results == [] and len(rec2.results) == 1
        assert len(_job_rows(tr)) == 1
        again.close()
    finally:
        proxy.close()
        tr.stop()


def test_result_never_imported_is_offered_again_at_start_a_bounded_number_of_times(
    tmp_path: Path,
) -> None:
    import json

    from agent.link.jobs import MAX_OFFERS, LinkJob, Phase

    root, store = tmp_path / "agent", tmp_path / "agent" / "policies"
    store.mkdir(parents=True)
    staged = root / "trainer-link" / "staging" / "job-9" / "abc123"
    staged.mkdir(parents=True)
    rec = LinkJob(
        9,
        "/gone",
        "p0",
        "c",
        phase=Phase.DONE,
        key="k",
        bundle_id="abc123",
        offers=1,
    )
    (root / "trainer-link" / "jobs").mkdir(parents=True)
    path = root / "trainer-link" / "jobs" / "job-9.json"
    path.write_text(json.dumps(rec.to_json()))
    endpoint = f"tcp://127.0.0.1:{free_port()}"  # no trainer: nothing to talk about
    calls = []
    for _ in range(MAX_OFFERS + 1):
        link, r = make_link(root, endpoint, "robot-f", store)
        time.sleep(0.2)
        link.close()
        calls.append(len(r.results))
    # offered once more per start until MAX_OFFERS offers in all (it had one already)
    assert calls == [1] * (MAX_OFFERS - 1) + [0, 0]
    assert json.loads(path.read_text())["offers"] == MAX_OFFERS
    assert not staged.exists()  # given up on: the staging copy is dropped
    # Once the daemon has imported it, a start neither offers it nor keeps the staging copy.
    rec2 = LinkJob(
        10,
        "/gone",
        "p0",
        "c",
        phase=Phase.DONE,
        key="k2",
        bundle_id="def456",
        offers=1,
    )
    (root / "trainer-link" / "jobs" / "job-10.json").write_text(json.dumps(rec2.to_json()))
    staged2 = root / "trainer-link" / "staging" / "job-10" / "def456"
    staged2.mkdir(parents=True)
    (store / "def456").mkdir()
    link, r = make_link(root, endpoint, "robot-f", store)
    time.sleep(0.2)
    link.close()
    assert r.results == [] and not staged2.exists()
