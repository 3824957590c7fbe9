"""On-disk episode store the trainer samples fast: append-only, crash-safe, no pickle.

Layout of a dataset directory::

    index.json              {"format": 1, "image_shape": [H,W,3], "action_dim": A,
                             "chunks": ["chunk-000000", ...]}   (the source of truth)
    chunk-000000/
        frames.npy          uint8  [F, H, W, 3]  every observation image once
        obs.npy             int32  [T]  frame row of each transition's state
        next_obs.npy        int32  [T]  frame row of the next state, -1 if none
        action.npy          float32 [T, A]
        reward.npy          float64 [T]
        done.npy            bool   [T]
        episode.npy         int32  [T]  row in episodes.json
        step.npy            int32  [T]  step within the episode
        episodes.json       per grasp: success, condition, policy_id, timestamp, extra
        chunk.json          counts; written last, so its presence marks a complete chunk

A chunk holds whole episodes. It is written into a hidden temporary directory,
fsynced and renamed into place, then ``index.json`` is replaced atomically.
A crash therefore leaves either a stray temporary directory (removed on the
next open for writing) or a complete chunk the index does not list yet
(adopted on the next open for writing); never a listed, partial chunk.
Arrays are read with ``np.load(mmap_mode="r", allow_pickle=False)``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from agent.spec import DEFAULT_SPEC, Spec

FORMAT = 1
INDEX_FILE = "index.json"
CHUNK_MANIFEST = "chunk.json"
_ARRAYS = ("frames", "obs", "next_obs", "action", "reward", "done", "episode", "step")

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Step:
    """One decision of a grasp attempt."""

    image: U8
    """Observation before the decision, uint8 [H, W, 3]."""
    action: F32
    """Normalised action taken, float32 [A]."""
    reward: float
    """Reward received for this step."""
    done: bool
    """True if the attempt ended with this step."""


@dataclass(frozen=True)
class Episode:
    """One grasp attempt as logged by the agent."""

    steps: tuple[Step, ...]
    """The decisions in order (horizon 1: exactly one)."""
    success: bool
    """Whether the grasp succeeded."""
    condition: str
    """Name of the condition the grasp ran under."""
    policy_id: str
    """Bundle id of the policy that chose the actions."""
    timestamp: float
    """Wall-clock time of the attempt (seconds since the epoch)."""
    final_image: U8 | None = None
    """Observation after the last step when the attempt was cut off without ``done``."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Any other JSON-ready fields the agent logged (grasp id, mode, Q...)."""


@dataclass(frozen=True)
class Batch:
    """A batch of transitions (numpy, ready to hand to torch)."""

    images: U8
    """States [B, H, W, 3]."""
    actions: F32
    """Actions [B, A]."""
    rewards: F32
    """Rewards [B]."""
    dones: npt.NDArray[np.bool_]
    """No bootstrapping where True [B]: the episode ended, or no next state was logged."""
    next_images: U8
    """Next states [B, H, W, 3]; zeros where there is none."""

    def __len__(self) -> int:
        return int(self.rewards.shape[0])


def concat_batches(parts: Sequence[Batch]) -> Batch:
    """Concatenate batches along the first axis."""
    return Batch(
        images=np.concatenate([p.images for p in parts]),
        actions=np.concatenate([p.actions for p in parts]),
        rewards=np.concatenate([p.rewards for p in parts]),
        dones=np.concatenate([p.dones for p in parts]),
        next_images=np.concatenate([p.next_images for p in parts]),
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _read_index(root: Path) -> dict[str, Any]:
    try:
        index = json.loads((root / INDEX_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{root}: unreadable {INDEX_FILE}: {exc}") from exc
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(f"{root}: not a format-{FORMAT} episode dataset")
    return index


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
            index = _read_index(self.root)
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

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
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
        _fsync_dir(self.root)
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
        _write_json_atomic(
            self.root / INDEX_FILE,
            {
                "format": FORMAT,
                "image_shape": list(self.spec.image_shape),
                "action_dim": self.spec.action_dim,
                "chunks": self._chunks,
            },
        )


def _pack(episodes: Sequence[Episode], spec: Spec) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    frames: list[U8] = []
    cols: dict[str, list[Any]] = {k: [] for k in _ARRAYS if k != "frames"}
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


@dataclass(frozen=True)
class _Chunk:
    arrays: dict[str, Any]
    episodes: list[dict[str, Any]]


class EpisodeDataset:
    """Read-only, memory-mapped view of a dataset directory (optionally a subset of episodes)."""

    def __init__(self, chunks: list[_Chunk], rows: npt.NDArray[np.int64], name: str) -> None:
        self._chunks = chunks
        self._rows = rows
        self.name = name
        sizes = [len(c.arrays["obs"]) for c in chunks]
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    @classmethod
    def open(cls, root: Path | str) -> EpisodeDataset:
        """Map every chunk listed in the index (never unlisted ones)."""
        root = Path(root)
        index = _read_index(root)
        chunks = []
        for name in index["chunks"]:
            d = root / str(name)
            arrays = {
                k: np.load(d / f"{k}.npy", mmap_mode="r", allow_pickle=False) for k in _ARRAYS
            }
            episodes = json.loads((d / "episodes.json").read_text())
            chunks.append(_Chunk(arrays, episodes))
        total = sum(len(c.arrays["obs"]) for c in chunks)
        return cls(chunks, np.arange(total, dtype=np.int64), str(root))

    def __len__(self) -> int:
        """Number of transitions in this view."""
        return int(self._rows.shape[0])

    @property
    def num_episodes(self) -> int:
        return sum(len(c.episodes) for c in self._chunks)

    def _episode_keys(self) -> npt.NDArray[np.int64]:
        """Dataset-wide episode number of every transition of the full dataset."""
        keys, offset = [], 0
        for ch in self._chunks:
            keys.append(np.asarray(ch.arrays["episode"], dtype=np.int64) + offset)
            offset += len(ch.episodes)
        return np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64)

    def split_episodes(
        self, holdout: float, seed: int = 0
    ) -> tuple[EpisodeDataset, EpisodeDataset]:
        """(train, held-out) views; each episode goes wholly to one side, chosen by ``seed``."""
        keys = self._episode_keys()[self._rows]
        uniq = np.unique(keys)
        rng = np.random.default_rng(seed)
        held = set(rng.choice(uniq, size=round(holdout * len(uniq)), replace=False).tolist())
        mask = np.isin(keys, list(held))
        return (
            EpisodeDataset(self._chunks, self._rows[~mask], self.name + ":train"),
            EpisodeDataset(self._chunks, self._rows[mask], self.name + ":held"),
        )

    def filter(self, condition: str | None = None, success: bool | None = None) -> EpisodeDataset:
        """View of the transitions whose episode matches the given condition/success."""
        masks = []
        for ch in self._chunks:
            ep_ok = np.asarray(
                [
                    (condition is None or e["condition"] == condition)
                    and (success is None or e["success"] == success)
                    for e in ch.episodes
                ],
                dtype=bool,
            )
            masks.append(ep_ok[np.asarray(ch.arrays["episode"])] if len(ep_ok) else ep_ok)
        full = np.concatenate(masks) if masks else np.zeros(0, dtype=bool)
        return EpisodeDataset(self._chunks, self._rows[full[self._rows]], self.name)

    def _locate(self, g: int) -> tuple[int, int]:
        c = int(np.searchsorted(self._starts, g, side="right") - 1)
        return c, g - int(self._starts[c])

    def sample(self, n: int, rng: np.random.Generator) -> Batch:
        """``n`` transitions drawn uniformly with replacement from this view."""
        if len(self._rows) == 0:
            raise ValueError(f"{self.name}: no transitions to sample")
        picks = np.sort(self._rows[rng.integers(0, len(self._rows), size=n)])
        return self.gather(picks)

    def gather(self, rows: npt.NDArray[np.int64]) -> Batch:
        """The transitions with the given dataset-wide row numbers."""
        chunk_of = np.searchsorted(self._starts, rows, side="right") - 1
        parts = []
        for c in np.unique(chunk_of):
            local = rows[chunk_of == c] - self._starts[c]
            a = self._chunks[int(c)].arrays
            obs = a["obs"][local]
            nxt = np.asarray(a["next_obs"][local])
            has = nxt >= 0
            next_images = np.zeros((len(local), *a["frames"].shape[1:]), dtype=np.uint8)
            if has.any():
                next_images[has] = a["frames"][nxt[has]]
            parts.append(
                Batch(
                    images=np.asarray(a["frames"][obs]),
                    actions=np.asarray(a["action"][local], dtype=np.float32),
                    rewards=np.asarray(a["reward"][local], dtype=np.float32),
                    dones=np.asarray(a["done"][local], dtype=np.bool_) | ~has,
                    next_images=next_images,
                )
            )
        return parts[0] if len(parts) == 1 else concat_batches(parts)

    def episodes(self) -> Iterator[Episode]:
        """Every episode of the full dataset, exactly as written (for export and checks)."""
        for ch in self._chunks:
            a = ch.arrays
            ep_col = np.asarray(a["episode"])
            for e_idx, meta in enumerate(ch.episodes):
                rows = np.flatnonzero(ep_col == e_idx)
                steps = tuple(
                    Step(
                        image=np.array(a["frames"][a["obs"][r]]),
                        action=np.array(a["action"][r]),
                        reward=float(a["reward"][r]),
                        done=bool(a["done"][r]),
                    )
                    for r in rows
                )
                final = None
                if meta["final_image"]:
                    final = np.array(a["frames"][a["next_obs"][rows[-1]]])
                yield Episode(
                    steps=steps,
                    success=bool(meta["success"]),
                    condition=str(meta["condition"]),
                    policy_id=str(meta["policy_id"]),
                    timestamp=float(meta["timestamp"]),
                    final_image=final,
                    extra=meta["extra"],
                )
