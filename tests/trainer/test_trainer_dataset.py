"""On-disk episode store and the mixture sampler."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from trainer.dataset import Episode, EpisodeDataset, EpisodeWriter, Step
from trainer.sampler import MixtureSampler


def _episode(rng: np.random.Generator, steps: int = 1, condition: str = "baseline") -> Episode:
    ss = tuple(
        Step(
            image=rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
            action=rng.uniform(-1, 1, 3).astype(np.float32),
            reward=float(rng.uniform(-0.1, 1.0)),
            done=i == steps - 1,
        )
        for i in range(steps)
    )
    return Episode(
        steps=ss,
        success=bool(rng.integers(0, 2)),
        condition=condition,
        policy_id="p" + str(rng.integers(0, 1000)),
        timestamp=float(rng.uniform(1.7e9, 1.8e9)),
        extra={"grasp_id": int(rng.integers(0, 1 << 30)), "mode": "explore", "q": 0.25},
    )


def _same(a: Episode, b: Episode) -> None:
    assert (a.success, a.condition, a.policy_id, a.timestamp) == (
        b.success,
        b.condition,
        b.policy_id,
        b.timestamp,
    )
    assert dict(a.extra) == dict(b.extra)
    assert len(a.steps) == len(b.steps)
    for x, y in zip(a.steps, b.steps, strict=True):
        assert np.array_equal(x.image, y.image) and x.image.dtype == np.uint8
        assert np.array_equal(x.action, y.action)
        assert x.reward == y.reward and x.done == y.done
    assert (a.final_image is None) == (b.final_image is None)
    if a.final_image is not None and b.final_image is not None:
        assert np.array_equal(a.final_image, b.final_image)


def test_round_trip_is_lossless_including_png_decoded_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    eps = [_episode(rng, steps=int(rng.integers(1, 4))) for _ in range(30)]
    # What the agent logs: PNG-encoded by OpenCV; decoding gives back the exact pixels.
    ok, png = cv2.imencode(".png", eps[0].steps[0].image)
    assert ok
    decoded = cv2.imdecode(png, cv2.IMREAD_UNCHANGED)
    eps[0] = Episode(
        steps=(Step(decoded, eps[0].steps[0].action, 1.0, True),),
        success=True,
        condition="baseline",
        policy_id="abc",
        timestamp=1.75e9 + 0.123456789,
    )
    eps[1] = Episode(
        steps=(Step(eps[1].steps[0].image, eps[1].steps[0].action, -0.05, False),),
        success=False,
        condition="harsh_light",
        policy_id="abc",
        timestamp=1.0,
        final_image=rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
    )
    with EpisodeWriter(tmp_path, chunk_transitions=16) as w:
        for e in eps:
            w.append(e)
    ds = EpisodeDataset.open(tmp_path)
    back = list(ds.episodes())
    assert len(back) == len(eps) == ds.num_episodes
    for a, b in zip(eps, back, strict=True):
        _same(a, b)
    assert len(ds) == sum(len(e.steps) for e in eps)


def test_next_image_follows_episode_and_is_zero_when_done(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    ep = _episode(rng, steps=3)
    with EpisodeWriter(tmp_path) as w:
        w.append(ep)
    b = EpisodeDataset.open(tmp_path).gather(np.arange(3, dtype=np.int64))
    assert np.array_equal(b.next_images[0], ep.steps[1].image)
    assert np.array_equal(b.next_images[1], ep.steps[2].image)
    assert b.dones.tolist() == [False, False, True]
    assert not b.next_images[2].any()


def test_cut_off_episode_without_final_image_does_not_bootstrap(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    ep = _episode(rng, steps=2)
    cut = Episode((ep.steps[0],), False, "c", "p", 0.0)  # not done, no final image logged
    with EpisodeWriter(tmp_path) as w:
        w.append(cut)
    ds = EpisodeDataset.open(tmp_path)
    assert ds.gather(np.arange(1, dtype=np.int64)).dones.tolist() == [True]
    assert next(ds.episodes()).steps[0].done is False  # the record itself is unchanged


def test_crash_mid_chunk_never_corrupts_the_index(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    with EpisodeWriter(tmp_path, chunk_transitions=4) as w:
        for _ in range(8):
            w.append(_episode(rng))
    # A crash while writing a chunk: a partial temporary dir with a truncated array.
    stray = tmp_path / ".tmp-crashed"
    stray.mkdir()
    (stray / "frames.npy").write_bytes(b"\x93NUMPY garbage")
    # A crash after the rename but before the index update: a complete, unlisted chunk.
    w2 = EpisodeWriter(tmp_path, chunk_transitions=1000).open()
    w2.append(_episode(rng))
    w2.flush()
    index = json.loads((tmp_path / "index.json").read_text())
    index["chunks"].pop()
    (tmp_path / "index.json").write_text(json.dumps(index))
    assert len(EpisodeDataset.open(tmp_path)) == 8  # readers see only listed chunks
    with EpisodeWriter(tmp_path) as w3:  # reopening recovers
        w3.append(_episode(rng))
    assert not stray.exists()
    ds = EpisodeDataset.open(tmp_path)
    assert len(ds) == 10 and ds.num_episodes == 10


def test_arrays_never_need_pickle(tmp_path: Path) -> None:
    with EpisodeWriter(tmp_path) as w:
        w.append(_episode(np.random.default_rng(3)))
    for root, _, files in os.walk(tmp_path):
        for f in files:
            if f.endswith(".npy"):
                np.load(Path(root) / f, allow_pickle=False)


def test_bad_records_are_rejected_before_writing(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    good = _episode(rng)
    with EpisodeWriter(tmp_path) as w:
        with pytest.raises(ValueError):
            w.append(Episode((), True, "c", "p", 0.0))
        bad = Step(np.zeros((32, 32, 3), np.uint8), good.steps[0].action, 1.0, True)
        with pytest.raises(ValueError):
            w.append(Episode((bad,), True, "c", "p", 0.0))
        with pytest.raises(TypeError):
            w.append(Episode(good.steps, True, "c", "p", 0.0, extra={"x": object()}))
    assert len(EpisodeDataset.open(tmp_path)) == 0


def test_split_and_filter_by_episode(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    with EpisodeWriter(tmp_path, chunk_transitions=10) as w:
        for i in range(40):
            w.append(_episode(rng, steps=2, condition="a" if i % 2 else "b"))
    ds = EpisodeDataset.open(tmp_path)
    train, held = ds.split_episodes(0.25, seed=0)
    assert len(train) + len(held) == 80 and len(held) == 20
    assert len(ds.filter(condition="a")) == 40
    assert len(ds.filter(condition="a").filter(condition="b")) == 0


def test_mixture_sampler_draws_by_weight(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    roots = [tmp_path / "prior", tmp_path / "new"]
    for k, root in enumerate(roots):
        with EpisodeWriter(root) as w:
            for _ in range(20):
                e = _episode(rng)
                step = Step(e.steps[0].image, e.steps[0].action, float(k), True)
                w.append(Episode((step,), e.success, e.condition, e.policy_id, e.timestamp))
    prior, new = (EpisodeDataset.open(r) for r in roots)
    s = MixtureSampler([(prior, 0.5), (new, 0.5)], batch_size=128, seed=0)
    b = s.sample()
    assert len(b) == 128 and b.images.shape == (128, 64, 64, 3)
    assert int(b.rewards.sum()) == 64
    s3 = MixtureSampler([(prior, 0.7), (new, 0.3)], batch_size=10, seed=0)
    shares = np.mean([s3.sample().rewards.mean() for _ in range(400)])
    assert abs(shares - 0.3) < 0.02
