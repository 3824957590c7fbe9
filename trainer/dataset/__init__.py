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

Modules: :mod:`.records` (``Step``, ``Episode``, ``Batch``, the format),
:mod:`.writer` (``EpisodeWriter``) and :mod:`.reader` (``EpisodeDataset``).
"""

from trainer.dataset.reader import EpisodeDataset
from trainer.dataset.records import (
    CHUNK_MANIFEST,
    FORMAT,
    INDEX_FILE,
    Batch,
    Episode,
    Step,
    concat_batches,
)
from trainer.dataset.writer import EpisodeWriter

__all__ = [
    "CHUNK_MANIFEST",
    "FORMAT",
    "INDEX_FILE",
    "Batch",
    "Episode",
    "EpisodeDataset",
    "EpisodeWriter",
    "Step",
    "concat_batches",
]
