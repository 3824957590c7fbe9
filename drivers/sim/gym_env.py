"""The sim cell as a ``gymnasium.Env`` (one step = one grasp attempt), for other tools."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import numpy.typing as npt
from gymnasium import spaces

from drivers.sim.cell import SimCell
from drivers.sim.config import SimConfig


class GraspEnv(gym.Env[npt.NDArray[np.uint8], npt.NDArray[np.float32]]):
    """Observation: the camera image; action: normalised (x, y, yaw); reward 1 on success.

    Each episode is one grasp (the spec's horizon 1). ``reset(seed=...)``
    reseeds and reloads the bin; ``options={"condition": name, "params": {...}}``
    switches the condition.
    """

    metadata = {"render_modes": ["rgb_array"]}  # noqa: RUF012  (gymnasium declares it so)

    def __init__(self, config: SimConfig | None = None, render_mode: str | None = None) -> None:
        self.cell = SimCell(config)
        spec = self.cell.spec
        self.observation_space = spaces.Box(0, 255, shape=spec.image_shape, dtype=np.uint8)
        self.action_space = spaces.Box(spec.low, spec.high, dtype=np.float32)
        self.render_mode = render_mode
        self._last: npt.NDArray[np.uint8] | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[npt.NDArray[np.uint8], dict[str, Any]]:
        super().reset(seed=seed)
        self.cell.start()
        if seed is not None:
            self.cell.reset(seed)
        if options and "condition" in options:
            self.cell.set_condition(str(options["condition"]), options.get("params"))
        self._last = self.cell.observe().image
        return self._last, {"condition": self.cell.condition.name}

    def step(
        self, action: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.uint8], float, bool, bool, dict[str, Any]]:
        result = self.cell.execute(np.asarray(action, dtype=np.float32))
        self._last = self.cell.observe().image
        info: dict[str, Any] = {}
        if result.outcome is not None:
            info = {"success": result.outcome.success, **result.outcome.detail}
        return self._last, float(result.reward), bool(result.done), False, info

    def render(self) -> npt.NDArray[np.uint8] | None:
        return self._last

    def close(self) -> None:
        self.cell.close()
