"""Several fragments as one object: what a node's relay ships to the learner (actors/relay.py).

`pack` turns K fragments of one T into one `PackedFragments`: each array concatenated along its
env axis (`final_obs` along its rows), plus one small `FragmentMeta` per fragment. `unpack`
returns the K fragments again, their arrays views into the packed ones (no copy). Pure NumPy:
no Ray. Why and what it measured: docs/scaling.md, "Session 22: per-node relays".
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from actors.trajectory import EpisodeStats, Trajectory

# Arrays of a Trajectory with the env axis second ([T(+1), B, ...]).
ENV_AXIS_ARRAYS = ("obs", "actions", "logp", "rewards", "terminated", "truncated")


@dataclass(frozen=True)
class FragmentMeta:
    """Everything of one Trajectory except its arrays, plus where its columns are."""

    num_envs: int  # B of this fragment: its columns in the packed env axis
    num_final: int  # K of this fragment: its rows of the packed final_obs
    policy_version: int
    worker_id: int
    episodes: EpisodeStats
    env_errors: int
    sample_seconds: float
    rss_bytes: int
    fragment_id: str


META_FIELDS = tuple(f.name for f in fields(FragmentMeta) if f.name not in ("num_envs", "num_final"))


@dataclass(frozen=True)
class PackedFragments:
    """K fragments of one T. Shapes, with ΣB the fragments' envs and ΣK their truncations:

    obs [T+1, ΣB, obs_dim]; actions [T, ΣB, act_dim]; logp, rewards, terminated, truncated
    [T, ΣB]; final_obs [ΣK, obs_dim], each fragment's rows kept together and in its own order
    (not the row-major order of the packed `truncated`: this is transport, not a Trajectory).
    """

    obs: np.ndarray
    actions: np.ndarray
    logp: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    final_obs: np.ndarray
    meta: tuple[FragmentMeta, ...]

    def __len__(self) -> int:
        return len(self.meta)


def pack(fragments: list[Trajectory]) -> PackedFragments:
    """One object for `fragments` (at least one; all of the same T and observation shape)."""
    if not fragments:
        raise ValueError("pack() needs at least one fragment")
    lengths = {f.rewards.shape[0] for f in fragments}
    if len(lengths) > 1:
        raise ValueError(f"pack() needs fragments of one length T, got {sorted(lengths)}")
    arrays = {k: np.concatenate([getattr(f, k) for f in fragments], axis=1) for k in ENV_AXIS_ARRAYS}
    meta = tuple(
        FragmentMeta(num_envs=f.rewards.shape[1], num_final=f.final_obs.shape[0],
                     **{k: getattr(f, k) for k in META_FIELDS})
        for f in fragments
    )
    return PackedFragments(final_obs=np.concatenate([f.final_obs for f in fragments], axis=0), meta=meta, **arrays)


def unpack(packed: PackedFragments) -> list[Trajectory]:
    """The fragments `pack` was given, in order; their arrays are views into `packed`'s."""
    out = []
    col = row = 0
    for m in packed.meta:
        cols = slice(col, col + m.num_envs)
        arrays = {k: getattr(packed, k)[:, cols] for k in ENV_AXIS_ARRAYS}
        out.append(Trajectory(final_obs=packed.final_obs[row: row + m.num_final],
                              **arrays, **{k: getattr(m, k) for k in META_FIELDS}))
        col += m.num_envs
        row += m.num_final
    return out
