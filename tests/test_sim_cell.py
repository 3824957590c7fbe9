"""The simulated cell: conditions, determinism, bin upkeep, gymnasium API, split."""

from __future__ import annotations

import numpy as np
import pytest

from drivers.sim.cell import TRAY_HALF, SimCell
from drivers.sim.conditions import CONDITION_NAMES, make_condition, parse_param_args
from drivers.sim.config import SimConfig
from drivers.sim.objects import N_TRAIN, object_ids
from drivers.sim.scripted import RandomPolicy, ScriptedPolicy


@pytest.fixture(scope="module")
def cell() -> SimCell:
    c = SimCell(SimConfig(seed=5, split="test"))
    c.start()
    yield c
    c.close()


def test_split_is_fixed_and_disjoint() -> None:
    train, test = set(object_ids("train")), set(object_ids("test"))
    assert len(train) == N_TRAIN == 900 and len(test) == 100
    assert not train & test


def test_unknown_condition_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="allowed: baseline, checkerboard"):
        make_condition("fog")


def test_unknown_parameter_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"no parameter 'offset_mm'.*offset_cm"):
        make_condition("offset_gripper", {"offset_mm": 3})


def test_param_args_parse() -> None:
    assert parse_param_args(["offset_cm=7"]) == {"offset_cm": 7.0}
    with pytest.raises(ValueError):
        parse_param_args(["offset_cm"])


@pytest.mark.parametrize(
    "name", ["checkerboard", "harsh_lighting", "offset_gripper", "transparent"]
)
def test_visual_conditions_change_the_image(cell: SimCell, name: str) -> None:
    cell.set_condition("baseline")
    base = cell.observe().image.astype(np.int16)
    cell.set_condition(name)
    img = cell.observe().image.astype(np.int16)
    cell.set_condition("baseline")
    changed = int((np.abs(img - base).max(axis=2) > 20).sum())
    assert changed >= 40, f"{name} looks like baseline ({changed} pixels changed)"


def test_severity_zero_checkerboard_is_baseline(cell: SimCell) -> None:
    cell.set_condition("baseline")
    base = cell.observe().image
    cell.set_condition("checkerboard", {"contrast": 0.0})
    img = cell.observe().image
    cell.set_condition("baseline")
    assert np.abs(img.astype(int) - base.astype(int)).max() <= 1


def _finger_length(cell: SimCell) -> float:
    g = cell._gripper
    assert g is not None
    lo, hi = cell._p.getAABB(g.body, 0, physicsClientId=cell._client)
    return float(hi[2] - lo[2])


def test_extend_gripper_lengthens_the_fingers_in_the_geometry(cell: SimCell) -> None:
    cell.set_condition("baseline")
    stock = _finger_length(cell)
    cell.set_condition("extend_gripper", {"extra_length_cm": 1.0})
    longer = _finger_length(cell)
    cell.set_condition("baseline")
    assert longer - stock == pytest.approx(0.01, abs=0.002)


def test_extend_gripper_weakens_the_squeeze(cell: SimCell) -> None:
    cell.set_condition("extend_gripper", {"grip_force_n": 5.0, "pad_friction": 0.3})
    g = cell._gripper
    assert g is not None
    info = cell._p.getDynamicsInfo(g.body, 0, physicsClientId=cell._client)
    force = g.geometry.grip_force_n
    cell.set_condition("baseline")
    assert info[1] == pytest.approx(0.3) and force == 5.0


def test_offset_gripper_lands_off_target(cell: SimCell) -> None:
    cell.set_condition("offset_gripper", {"offset_cm": 10})
    g = cell._gripper
    assert g is not None
    g.teleport((0.0, 0.0, 0.2), 0.0)
    pos = cell._p.getBasePositionAndOrientation(g.body, physicsClientId=cell._client)[0]
    cell.set_condition("baseline")
    assert pos[0] == pytest.approx(0.10, abs=1e-6)


def _run(seed: int, n: int) -> list[bool]:
    out = []
    with SimCell(SimConfig(seed=seed, n_objects=3, refresh_every=4)) as c:
        pol = ScriptedPolicy(c.spec, np.random.default_rng(seed))
        for _ in range(n):
            obs = c.observe()
            r = c.execute(pol.act(obs.image, c.privileged()))
            assert r.outcome is not None
            out.append(r.outcome.success)
    return out


def test_same_seed_same_run() -> None:
    assert _run(3, 6) == _run(3, 6)


def test_objects_stay_in_the_bin_and_scripted_beats_random() -> None:
    cfg = SimConfig(seed=2, split="train")
    with SimCell(cfg) as c:
        scripted = ScriptedPolicy(c.spec, np.random.default_rng(0))
        rand = RandomPolicy(c.spec, np.random.default_rng(0))
        wins = {"scripted": 0, "random": 0}
        for i in range(60):
            pol = scripted if i % 2 == 0 else rand
            obs = c.observe()
            r = c.execute(pol.act(obs.image, c.privileged()))
            assert r.outcome is not None
            wins["scripted" if i % 2 == 0 else "random"] += int(r.outcome.success)
            for body in c.privileged().object_bodies:
                pos = c._p.getBasePositionAndOrientation(body, physicsClientId=c._client)[0]
                assert abs(pos[0]) <= TRAY_HALF + 0.05 and abs(pos[1]) <= TRAY_HALF + 0.05
        assert wins["scripted"] >= 12, wins
        assert wins["scripted"] > wins["random"] + 6, wins


def test_condition_switch_at_run_time_keeps_objects(cell: SimCell) -> None:
    before = cell.privileged().object_bodies if cell._last_frame else None
    cell.observe()
    before = cell.privileged().object_bodies
    for name in CONDITION_NAMES:
        cell.set_condition(name)
        cell.observe()
    cell.set_condition("baseline")
    assert cell.privileged().object_bodies == before


def test_gymnasium_check_env() -> None:
    from gymnasium.utils.env_checker import check_env

    from drivers.sim.gym_env import GraspEnv

    env = GraspEnv(SimConfig(seed=1, n_objects=3))
    try:
        check_env(env, skip_render_check=True)
        _obs, info = env.reset(seed=4, options={"condition": "checkerboard"})
        assert info["condition"] == "checkerboard"
        _obs2, reward, terminated, _truncated, info = env.step(env.action_space.sample())
        assert terminated and reward in (0.0, 1.0) and "success" in info
    finally:
        env.close()


class _CountingPybullet:
    """Pass-through to pybullet that counts body-creating calls since the last reset."""

    CREATES = ("loadURDF", "createMultiBody", "createCollisionShape", "createVisualShape")

    def __init__(self, p: object) -> None:
        self._p = p
        self.since_reset = 0
        self.most_since_reset = 0
        self.resets = 0
        self.removes = 0

    def __getattr__(self, name: str) -> object:
        fn = getattr(self._p, name)
        if not callable(fn):
            return fn

        def call(*args: object, **kwargs: object) -> object:
            if name == "resetSimulation":
                self.resets += 1
                self.since_reset = 0
            elif name.startswith(self.CREATES):
                self.since_reset += 1
                self.most_since_reset = max(self.most_since_reset, self.since_reset)
            elif name in ("removeBody", "removeCollisionShape", "removeVisualShape"):
                self.removes += 1
            return fn(*args, **kwargs)

        return call


def test_refreshes_and_condition_changes_rebuild_the_world_so_pybullet_memory_stays_flat() -> None:
    # pybullet keeps a removed body's memory (the cell grew ~16 MB per 1,000 grasps): the
    # cell must never remove a body, and what it creates between two resetSimulation calls
    # (which frees everything) must stay one world's worth however long it runs.
    with SimCell(SimConfig(seed=4, split="test", n_objects=2, refresh_every=3)) as c:
        counting = _CountingPybullet(c._p)
        c._p = counting  # worlds built from here on (gripper included) go through it
        pol = ScriptedPolicy(c.spec, np.random.default_rng(0))
        for i in range(24):
            if i % 4 == 0:
                c.set_condition(CONDITION_NAMES[(i // 4) % len(CONDITION_NAMES)])
            obs = c.observe()
            c.execute(pol.act(obs.image, c.privileged()))
        c.set_condition("extend_gripper")
        before = [
            c._p.getBasePositionAndOrientation(b, physicsClientId=c._client)[0] for b in c._objects
        ]
        c.set_condition("offset_gripper")  # a new geometry: a new world, same objects
        after = [
            c._p.getBasePositionAndOrientation(b, physicsClientId=c._client)[0] for b in c._objects
        ]
    assert counting.removes == 0
    assert counting.resets >= 24 // 3 + 2  # every refresh and every geometry change
    # tray 1 + gripper (2 collision + 2 visual shapes + 1 body) + 2 objects
    assert counting.most_since_reset <= 1 + 5 + 2, counting.most_since_reset
    assert np.allclose(before, after)
