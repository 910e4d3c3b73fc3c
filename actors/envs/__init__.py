"""Stride's environments. Importing this package registers them with Gymnasium.

    import actors.envs                      # registers stride/BipedWalker-v0
    env = gymnasium.make("stride/BipedWalker-v0")
    # or, with no import first (Gymnasium's "module:id" form):
    env = gymnasium.make("actors.envs:stride/BipedWalker-v0")
    # the batched fast path:
    envs = gymnasium.make_vec("stride/BipedWalker-v0", num_envs=64, vectorization_mode="vector_entry_point")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gymnasium

if TYPE_CHECKING:
    import numpy as np

BIPED_ID = "stride/BipedWalker-v0"
CHAOS_ID = "stride/Chaos-v0"  # any env with injected crashes, stalls and NaNs (chaos.py)

if BIPED_ID not in gymnasium.registry:
    gymnasium.register(
        id=BIPED_ID,
        entry_point="actors.envs.biped:BipedWalkerEnv",
        vector_entry_point="actors.envs.batched:BatchedBipedEnv",
    )
if CHAOS_ID not in gymnasium.registry:
    gymnasium.register(id=CHAOS_ID, entry_point="actors.envs.chaos:ChaosEnv")



def flat_box(space: gymnasium.Space, what: str) -> gymnasium.spaces.Box:
    """`space` as the flat Box Stride trains on ([dim] vectors), or a ValueError naming `what`
    ("observation space", "action space"). Config validation refuses other envs up front
    (learner/config.py); code that reads a space's size or bounds goes through here."""
    if not isinstance(space, gymnasium.spaces.Box) or len(space.shape) != 1:
        raise ValueError(f"{what}: Stride needs a flat Box, got {space}")
    return space


def is_biped(env_id: str) -> bool:
    """Whether `env_id` names the biped, in either spelling ("stride/BipedWalker-v0" or
    Gymnasium's "module:EnvId" form, "actors.envs:stride/BipedWalker-v0")."""
    return env_id.rpartition(":")[2] == BIPED_ID


def mirror_maps(env_id: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None:
    """((obs permutation, obs signs), (action permutation, action signs)) of the env's left-right
    mirror symmetry, or None where none is known: the biped's (biped_sim.OBS_MIRROR, ACT_MIRROR),
    for either spelling of its id."""
    if not is_biped(env_id):
        return None
    from actors.envs.biped_sim import ACT_MIRROR, OBS_MIRROR

    return OBS_MIRROR, ACT_MIRROR


__all__ = ["BIPED_ID", "CHAOS_ID", "flat_box", "is_biped", "mirror_maps"]
