"""The one backoff rule: doubling delays from min to max, jittered, reset after a success."""

from __future__ import annotations

import random

import pytest

from plumbing.backoff import Backoff


def test_delays_double_up_to_the_cap_and_reset_starts_over() -> None:
    b = Backoff(0.5, 3.0)
    assert [b.next() for _ in range(6)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    b.reset()
    assert b.next() == 0.5 and b.failures == 1


def test_jitter_stays_within_its_band_and_is_reproducible_with_a_seed() -> None:
    a = Backoff(1.0, 8.0, jitter=0.2, rng=random.Random(7))
    b = Backoff(1.0, 8.0, jitter=0.2, rng=random.Random(7))
    da, db = [a.next() for _ in range(50)], [b.next() for _ in range(50)]
    assert da == db
    bases = [min(8.0, 2.0**i) for i in range(50)]
    assert all(0.8 * base <= d <= 1.2 * base for d, base in zip(da, bases, strict=True))
    assert len({round(d / base, 6) for d, base in zip(da, bases, strict=True)}) > 10


def test_a_long_outage_does_not_overflow() -> None:
    b = Backoff(0.1, 2.0)
    for _ in range(5000):
        b.next()
    assert b.next() == 2.0


@pytest.mark.parametrize(("lo", "hi", "jitter"), [(0, 1, 0), (2, 1, 0), (1, 2, 1.0)])
def test_bad_settings_are_refused(lo: float, hi: float, jitter: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(lo, hi, jitter)
