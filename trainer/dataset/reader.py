"""Reading a store: a memory-mapped, read-only view, its splits, filters and batches."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from trainer.dataset.records import ARRAYS, Batch, Episode, Step, concat_batches, read_index


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
        index = read_index(root)
        chunks = []
        for name in index["chunks"]:
            d = root / str(name)
            arrays = {k: np.load(d / f"{k}.npy", mmap_mode="r", allow_pickle=False) for k in ARRAYS}
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
