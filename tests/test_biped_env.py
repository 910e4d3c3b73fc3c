"""The biped env: observation layout, reward, episode ends, seeding, bad input, rendering."""

from __future__ import annotations

import math
import subprocess
import sys

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import actors.envs  # noqa: F401  (registers stride/BipedWalker-v0)
from actors.envs.biped import BipedWalkerEnv
from actors.envs.biped_sim import ACT_MIRROR, JOINTS, OBS_MIRROR, tilt_direction

ZYX = ("z", "y", "x")


def axis_quat(axis: str, angle: float) -> np.ndarray:
    q = np.zeros(4)
    q[0] = math.cos(angle / 2)
    q[1 + "xyz".index(axis)] = math.sin(angle / 2)
    return q


def euler_quat(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Intrinsic Z-Y'-X'' composition, built with MuJoCo's own quaternion product."""
    out = np.zeros(4)
    tmp = np.zeros(4)
    mujoco.mju_mulQuat(tmp, axis_quat("z", yaw), axis_quat("y", pitch))
    mujoco.mju_mulQuat(out, tmp, axis_quat("x", roll))
    return out


def set_state(env: BipedWalkerEnv, qpos: np.ndarray | None = None, qvel: np.ndarray | None = None) -> np.ndarray:
    """Put the robot in a given state and return the observation the env reports for it."""
    d = env.data
    if qpos is not None:
        d.qpos[:] = qpos
    if qvel is not None:
        d.qvel[:] = qvel
    mujoco.mj_forward(env.model, d)
    env.sim.read_state(0)
    env._obs = env.sim.observe()[0]
    return env._obs


def joint_index(env: BipedWalkerEnv, name: str) -> tuple[int, int]:
    j = env.model.joint(name).id
    return int(env.model.jnt_qposadr[j]), int(env.model.jnt_dofadr[j])


@pytest.fixture
def env() -> BipedWalkerEnv:
    e = BipedWalkerEnv()
    e.reset(seed=0)
    return e


def test_passes_gymnasium_env_checker() -> None:
    env = gym.make("stride/BipedWalker-v0")
    check_env(env.unwrapped, skip_render_check=True)
    assert env.observation_space.shape == (31,)
    assert env.action_space.shape == (6,)


def test_registration_needs_no_prior_import() -> None:
    code = (
        "import gymnasium as gym\n"
        "e = gym.make('actors.envs:stride/BipedWalker-v0')\n"
        "o, _ = e.reset(seed=1)\n"
        "v = gym.make_vec('stride/BipedWalker-v0', num_envs=3, vectorization_mode='vector_entry_point')\n"
        "print(type(e.unwrapped).__name__, o.shape, type(v).__name__, v.reset(seed=1)[0].shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["BipedWalkerEnv", "(31,)", "BatchedBipedEnv", "(3,", "31)"]


def test_model_matches_reference_facts(env: BipedWalkerEnv) -> None:
    m = env.model
    assert m.body_subtreemass[m.body("torso").id] == pytest.approx(0.24, abs=0.01)
    assert m.body_mass[m.body("torso").id] == pytest.approx(0.16)
    assert m.opt.timestep == 0.0025 and env.params.frame_skip == 10
    assert env.control_dt == pytest.approx(0.025)
    assert [m.actuator(i).name for i in range(6)] == [
        "right_ankle", "right_knee", "right_hip", "left_ankle", "left_knee", "left_hip"
    ]
    assert np.all(m.actuator_gear[:, 0] == 3.0)
    assert np.all(m.dof_damping[6:] == 1.0)
    np.testing.assert_allclose(m.body("left_thigh").pos, [-0.01, 0.04, -0.02])
    np.testing.assert_allclose(m.body("right_thigh").pos, [-0.01, -0.04, -0.02])
    # Initial pose: torso at 0.21 m, feet flat on the floor.
    d = env.data
    assert d.qpos[2] == pytest.approx(0.21)
    for side in ("right", "left"):
        foot = d.geom(f"{side}_foot")
        assert foot.xpos[2] == pytest.approx(0.005, abs=1.5e-3)
        assert abs(foot.xmat.reshape(3, 3)[2, 2]) == pytest.approx(1.0, abs=1e-9)  # flat


def test_observation_indices_read_what_they_claim(env: BipedWalkerEnv) -> None:
    qpos = env.data.qpos.copy()
    qvel = np.zeros(env.model.nv)
    yaw, pitch, roll = 0.3, -0.2, 0.1
    qpos[0:3] = [0.5, 0.12, 0.23]
    qpos[3:7] = euler_quat(yaw, pitch, roll)
    qvel[0:3] = [0.3, -0.2, 0.1]
    knee_q, knee_v = joint_index(env, "right_knee")
    hip_q, hip_v = joint_index(env, "left_hip")
    ankle_q, ankle_v = joint_index(env, "left_ankle")
    qpos[knee_q], qvel[knee_v] = 0.7, 1.5
    qpos[hip_q], qvel[hip_v] = -0.2, 0.4
    qpos[ankle_q], qvel[ankle_v] = 0.15, -0.6
    obs = set_state(env, qpos, qvel)
    assert obs.dtype == np.float32 and obs.shape == (31,)
    assert obs[0] == pytest.approx(0.12)
    assert obs[1] == pytest.approx((0.23 - 0.21) / 0.05)
    np.testing.assert_allclose(obs[2:5], [0.3, -0.2, 0.1], rtol=1e-6)
    np.testing.assert_allclose(obs[5:8], [yaw, pitch, roll], atol=1e-6)
    assert obs[13] == pytest.approx(0.7) and obs[14] == pytest.approx(1.5)  # right knee
    assert obs[21] == pytest.approx(-0.2) and obs[22] == pytest.approx(0.4)  # left hip
    assert obs[17] == pytest.approx(0.15) and obs[18] == pytest.approx(-0.6)  # left ankle
    np.testing.assert_array_equal(obs[25:31], 0.0)


def test_angular_velocity_is_on_world_axes(env: BipedWalkerEnv) -> None:
    qpos = env.data.qpos.copy()
    qpos[3:7] = axis_quat("z", math.pi / 2)  # torso yawed 90 degrees left
    qvel = np.zeros(env.model.nv)
    qvel[3:6] = [1.0, 0.0, 0.0]  # MuJoCo: body-frame angular velocity about the torso's x
    obs = set_state(env, qpos, qvel)
    np.testing.assert_allclose(obs[8:11], [0.0, 1.0, 0.0], atol=1e-6)  # torso x points along world y
    # Cross-check against MuJoCo's own world-frame velocity of the torso (angular part first).
    vel = np.zeros(6)
    mujoco.mj_objectVelocity(env.model, env.data, mujoco.mjtObj.mjOBJ_BODY, env.model.body("torso").id, vel, 0)
    np.testing.assert_allclose(obs[8:11], vel[:3], atol=1e-6)


def foot_normal_forces(env: BipedWalkerEnv) -> list[float]:
    """Independent reference: sum the normal forces of each foot's contacts via mj_contactForce."""
    m, d = env.model, env.data
    forces = [0.0, 0.0]
    f = np.zeros(6)
    for k in range(d.ncon):
        c = d.contact[k]
        for side, name in enumerate(("right_foot", "left_foot")):
            if m.geom(name).id in (c.geom1, c.geom2):
                mujoco.mj_contactForce(m, d, k, f)
                forces[side] += f[0]
    return forces


def test_foot_contact_flags_and_forces() -> None:
    flags = BipedWalkerEnv()
    flags.reset(seed=3)
    obs = flags.step(np.zeros(6))[0]
    ref = foot_normal_forces(flags)
    assert ref[0] > 0 and ref[1] > 0
    np.testing.assert_array_equal(obs[23:25], [1.0, 1.0])
    force = BipedWalkerEnv(contact_mode="force")
    force.reset(seed=3)
    obs = force.step(np.zeros(6))[0]
    np.testing.assert_allclose(obs[23:25], np.array(ref) / force.sim.robot_weight, rtol=1e-5)
    # Lifted into the air: no contact.
    qpos = flags.data.qpos.copy()
    qpos[2] = 1.0
    obs = set_state(flags, qpos)
    np.testing.assert_array_equal(obs[23:25], [0.0, 0.0])


def test_reward_matches_hand_computation() -> None:
    env = BipedWalkerEnv()
    env.reset(seed=5)
    rng = np.random.default_rng(0)
    for _ in range(15):
        u = rng.uniform(-1.5, 1.5, 6)
        obs, reward, terminated, truncated, info = env.step(u)
        d = env.data
        clipped = np.clip(u, -1, 1)
        survival = 25 * 0.025 / 10
        hand = d.qvel[0] - 3 * d.qpos[1] ** 2 - 50 * (d.qpos[2] - 0.21) ** 2 + survival - 0.02 * np.sum(clipped**2)
        assert reward == pytest.approx(hand, rel=1e-5, abs=1e-6)
        # ...and exactly from the observation it comes with.
        o = obs.astype(np.float64)
        from_obs = o[2] - 3 * o[0] ** 2 - 50 * (0.05 * o[1]) ** 2 + 0.0625 - 0.02 * np.sum(o[25:31] ** 2)
        assert reward == pytest.approx(from_obs, abs=1e-12)
        assert sum(info["reward_terms"].values()) == pytest.approx(reward, abs=1e-12)
        np.testing.assert_array_equal(obs[25:31], clipped.astype(np.float32))
        if terminated or truncated:
            break


def test_reward_coefficients_are_arguments() -> None:
    a, b = BipedWalkerEnv(), BipedWalkerEnv(effort_weight=0.22, survival_bonus=0.0)
    a.reset(seed=1)
    b.reset(seed=1)
    u = np.full(6, 0.5)
    _, ra, *_ = a.step(u)
    _, rb, _, _, info = b.step(u)
    assert info["reward_terms"]["effort"] == pytest.approx(-0.22 * 6 * 0.25)
    assert ra - rb == pytest.approx(0.0625 - 0.02 * 1.5 + 0.22 * 1.5, abs=1e-9)


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        # Lying on its front: low and tilted; "fell" is reported before "tilt".
        (lambda q: (q.__setitem__(2, 0.03), q.__setitem__(slice(3, 7), euler_quat(0.0, 1.3, 0.0))), "fell"),
        (lambda q: q.__setitem__(1, 1.2), "lateral"),
        (lambda q: q.__setitem__(slice(3, 7), euler_quat(0.0, 0.0, 0.9)), "tilt"),  # roll
        (lambda q: q.__setitem__(slice(3, 7), euler_quat(0.0, 0.9, 0.0)), "tilt"),  # pitch
        (lambda q: q.__setitem__(slice(3, 7), euler_quat(-0.9, 0.0, 0.0)), "tilt"),  # yaw
    ],
)
def test_each_termination_condition_fires(env: BipedWalkerEnv, edit, reason: str) -> None:
    qpos = env.data.qpos.copy()
    edit(qpos)
    set_state(env, qpos, np.zeros(env.model.nv))
    _, _, terminated, truncated, info = env.step(np.zeros(6))
    assert terminated and not truncated
    assert info["ended_by"] == reason


@pytest.mark.parametrize(
    ("euler", "way"),
    [((0.0, 0.9, 0.0), "forward"), ((0.0, -0.9, 0.0), "backward"), ((0.0, 0.0, 0.9), "sideways"),
     ((0.0, 0.0, -0.9), "sideways"), ((-0.9, 0.0, 0.0), "turned"), ((0.3, -0.85, 0.5), "backward")],
)
def test_a_tilt_episode_says_which_way_it_went_over(env: BipedWalkerEnv, euler, way: str) -> None:
    """tilt_direction reads the last observation's yaw, pitch and roll (obs 5-7): the angle
    furthest from level, with positive pitch (front down) forward."""
    qpos = env.data.qpos.copy()
    qpos[3:7] = euler_quat(*euler)
    set_state(env, qpos, np.zeros(env.model.nv))
    obs, _, terminated, _, info = env.step(np.zeros(6))
    assert terminated and info["ended_by"] == "tilt"
    assert tilt_direction(obs) == way


def mirrored_state(env: BipedWalkerEnv) -> tuple[np.ndarray, np.ndarray]:
    """The robot's state reflected in the x-z plane: y, the quaternion's x and z parts, vy and the
    (body-frame) angular velocity about x and z negated, the two legs' joints swapped."""
    qpos, qvel = env.data.qpos.copy(), env.data.qvel.copy()
    qpos[1] *= -1
    qpos[[4, 6]] *= -1  # (w, x, y, z): a rotation's axis reflects as a pseudovector
    qvel[[1, 3, 5]] *= -1
    for joint in JOINTS:
        (qr, vr), (ql, vl) = joint_index(env, f"right_{joint}"), joint_index(env, f"left_{joint}")
        qpos[[qr, ql]], qvel[[vr, vl]] = qpos[[ql, qr]], qvel[[vl, vr]]
    return qpos, qvel


def test_the_mirror_maps_are_the_tasks_left_right_symmetry() -> None:
    """From the mirror image of a state, the mirrored action gives the mirrored observation and
    the same reward (checked one step at a time along a random-policy episode), so the maps the
    learner's ppo.mirror uses describe the env, not an assumption about it."""
    a_env, b_env = BipedWalkerEnv(), BipedWalkerEnv()
    obs, _ = a_env.reset(seed=3)
    b_env.reset(seed=3)
    (operm, osign), (aperm, asign) = OBS_MIRROR, ACT_MIRROR
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(40):
        b_env.sim.prev_action[0] = a_env.sim.prev_action[0][aperm] * asign
        b_obs = set_state(b_env, *mirrored_state(a_env))
        np.testing.assert_allclose(b_obs, obs[operm] * osign, atol=1e-6)
        action = rng.uniform(-1, 1, 6)
        obs, r, terminated, truncated, info = a_env.step(action)
        b_obs, b_r, b_term, _, b_info = b_env.step(action[aperm] * asign)
        np.testing.assert_allclose(b_obs, obs[operm] * osign, atol=1e-6)  # measured: exact (0.0)
        assert b_r == pytest.approx(r, abs=1e-9) and (b_term, b_info["ended_by"]) == (terminated, info["ended_by"])
        checked += 1
        if terminated or truncated:
            obs, _ = a_env.reset(seed=4 + checked)
    assert checked == 40


def test_with_zero_torque_the_biped_tips_forward() -> None:
    """docs/biped.md: with no torque the robot pitches forward past pi/4 in about 0.65 s."""
    env = BipedWalkerEnv()
    for seed in range(3):
        env.reset(seed=seed)
        steps, done = 0, False
        while not done:
            obs, _, terminated, truncated, info = env.step(np.zeros(6))
            steps += 1
            done = terminated or truncated
        assert info["ended_by"] == "tilt" and tilt_direction(obs) == "forward" and obs[6] >= math.pi / 4
        assert 0.5 <= steps * env.control_dt <= 0.8


def test_healthy_state_does_not_terminate(env: BipedWalkerEnv) -> None:
    _, _, terminated, truncated, info = env.step(np.zeros(6))
    assert not terminated and not truncated and info["ended_by"] == ""


def test_truncation_at_400_steps_is_not_termination() -> None:
    # Termination thresholds out of reach, so only the time limit can end the episode.
    env = BipedWalkerEnv(min_height=-1.0, max_lateral=1e9, max_tilt=10.0)
    env.reset(seed=0)
    for t in range(1, 401):
        _, _, terminated, truncated, info = env.step(np.zeros(6))
        assert not terminated
        if t < 400:
            assert not truncated
    assert truncated and info["ended_by"] == "time_limit"


@pytest.mark.parametrize("policy", ["zero", "random"])
def test_full_episodes_run_without_errors(policy: str) -> None:
    env = BipedWalkerEnv()
    rng = np.random.default_rng(1)
    for ep in range(5):
        obs, _ = env.reset(seed=ep)
        done, steps = False, 0
        while not done:
            a = np.zeros(6) if policy == "zero" else rng.uniform(-1, 1, 6)
            obs, r, terminated, truncated, info = env.step(a)
            assert np.isfinite(obs).all() and np.isfinite(r)
            assert not info["physics_diverged"]
            steps += 1
            done = terminated or truncated
        assert 0 < steps <= 400


def test_seeding_is_deterministic() -> None:
    def run(seed: int) -> np.ndarray:
        env = BipedWalkerEnv()
        out = [env.reset(seed=seed)[0]]
        for a in np.random.default_rng(9).uniform(-1, 1, (30, 6)):
            out.append(env.step(a)[0])
        return np.array(out)

    np.testing.assert_array_equal(run(4), run(4))
    assert not np.array_equal(run(4)[0], run(5)[0])


def test_bad_actions_raise_value_error(env: BipedWalkerEnv) -> None:
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(5))
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros((1, 6)))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([0, 0, np.nan, 0, 0, 0]))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([0, 0, np.inf, 0, 0, 0]))
    obs, *_ = env.step(np.array([2.0, -3.0, 0.5, 1.0, -1.0, 10.0]))  # still usable; clipped
    np.testing.assert_array_equal(obs[25:31], np.float32([1.0, -1.0, 0.5, 1.0, -1.0, 1.0]))


def test_bad_params_raise() -> None:
    with pytest.raises(ValueError, match="contact_mode"):
        BipedWalkerEnv(contact_mode="pressure")
    with pytest.raises(ValueError, match="foot_width"):
        BipedWalkerEnv(foot_width=-0.1)
    with pytest.raises(TypeError):
        BipedWalkerEnv(not_a_param=1)


@pytest.mark.parametrize("blow_up", ["huge_velocity", "nan_position"])
def test_diverged_physics_ends_episode_without_nan(env: BipedWalkerEnv, blow_up: str) -> None:
    before, *_ = env.step(np.zeros(6))
    if blow_up == "huge_velocity":
        env.data.qvel[:] = 1e12
    else:
        env.data.qpos[4] = np.nan
    obs, reward, terminated, truncated, info = env.step(np.zeros(6))
    assert info["physics_diverged"] and info["ended_by"] == "physics_diverged"
    assert terminated and not truncated and reward == 0.0
    assert np.isfinite(obs).all()
    np.testing.assert_array_equal(obs, before)
    obs, _ = env.reset()
    assert np.isfinite(obs).all()


def test_wider_foot_variant() -> None:
    env = BipedWalkerEnv(foot_width=0.08)
    assert env.model.geom("left_foot").size[1] == pytest.approx(0.04)
    assert BipedWalkerEnv().model.geom("left_foot").size[1] == pytest.approx(0.02)


def test_render_rgb_array_and_video(tmp_path) -> None:
    from actors.envs.video import record_episode

    env = BipedWalkerEnv(render_mode="rgb_array", width=160, height=120)
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (120, 160, 3) and frame.dtype == np.uint8
    assert frame.std() > 5  # a real picture, not a blank
    stats = record_episode(env, lambda o: np.zeros(6), tmp_path / "walk.mp4", seed=0, max_steps=20)
    assert 0 < stats["length"] <= 20
    import imageio.v3 as iio

    frames = iio.imread(tmp_path / "walk.mp4")
    assert frames.shape[0] == stats["length"] + 1 and frames.shape[1:] == (120, 160, 3)
    gif = record_episode(env, lambda o: np.zeros(6), tmp_path / "walk.gif", seed=0, max_steps=5)
    assert (tmp_path / "walk.gif").stat().st_size > 0 and gif["length"] == 5
    env.close()
