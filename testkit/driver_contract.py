"""The contract every Driver implementation must pass.

Subclass :class:`DriverContract` in a test module and define ``make_driver``
(returning a new, unstarted driver); pytest then runs every check on it.
"""

from __future__ import annotations

import numpy as np
import pytest

from agent.driver import Driver, GraspOutcome, Observation, StepResult
from agent.spec import Spec


class DriverContract:
    """Shared checks; subclasses provide ``make_driver``."""

    def make_driver(self) -> Driver:
        raise NotImplementedError

    def _attempt(self, driver: Driver, action: np.ndarray) -> StepResult:
        result: StepResult | None = None
        for _ in range(driver.spec.horizon):
            obs = driver.observe()
            assert isinstance(obs, Observation)
            result = driver.execute(action)
            if result.done:
                break
        assert result is not None
        return result

    def test_is_a_driver_with_a_spec(self) -> None:
        d = self.make_driver()
        assert isinstance(d, Driver)
        assert isinstance(d.spec, Spec)

    def test_observe_before_start_raises(self) -> None:
        d = self.make_driver()
        with pytest.raises(RuntimeError):
            d.observe()
        d.close()

    def test_observation_matches_spec(self) -> None:
        with self.make_driver() as d:
            d.start()  # idempotent
            obs = d.observe()
            d.spec.check_image(obs.image)
            assert obs.step == 0
            assert obs.image.std() > 0, "a blank image cannot be a camera frame"

    def test_attempt_ends_with_an_outcome(self) -> None:
        with self.make_driver() as d:
            result = self._attempt(d, np.zeros(d.spec.action_dim, np.float32))
            assert result.done
            assert isinstance(result.outcome, GraspOutcome)
            assert isinstance(result.outcome.success, bool)
            assert result.outcome.sensed_by
            assert np.isfinite(result.reward)
            assert result.duration_s >= 0

    @pytest.mark.parametrize(
        "bad",
        [
            np.zeros(2, np.float32),
            np.zeros((1, 4), np.float32),
            np.array([np.nan, 0, 0], np.float32),
        ],
        ids=["short", "wide", "nan"],
    )
    def test_bad_action_raises_value_error(self, bad: np.ndarray) -> None:
        with self.make_driver() as d:
            d.observe()
            with pytest.raises(ValueError):
                d.execute(bad)

    def test_out_of_bounds_action_is_clipped_not_fatal(self) -> None:
        with self.make_driver() as d:
            result = self._attempt(d, np.full(d.spec.action_dim, 5.0, np.float32))
            assert result.done

    def test_shuffle_and_reset_keep_working(self) -> None:
        with self.make_driver() as d:
            d.shuffle()
            d.reset(seed=3)
            d.spec.check_image(d.observe().image)

    def test_close_is_idempotent(self) -> None:
        d = self.make_driver()
        d.start()
        d.close()
        d.close()
        with pytest.raises(RuntimeError):
            d.observe()
