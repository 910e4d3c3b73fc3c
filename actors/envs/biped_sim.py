"""The biped's physics and task logic for B robots at once, shared by the single and batched envs.

Both `BipedWalkerEnv` (B = 1) and `BatchedBipedEnv` (B = N) drive a `BipedSim`, so the same
numbers come out of the same code: that is what makes "batched equals single" hold bit for bit.

Frames and conventions (also in docs/biped.md):
- World frame: x forward, y left, z up. The torso's free joint gives its centre position and a
  unit quaternion (w, x, y, z) from torso frame to world.
- Euler angles are intrinsic Z-Y'-X'' (yaw, pitch, roll): R = Rz(yaw) @ Ry(pitch) @ Rx(roll).
  Pitch is in [-pi/2, pi/2]; positive pitch tips the torso's front (+x) down.
- Linear velocity (obs 2-4) is the torso centre's velocity in the world frame; angular velocity
  (obs 8-10) is expressed on world-aligned axes (MuJoCo stores it in the body frame; we rotate).
- Joint angles are hinge angles about +y; positive turns a downward segment backwards.
- Foot contact is the touch sensor on each sole, i.e. the normal forces the solver found in the
  final physics substep of the control step.
"""

from __future__ import annotations

import ctypes.util
import functools
import math
import os
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    # Headless Linux: EGL (Mesa's software renderer when there is no GPU) is the backend that
    # works; MuJoCo's default (GLFW) needs a display. Must be set before mujoco is imported.
    # Only where libEGL exists: with MUJOCO_GL=egl and no libEGL, `import mujoco` itself fails
    # (PyOpenGL raises AttributeError, which MuJoCo does not catch), so simulation would fail too;
    # without it, only rendering (videos) is unavailable, and that is reported where it is used.
    if ctypes.util.find_library("EGL"):
        os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402

ASSET = Path(__file__).parent / "assets" / "biped.xml"
OBS_DIM = 31
ACT_DIM = 6
REFERENCE_HEIGHT = 0.21
HEIGHT_SCALE = 0.05
JOINTS = ("ankle", "knee", "hip")  # per-leg order in the observation and the action
SIDES = ("right", "left")

_BAD_STATE_WARNINGS = [
    int(mujoco.mjtWarning.mjWARN_BADQPOS),
    int(mujoco.mjtWarning.mjWARN_BADQVEL),
    int(mujoco.mjtWarning.mjWARN_BADQACC),
]

# Why an episode ended, as stored in info["ended_by"]. Several can hold at once; the first in
# this order is reported.
END_NONE = ""
END_DIVERGED = "physics_diverged"
END_FELL = "fell"  # torso centre at or below min_height
END_LATERAL = "lateral"  # |y| beyond max_lateral
END_TILT = "tilt"  # |yaw|, |pitch| or |roll| at or beyond max_tilt
END_TIME = "time_limit"  # truncation


def _mirror_map(size: int, swaps: list[tuple[int, int]], flips: list[int]) -> tuple[np.ndarray, np.ndarray]:
    perm, sign = np.arange(size), np.ones(size, dtype=np.float32)
    for a, b in swaps:
        perm[a], perm[b] = b, a
    sign[flips] = -1.0
    return perm, sign


# The biped's mirror image in the x-z plane (y -> -y), an exact symmetry of the task: the model,
# reset noise, reward and ends are the same for both legs. obs' = obs[OBS_MIRROR[0]] *
# OBS_MIRROR[1] swaps the legs' joint pairs, contacts and previous actions, and negates y, vy,
# yaw, roll and the angular velocity about x and z (a rotation about y is its own mirror image,
# so pitch and every hinge angle keep their sign); ACT_MIRROR swaps the two legs' torques.
OBS_MIRROR = _mirror_map(
    31,
    [(11 + k, 17 + k) for k in range(6)] + [(23, 24)] + [(25 + k, 28 + k) for k in range(3)],
    [0, 3, 5, 7, 8, 10],
)
ACT_MIRROR = _mirror_map(6, [(k, 3 + k) for k in range(3)], [])


def tilt_direction(obs: np.ndarray) -> str:
    """Which way a robot whose episode ended by `tilt` went over, from its last observation
    [31] (yaw, pitch, roll at 5-7): the angle furthest from level names it; "forward" is
    positive pitch (front down), "backward" negative, "sideways" roll, "turned" yaw."""
    yaw, pitch, roll = (abs(float(a)) for a in obs[5:8])
    if pitch >= yaw and pitch >= roll:
        return "forward" if obs[6] > 0 else "backward"
    return "sideways" if roll >= yaw else "turned"


@dataclass(frozen=True)
class BipedParams:
    """Every coefficient of the task. Defaults reproduce the reference walking-robot task."""

    forward_weight: float = 1.0
    """Weight of forward speed v_x (m/s) in the reward."""
    lateral_weight: float = 3.0
    """Penalty weight on lateral position squared, y^2 (m^2)."""
    height_weight: float = 50.0
    """Penalty weight on the squared torso height error (z - 0.21)^2 (m^2)."""
    survival_bonus: float = 25 * 0.025 / 10.0
    """Reward per control step for staying up: 25 * Ts / Tf = 0.0625."""
    effort_weight: float = 0.02
    """c_u: penalty weight on the sum of squared normalised actions. 0.02 is the reference model's
    value; one description of the task uses 0.22."""
    max_episode_steps: int = 400
    """Control steps before truncation (Tf / Ts = 10 s / 0.025 s)."""
    frame_skip: int = 10
    """Physics steps (2.5 ms each) per control step."""
    min_height: float = 0.1
    """Terminate when the torso centre is at or below this height (m)."""
    max_lateral: float = 1.0
    """Terminate when |y| exceeds this (m)."""
    max_tilt: float = math.pi / 4
    """Terminate when |yaw|, |pitch| or |roll| reaches this (rad)."""
    reset_noise: float = 0.05
    """Half-width of the uniform noise on initial hip angles (rad) and all initial velocities."""
    contact_mode: str = "flag"
    """'flag': obs 23-24 are 1.0 when a foot's normal force is > 0; 'force': the normal force
    divided by the robot's weight."""
    foot_width: float = 0.04
    """Foot width in y (m). 0.04 is the reference; a wider foot makes single support easier."""
    max_speed: float = 1e3
    """A generalised velocity beyond this (m/s or rad/s) counts as diverged physics."""

    def __post_init__(self) -> None:
        if self.contact_mode not in ("flag", "force"):
            raise ValueError(f"contact_mode must be 'flag' or 'force', got {self.contact_mode!r}")
        for name in ("max_episode_steps", "frame_skip"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.foot_width <= 0.2:
            raise ValueError(f"foot_width must be in (0, 0.2] m, got {self.foot_width}")
        if self.reset_noise < 0:
            raise ValueError(f"reset_noise must be >= 0, got {self.reset_noise}")


@functools.lru_cache(maxsize=8)
def load_model(foot_width: float = 0.04) -> mujoco.MjModel:
    """Compile the biped MJCF, with the feet (and their contact sites) resized to `foot_width`."""
    root = ET.parse(ASSET).getroot()
    for side in SIDES:
        for tag, name, pad in (("geom", f"{side}_foot", 0.0), ("site", f"{side}_sole", 0.002)):
            node = root.find(f".//{tag}[@name='{name}']")
            assert node is not None, name
            sx, _, sz = (float(v) for v in node.attrib["size"].split())
            node.set("size", f"{sx} {foot_width / 2 + pad} {sz}")
    return mujoco.MjModel.from_xml_string(ET.tostring(root, encoding="unicode"))


def quat_to_euler(quat: np.ndarray) -> np.ndarray:
    """Unit quaternions [B, 4] (w, x, y, z) -> intrinsic ZYX Euler angles [B, 3] (yaw, pitch, roll)."""
    w, x, y, z = quat[:, 0], quat[:, 1], quat[:, 2], quat[:, 3]
    yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    pitch = np.arcsin(np.clip(2 * (w * y - z * x), -1.0, 1.0))
    roll = np.arctan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
    return np.stack([yaw, pitch, roll], axis=1)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cross product of [B, 3] arrays (np.cross is slow on small batches)."""
    out = np.empty_like(b)
    out[:, 0] = a[:, 1] * b[:, 2] - a[:, 2] * b[:, 1]
    out[:, 1] = a[:, 2] * b[:, 0] - a[:, 0] * b[:, 2]
    out[:, 2] = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    return out


def rotate_to_world(quat: np.ndarray, vec: np.ndarray) -> np.ndarray:
    """Rotate body-frame vectors [B, 3] into the world frame by unit quaternions [B, 4]."""
    w = quat[:, :1]
    u = quat[:, 1:]
    # v' = v + 2 w (u x v) + 2 u x (u x v)
    t = 2 * _cross(u, vec)
    return vec + w * t + _cross(u, t)


class BipedSim:
    """B bipeds sharing one compiled model, each with its own MjData and RNG."""

    def __init__(self, num: int, params: BipedParams) -> None:
        self.params = params
        self.num = num
        self.model = load_model(params.foot_width)
        m = self.model
        self.datas = [mujoco.MjData(m) for _ in range(num)]
        joint_ids = [m.joint(f"{s}_{j}").id for s in SIDES for j in JOINTS]
        self._qadr = np.array([m.jnt_qposadr[i] for i in joint_ids])
        self._vadr = np.array([m.jnt_dofadr[i] for i in joint_ids])
        self._act_ids = np.array([m.actuator(f"{s}_{j}").id for s in SIDES for j in JOINTS])
        self._weight = float(m.body_subtreemass[m.body("torso").id] * -m.opt.gravity[2])
        self.qpos = np.zeros((num, m.nq))
        self.qvel = np.zeros((num, m.nv))
        self.touch = np.zeros((num, 2))
        self.prev_action = np.zeros((num, ACT_DIM), dtype=np.float32)
        self.steps = np.zeros(num, dtype=np.int64)
        self.euler = np.zeros((num, 3))
        self._ctrl = np.zeros((num, m.nu))
        self._warnings = np.zeros((num, len(mujoco.mjtWarning.__members__) - 1), dtype=np.int64)
        self._home = self._standing_pose()
        self._hip_adr = [m.jnt_qposadr[m.joint(f"{s}_hip").id] for s in SIDES]
        self._ankle_adr = [m.jnt_qposadr[m.joint(f"{s}_ankle").id] for s in SIDES]

    def _standing_pose(self) -> np.ndarray:
        """qpos with the torso at 0.21 m and knees bent so both soles rest flat on the floor."""
        m = self.model
        qpos = m.qpos0.copy()
        qpos[2] = REFERENCE_HEIGHT
        thigh = m.body("right_thigh")
        hip_height = REFERENCE_HEIGHT + thigh.pos[2]
        ankle_height = -2 * m.geom("right_foot").pos[2]  # the sole is at z = 0
        segment = -m.body("right_shin").pos[2]
        bend = math.acos((hip_height - ankle_height) / (2 * segment))
        for side in SIDES:
            for joint, angle in (("hip", -bend), ("knee", 2 * bend), ("ankle", -bend)):
                qpos[m.jnt_qposadr[m.joint(f"{side}_{joint}").id]] = angle
        return qpos

    @property
    def robot_weight(self) -> float:
        """The robot's weight (N), used to scale contact forces in 'force' mode."""
        return self._weight

    def reset(self, i: int, rng: np.random.Generator) -> None:
        """Put robot i in the standing pose with seeded noise on foot placement and velocities."""
        m, d = self.model, self.datas[i]
        mujoco.mj_resetData(m, d)
        noise = self.params.reset_noise
        # Swing each leg forward or back by a small angle, keeping the foot flat.
        delta = rng.uniform(-noise, noise, size=len(SIDES))
        qpos = self._home.copy()
        qpos[self._hip_adr] += delta
        qpos[self._ankle_adr] -= delta
        d.qpos[:] = qpos
        d.qvel[:] = rng.uniform(-noise, noise, size=m.nv)
        mujoco.mj_forward(m, d)
        self.read_state(i)
        self.prev_action[i] = 0.0
        self.steps[i] = 0
        self._warnings[i] = d.warning.number

    def read_state(self, i: int) -> None:
        """Copy robot i's MjData state into the batch buffers (after editing it by hand)."""
        d = self.datas[i]
        self.qpos[i] = d.qpos
        self.qvel[i] = d.qvel
        self.touch[i] = d.sensordata

    def step(self, actions: np.ndarray) -> np.ndarray:
        """Apply clipped actions [B, 6] for one control step; returns a diverged mask [B]."""
        self.prev_action[:] = actions
        self._ctrl[:, self._act_ids] = actions
        m, nstep = self.model, self.params.frame_skip
        warnings = np.empty_like(self._warnings)
        for i, d in enumerate(self.datas):
            d.ctrl[:] = self._ctrl[i]
            mujoco.mj_step(m, d, nstep)
            self.qpos[i] = d.qpos
            self.qvel[i] = d.qvel
            self.touch[i] = d.sensordata
            warnings[i] = d.warning.number
        self.steps += 1
        # When a state goes bad (NaN, huge acceleration) MuJoCo warns and resets that robot's
        # data; a finite but absurd velocity is the other face of a blow-up.
        bad = _BAD_STATE_WARNINGS
        diverged = (
            (warnings[:, bad] != self._warnings[:, bad]).any(axis=1)
            | ~np.isfinite(self.qpos).all(axis=1)
            | ~(np.abs(self.qvel) <= self.params.max_speed).all(axis=1)
        )
        self._warnings = warnings
        return diverged

    def observe(self, rows: np.ndarray | None = None) -> np.ndarray:
        """The 31-value observation of every robot (or of `rows`), [B or len(rows), 31] float32
        (layout in docs/biped.md). Also keeps their Euler angles for `end_reasons`."""
        sel = slice(None) if rows is None else rows
        qpos, qvel = self.qpos[sel], self.qvel[sel]
        n = qpos.shape[0]
        quat = qpos[:, 3:7]
        obs = np.empty((n, OBS_DIM), dtype=np.float64)
        obs[:, 0] = qpos[:, 1]
        obs[:, 1] = (qpos[:, 2] - REFERENCE_HEIGHT) / HEIGHT_SCALE
        obs[:, 2:5] = qvel[:, 0:3]
        euler = quat_to_euler(quat)
        self.euler[sel] = euler
        obs[:, 5:8] = euler
        obs[:, 8:11] = rotate_to_world(quat, qvel[:, 3:6])
        legs = np.empty((n, 6, 2))
        legs[:, :, 0] = qpos[:, self._qadr]
        legs[:, :, 1] = qvel[:, self._vadr]
        obs[:, 11:23] = legs.reshape(n, 12)
        touch = self.touch[sel]
        if self.params.contact_mode == "flag":
            obs[:, 23:25] = touch > 0.0
        else:
            obs[:, 23:25] = touch / self._weight
        obs[:, 25:31] = self.prev_action[sel]
        return obs.astype(np.float32)

    def reward_terms(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        """Each reward term [B] (float64), computed from the float32 observation it comes with."""
        p = self.params
        o = obs.astype(np.float64)
        u = o[:, 25:31]
        effort = u[:, 0] ** 2 + u[:, 1] ** 2 + u[:, 2] ** 2 + u[:, 3] ** 2 + u[:, 4] ** 2 + u[:, 5] ** 2
        return {
            "forward": p.forward_weight * o[:, 2],
            "lateral": -p.lateral_weight * o[:, 0] ** 2,
            "height": -p.height_weight * (HEIGHT_SCALE * o[:, 1]) ** 2,
            "survival": np.full(self.num, p.survival_bonus),
            "effort": -p.effort_weight * effort,
        }

    def end_reasons(self, diverged: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """terminated [B], truncated [B] and the reason each episode ended ('' if it goes on).
        Reads the Euler angles `observe()` computed for the current state."""
        p = self.params
        euler = self.euler
        fell = self.qpos[:, 2] <= p.min_height
        lateral = np.abs(self.qpos[:, 1]) > p.max_lateral
        tilt = (np.abs(euler) >= p.max_tilt).any(axis=1)
        terminated = diverged | fell | lateral | tilt
        truncated = ~terminated & (self.steps >= p.max_episode_steps)
        reasons = np.select(
            [diverged, fell, lateral, tilt, truncated],
            [END_DIVERGED, END_FELL, END_LATERAL, END_TILT, END_TIME],
            default=END_NONE,
        ).astype(object)
        return terminated, truncated, reasons

    def advance(self, actions: np.ndarray, last_obs: np.ndarray) -> Transition:
        """One control step for all robots with validated actions [B, 6]. A diverged robot
        reports `last_obs` (its last finite observation) and reward 0."""
        diverged = self.step(actions)
        obs = self.observe()
        terminated, truncated, reasons = self.end_reasons(diverged)
        obs[diverged] = last_obs[diverged]
        terms = self.reward_terms(obs)
        for term in terms.values():
            term[diverged] = 0.0
        reward = terms["forward"] + terms["lateral"] + terms["height"] + terms["survival"] + terms["effort"]
        return Transition(obs, reward, terms, terminated, truncated, reasons, diverged)


@dataclass
class Transition:
    """What one control step of B robots produced."""

    obs: np.ndarray  # [B, 31] float32
    reward: np.ndarray  # [B] float64
    terms: dict[str, np.ndarray]  # each reward term, [B] float64
    terminated: np.ndarray  # [B] bool
    truncated: np.ndarray  # [B] bool
    reasons: np.ndarray  # [B] object: why the episode ended, '' if it goes on
    diverged: np.ndarray  # [B] bool


def validate_actions(actions: object, shape: tuple[int, ...]) -> np.ndarray:
    """Check an action array's shape and finiteness and clip it to [-1, 1] (float64 copy)."""
    a = np.asarray(actions, dtype=np.float64)
    if a.shape != shape:
        raise ValueError(f"action must have shape {shape}, got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"action contains NaN or inf: {a.tolist()}")
    return np.clip(a, -1.0, 1.0)
