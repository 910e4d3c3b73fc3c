"""Stride's environments. Importing this package registers them with Gymnasium.

    import actors.envs                      # registers stride/BipedWalker-v0
    env = gymnasium.make("stride/BipedWalker-v0")
    # or, with no import first (Gymnasium's "module:id" form):
    env = gymnasium.make("actors.envs:stride/BipedWalker-v0")
    # the batched fast path:
    envs = gymnasium.make_vec("stride/BipedWalker-v0", num_envs=64, vectorization_mode="vector_entry_point")
"""

import gymnasium

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

__all__ = ["BIPED_ID", "CHAOS_ID"]
