"""Trainer link figures: memory while the trainer is away, upload throughput, time to result.

A 2,000-grasp export (about 25 MB of images) is submitted while no trainer runs; the link
retries with backoff for ``--away-s`` seconds; then ``robot-trainer serve`` starts (a real
process on loopback, the real fine-tune on a tiny network and budget) and the job runs to
its result. Python heap peaks (tracemalloc, this process: the link's thread) are taken
while away and during the upload. Last stdout line: one JSON object.

    python -m bench.trainer_link [--grasps 2000] [--chunk-kib 1024] [--away-s 5]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

from agent.config import config_from_dict
from agent.link import TrainerLink
from testkit.trainer import (
    TrainerProcess,
    free_port,
    make_export,
    make_parent,
    write_service_config,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grasps", type=int, default=2000)
    ap.add_argument("--chunk-kib", type=int, default=1024)
    ap.add_argument("--away-s", type=float, default=5.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        port = free_port()
        chunk = args.chunk_kib * 1024
        cfg_path = write_service_config(
            tmp / "t.toml", tmp / "trainer", port, max_chunk_bytes=chunk, credit=8
        )
        store = tmp / "agent" / "policies"
        parent = make_parent(store)
        export = make_export(tmp / "exports" / "job-1", args.grasps, "checkerboard", seed=1)
        export_bytes = sum(f.stat().st_size for f in export.iterdir())
        states: list[tuple[float, str]] = []
        done = threading.Event()
        cfg = config_from_dict(
            {
                "agent": {"data_dir": str(tmp / "agent")},
                "trainer": {
                    "endpoint": f"tcp://127.0.0.1:{port}",
                    "agent_id": "bench",
                    "chunk_bytes": chunk,
                    "heartbeat_s": 0.2,
                    "timeout_s": 1.0,
                    "backoff_min_s": 0.2,
                    "backoff_max_s": 2.0,
                },
            }
        )

        def on_status(job: int, status: str, detail: dict[str, Any]) -> None:
            states.append((time.monotonic(), status))

        link = TrainerLink(cfg, store, lambda p, j: done.set(), on_status)
        tracemalloc.start()
        link.start()
        link.submit(1, export, parent)
        time.sleep(args.away_s)
        _, peak_away = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        tr = TrainerProcess(cfg_path, tmp / "trainer.log", port)
        t_start = time.monotonic()
        tr.start()
        t_up = time.monotonic()
        while not any(s in ("queued", "training") for _, s in states):
            time.sleep(0.01)
        t_queued = next(t for t, s in states if s in ("queued", "training"))
        _, peak_upload = tracemalloc.get_traced_memory()
        done.wait(300)
        t_result = time.monotonic()
        link.close()
        counters = tr.jobs()["counters"]
        tr.stop()
        first_upload = next((t for t, s in states if s == "uploading"), t_up)
        upload_s = t_queued - first_upload
        print(
            json.dumps(
                {
                    "grasps": args.grasps,
                    "export_mb": round(export_bytes / 1e6, 2),
                    "chunk_kib": args.chunk_kib,
                    "link_heap_peak_mb_while_away": round(peak_away / 1e6, 2),
                    "link_heap_peak_mb_during_upload": round(peak_upload / 1e6, 2),
                    "trainer_start_s": round(t_up - t_start, 2),
                    "upload_s": round(upload_s, 2),
                    "upload_mb_per_s": round(export_bytes / 1e6 / max(upload_s, 1e-6), 1),
                    "result_after_trainer_up_s": round(t_result - t_up, 2),
                    "chunks_written": counters.get("chunks.written", 0),
                    "chunks_duplicate": counters.get("chunks.duplicate", 0),
                    "reconnects": link.stats["connects"],
                    "delivered": done.is_set(),
                }
            )
        )


if __name__ == "__main__":
    main()
