"""Appending episodes to a store: whole-episode chunks, fsynced, renamed, then indexed."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np

from agent.spec import DEFAULT_SPEC, Spec
from plumbing.atomic import fsync_dir, write_text
from trainer.dataset.records import (
    ARRAYS,
    CHUNK_MANIFEST,
    FORMAT,
    INDEX_FILE,
    U8,
    Episode,
    read_index,
)


class EpisodeWriter:
    """Append-only writer; open with ``with EpisodeWriter(root) as w:`` or ``open()``.

    Episodes are buffered and written as one chunk once ``chunk_transitions``
    transitions are pending, and on ``flush()``/``close()``; a crash loses only
    the episodes still buffered.
    """

    def __init__(
        self, root: Path, spec: Spec = DEFAULT_SPEC, chunk_transitions: int = 2048
    ) -> None:
        self.root = Path(root)
        self.spec = spec
        self.chunk_transitions = chunk_transitions
        self._pending: list[Episode] = []
        self._pending_steps = 0
        self._chunks: list[str] | None = None

    def open(self) -> Self:
        """Create or recover the dataset directory."""
        self.root.mkdir(parents=True, exist_ok=True)
        if (self.root / INDEX_FILE).exists():
            index = read_index(self.root)
            if list(index["image_shape"]) != list(self.spec.image_shape):
                raise ValueError(f"{self.root}: image shape {index['image_shape']} != spec")
            chunks = [str(c) for c in index["chunks"]]
        else:
            chunks = []
        for stray in self.root.glob(".tmp-*"):
            shutil.rmtree(stray, ignore_errors=True)
        listed = set(chunks)
        for d in sorted(self.root.glob("chunk-*")):
            if d.name not in listed and (d / CHUNK_MANIFEST).is_file():
                chunks.append(d.name)
        self._chunks = chunks
        self._write_index()
        return self

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(self, episode: Episode) -> None:
        """Buffer one episode (validated now); writes a chunk when enough are pending."""
        if self._chunks is None:
            raise RuntimeError("EpisodeWriter is not open")
        if not episode.steps:
            raise ValueError("an episode needs at least one step")
        for s in episode.steps:
            self.spec.check_image(s.image)
            if np.asarray(s.action).shape != (self.spec.action_dim,):
                raise ValueError(f"action must have shape ({self.spec.action_dim},)")
        if episode.final_image is not None:
            self.spec.check_image(episode.final_image)
        json.dumps(dict(episode.extra))  # fail now, not at flush, on non-JSON extras
        self._pending.append(episode)
        self._pending_steps += len(episode.steps)
        if self._pending_steps >= self.chunk_transitions:
            self.flush()

    def flush(self) -> None:
        """Write the buffered episodes as one chunk (no-op when none)."""
        if self._chunks is None:
            raise RuntimeError("EpisodeWriter is not open")
        if not self._pending:
            return
        name = f"chunk-{len(self._chunks):06d}"
        while (self.root / name).exists():
            name = f"chunk-{int(name[6:]) + 1:06d}"
        arrays, episodes = _pack(self._pending, self.spec)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
        try:
            for key, arr in arrays.items():
                with open(tmp / f"{key}.npy", "wb") as f:
                    np.save(f, arr, allow_pickle=False)
                    f.flush()
                    os.fsync(f.fileno())
            for fname, obj in (
                ("episodes.json", episodes),
                (
                    CHUNK_MANIFEST,
                    {
                        "transitions": len(arrays["obs"]),
                        "frames": len(arrays["frames"]),
                        "episodes": len(episodes),
                    },
                ),
            ):
                with open(tmp / fname, "w") as f:
                    json.dump(obj, f)
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, self.root / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(self.root)
        self._chunks.append(name)
        self._write_index()
        self._pending = []
        self._pending_steps = 0

    def close(self) -> None:
        """Flush and stop accepting episodes. Idempotent."""
        if self._chunks is not None:
            self.flush()
            self._chunks = None

    def _write_index(self) -> None:
        assert self._chunks is not None
        index = {
            "format": FORMAT,
            "image_shape": list(self.spec.image_shape),
            "action_dim": self.spec.action_dim,
            "chunks": self._chunks,
        }
        write_text(self.root / INDEX_FILE, json.dumps(index, indent=1, sort_keys=True))


def _pack(episodes: Sequence[Episode], spec: Spec) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    frames: list[U8] = []
    cols: dict[str, list[Any]] = {k: [] for k in ARRAYS if k != "frames"}
    meta: list[dict[str, Any]] = []
    for e_idx, ep in enumerate(episodes):
        first = len(frames)
        frames.extend(s.image for s in ep.steps)
        if ep.final_image is not None:
            frames.append(ep.final_image)
        n = len(ep.steps)
        for i, s in enumerate(ep.steps):
            has_next = i + 1 < n or ep.final_image is not None
            cols["obs"].append(first + i)
            cols["next_obs"].append(first + i + 1 if has_next else -1)
            cols["action"].append(np.asarray(s.action, dtype=np.float32))
            cols["reward"].append(float(s.reward))
            cols["done"].append(bool(s.done))
            cols["episode"].append(e_idx)
            cols["step"].append(i)
        meta.append(
            {
                "success": bool(ep.success),
                "condition": ep.condition,
                "policy_id": ep.policy_id,
                "timestamp": float(ep.timestamp),
                "final_image": ep.final_image is not None,
                "extra": dict(ep.extra),
            }
        )
    arrays: dict[str, Any] = {
        "frames": np.stack(frames).astype(np.uint8, copy=False),
        "obs": np.asarray(cols["obs"], dtype=np.int32),
        "next_obs": np.asarray(cols["next_obs"], dtype=np.int32),
        "action": np.stack(cols["action"]).reshape(-1, spec.action_dim),
        "reward": np.asarray(cols["reward"], dtype=np.float64),
        "done": np.asarray(cols["done"], dtype=np.bool_),
        "episode": np.asarray(cols["episode"], dtype=np.int32),
        "step": np.asarray(cols["step"], dtype=np.int32),
    }
    return arrays, meta
