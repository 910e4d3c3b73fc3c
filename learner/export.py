"""Export a run's policy as a self-contained file: TorchScript or ONNX.

The exported module takes raw observations [N, obs_dim] float32 and returns the deterministic
action [N, act_dim] float32: observation normalisation (the run's statistics, baked in), the
policy MLP's mean, and clipping to the action space.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import torch
from torch import nn

import actors.envs  # noqa: F401  (registers the biped)
from actors.policy import ActorCritic
from learner import checkpoint

FORMATS = ("onnx", "torchscript")


class DeterministicPolicy(nn.Module):
    def __init__(self, model: ActorCritic, low: torch.Tensor, high: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("low", low)
        self.register_buffer("high", high)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return torch.clamp(self.model.pi(self.model.normalize(observations)), self.low, self.high)


def load_model(run_dir: Path) -> tuple[DeterministicPolicy, dict, Path]:
    found = checkpoint.latest(run_dir / "checkpoints")
    if found is None:
        raise FileNotFoundError(f"no loadable checkpoint in {run_dir / 'checkpoints'}")
    path, state = found
    cfg = state["config"]
    env = gym.make(cfg["env"]["id"], **cfg["env"]["kwargs"])
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    low = torch.as_tensor(env.action_space.low, dtype=torch.float32)
    high = torch.as_tensor(env.action_space.high, dtype=torch.float32)
    env.close()
    model = ActorCritic(obs_dim, act_dim, tuple(cfg["model"]["hidden"]), cfg["model"]["init_log_std"])
    model.load_state_dict(state["model"])
    return DeterministicPolicy(model, low, high).eval(), state, path


def export(run_dir: Path, fmt: str, out: Path | None = None) -> Path:
    """Write the policy of `run_dir`'s latest checkpoint as `fmt`; returns the file written."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    policy, state, _ = load_model(run_dir)
    obs_dim = policy.model.obs_dim
    out = out or run_dir / ("policy.onnx" if fmt == "onnx" else "policy.pt")
    example = torch.zeros(2, obs_dim)
    with torch.no_grad():
        if fmt == "torchscript":
            torch.jit.trace(policy, example).save(str(out))
        else:
            torch.onnx.export(policy, (example,), str(out), input_names=["observations"], output_names=["actions"],
                              dynamic_axes={"observations": {0: "batch"}, "actions": {0: "batch"}}, dynamo=False)
    return out
