"""The trainer unreachable while the robot works on: memory, exports on disk, exactly-once delivery.

The daemon runs in-process on the fast fake driver with the trainer link attached as
``robot-agent run`` attaches it; no trainer runs. ``--jobs`` conditions are marked one
after another, each explored (``--explore`` grasps) and exported into a job the link cannot
deliver (a new condition cancels the previous job in the daemon, and the link drops it:
only the last job is still wanted). The robot goes on to ``--grasps`` grasps; this process's RSS is
sampled every 500 grasps. Then ``robot-trainer serve`` starts (a real process on loopback,
the real fine-tune on a tiny network and budget): the cancelled jobs never reach it and the
last one is delivered; the trainer's job table, its lineage files and its chunk counters say
whether it arrived exactly once and nothing else did.
Last stdout line: one JSON object. The short version is a test:
tests/agent/test_trainer_unreachable.py.

    python -m bench.trainer_unreachable [--grasps 10000] [--jobs 5] [--explore 200]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from agent.ctl import request
from testkit.daemon import linked_config, linked_daemon, serve, stop_linked
from testkit.fakes import FakeDriver
from testkit.net import free_port, wait_for
from testkit.trainer import TINY_FINETUNE, TrainerProcess, make_parent, write_service_config


def rss_mb() -> float:
    """This process's resident set size in MiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / (1 << 20)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--grasps", type=int, default=10_000, help="grasps logged while away")
    ap.add_argument("--jobs", type=int, default=5, help="jobs queued while away")
    ap.add_argument("--explore", type=int, default=200, help="exploration grasps per job")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        port = free_port()
        base = make_parent(tmp / "incoming")
        cfg = linked_config(
            tmp,
            tmp / "incoming" / base,
            f"tcp://127.0.0.1:{port}",
            "bench",
            args.explore,
            {"backoff_min_s": 0.2, "backoff_max_s": 2.0},
            probation={"enabled": False},
        )
        daemon, link = linked_daemon(cfg, FakeDriver(p_success=0.5))
        th = serve(daemon, ready_s=60)
        tr: TrainerProcess | None = None
        out: dict[str, Any] = {"grasps_away": args.grasps, "jobs": args.jobs}
        try:
            ep = daemon.endpoints["commands"]
            t0 = time.monotonic()
            samples: list[tuple[int, float]] = []

            def handed(job: int) -> bool:
                return job in link.phases()

            for i in range(1, args.jobs + 1):
                assert request(ep, "mark-condition", {"name": f"c{i}"})["ok"]
                wait_for(partial(handed, i), 300, f"job {i} handed to the link")
            first = int(daemon.snapshot()["grasps"])
            samples.append((first, rss_mb()))
            mark = first + 500
            while True:
                n = int(daemon.snapshot()["grasps"])
                if n >= mark:
                    samples.append((n, rss_mb()))
                    mark += 500
                if n >= args.grasps:
                    break
                time.sleep(0.05)
            away_s = time.monotonic() - t0
            rss = [m for _, m in samples]
            with sqlite3.connect(daemon.db_path) as db:
                exports = dict(db.execute("SELECT id, export_path FROM jobs").fetchall())
            on_disk_mb = sum(
                f.stat().st_size for p in exports.values() for f in Path(p).iterdir()
            ) / (1 << 20)
            out.update(
                {
                    "away_s": round(away_s, 1),
                    "grasps_per_s": round((args.grasps - first) / max(away_s, 1e-9), 1),
                    "connect_attempts": link.stats["connects"],
                    "rss_mb_first": round(rss[0], 1),
                    "rss_mb_last": round(rss[-1], 1),
                    "rss_mb_max": round(max(rss), 1),
                    "rss_growth_mb_after_first_1000": round(rss[-1] - rss[min(2, len(rss) - 1)], 1),
                    "exports_on_disk_mb": round(on_disk_mb, 1),
                }
            )
            tcfg = write_service_config(
                tmp / "trainer.toml",
                tmp / "trainer",
                port,
                finetune={**TINY_FINETUNE, "max_steps": 20},
            )
            t1 = time.monotonic()
            tr = TrainerProcess(tcfg, tmp / "trainer.log", port).start()
            jobs = [args.jobs]  # the earlier ones were cancelled by the next condition
            wait_for(
                lambda: (
                    link.phases().get(args.jobs) == "done"
                    and all(link.phases().get(j) == "cancelled" for j in range(1, args.jobs))
                ),
                120 + 30 * args.jobs,
                "the last job done, the others cancelled",
            )
            info = tr.jobs()
            rows = info["jobs"]
            lineage = tmp / "trainer" / "lineages" / "bench"
            sources = [json.loads((d / "source.json").read_text()) for d in lineage.iterdir()]
            agent_jobs = sorted(int(r["agent_job"]) for r in rows)
            out.update(
                {
                    "drain_s": round(time.monotonic() - t1, 1),
                    "trainer_jobs": len(rows),
                    "distinct_agent_jobs": len(set(agent_jobs)),
                    "lineage_entries": len(sources),
                    "lineage_grasps": [int(s["grasps"]) for s in sources],
                    "chunks_written": info["counters"].get("chunks.written", 0),
                    "chunks_duplicate": info["counters"].get("chunks.duplicate", 0),
                    "parent_uploads": info["counters"].get("parent.upload", 0),
                }
            )
            ok = (
                agent_jobs == jobs
                and sorted(int(s["agent_job"]) for s in sources) == jobs
                and out["chunks_duplicate"] == 0
            )
            out["delivered_exactly_once"] = ok
        finally:
            stop_linked(daemon, th, link)
            if tr is not None:
                tr.stop()
        print(json.dumps(out))


if __name__ == "__main__":
    main()
