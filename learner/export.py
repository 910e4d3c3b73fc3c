"""Export a run's policy as a self-contained file: ONNX, a torch.export program (.pt2), or
TorchScript (.pt; PyTorch deprecates TorchScript, so `pt2` is its successor here).

The exported module takes raw observations [N, obs_dim] float32 and returns the deterministic
action [N, act_dim] float32: observation normalisation (the run's statistics, baked in), the
policy MLP's mean, and clipping to the action space.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import gymnasium as gym
import torch
from torch import nn

from actors.envs import flat_box  # importing it registers the biped
from actors.policy import ActorCritic
from learner import checkpoint

if TYPE_CHECKING:
    import numpy as np

FORMATS = ("onnx", "pt2", "torchscript")
SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".pt"}


class DeterministicPolicy(nn.Module):
    low: torch.Tensor  # action bounds [act_dim], registered as buffers so they travel with the module
    high: torch.Tensor

    def __init__(self, model: ActorCritic, low: torch.Tensor, high: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("low", low)
        self.register_buffer("high", high)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return torch.clamp(self.model.pi(self.model.normalize(observations)), self.low, self.high)


def load_model(run_dir: Path) -> tuple[DeterministicPolicy, dict, Path]:
    path, state = checkpoint.require_latest(run_dir)
    cfg = state["config"]
    env = gym.make(cfg["env"]["id"], **cfg["env"]["kwargs"])
    act_space = flat_box(env.action_space, "action space")
    obs_dim, act_dim = flat_box(env.observation_space, "observation space").shape[0], act_space.shape[0]
    low = torch.as_tensor(act_space.low, dtype=torch.float32)
    high = torch.as_tensor(act_space.high, dtype=torch.float32)
    env.close()
    model = ActorCritic(obs_dim, act_dim, tuple(cfg["model"]["hidden"]), cfg["model"]["init_log_std"])
    model.load_state_dict(state["model"])
    return DeterministicPolicy(model, low, high).eval(), state, path


METADATA_KEY = "stride_metadata"
BATCH_FREE = ({0: torch.export.Dim("batch")},)  # the observations' first dimension stays free


def export(run_dir: Path, fmt: str, out: Path | None = None) -> Path:
    """Write the policy of `run_dir`'s latest checkpoint as `fmt`; returns the file written.

    The file carries JSON metadata (env id, policy version, env steps, spaces, log-std) so a
    server can describe and sample from it without the run folder: an ONNX metadata property, or
    an extra file of the .pt2 / TorchScript archive, each named `stride_metadata`.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    policy, state, path = load_model(run_dir)
    obs_dim = policy.model.obs_dim
    out = out or run_dir / f"policy{SUFFIXES[fmt]}"
    meta = json.dumps({
        "env_id": state["config"]["env"]["id"], "policy_version": int(state["learner"]["version"]),
        "env_steps": int(state["counters"]["env_steps"]), "checkpoint": str(path), "obs_dim": obs_dim,
        "act_low": policy.low.tolist(), "act_high": policy.high.tolist(),
        "log_std": policy.model.log_std.detach().tolist(),
    })
    example = torch.zeros(2, obs_dim)
    with torch.no_grad():
        if fmt == "torchscript":
            torch.jit.trace(policy, example).save(str(out), _extra_files={METADATA_KEY: meta})
        elif fmt == "pt2":
            program = torch.export.export(policy, (example,), dynamic_shapes=BATCH_FREE)
            torch.export.save(program, str(out), extra_files={METADATA_KEY: meta})
        else:
            _export_onnx(policy, example, out)
            import onnx

            proto = onnx.load(str(out))
            onnx.helper.set_model_props(proto, {METADATA_KEY: meta})
            onnx.save(proto, str(out))
    return out


def _export_onnx(policy: DeterministicPolicy, example: torch.Tensor, out: Path) -> None:
    """The torch.export-based ONNX exporter (PyTorch's default since 2.9; the TorchScript-based
    one is deprecated), with the batch dimension left free."""
    # It logs a WARNING for each torchvision operator it cannot register when torchvision is
    # absent (as here), and torch 2.13's own pytree code warns of a deprecated isinstance check:
    # noise for a user exporting an MLP, about nothing they can change.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated", category=FutureWarning)
            program = torch.onnx.export(policy, (example,), input_names=["observations"], output_names=["actions"],
                                        dynamic_shapes=BATCH_FREE, dynamo=True, verbose=False)
    finally:
        registration.setLevel(level)
    assert program is not None  # the dynamo exporter returns the program it wrote
    program.save(str(out))


def read_exported(path: Path) -> tuple[dict, Callable[[np.ndarray], np.ndarray]]:
    """(metadata, a callable obs [N, obs_dim] float32 -> deterministic actions) of an exported file."""
    import numpy as np

    if path.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path))
        meta = json.loads(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
        return meta, lambda obs: session.run(None, {"observations": np.asarray(obs, np.float32)})[0]
    files = {METADATA_KEY: ""}
    if path.suffix == ".pt2":
        module = torch.export.load(str(path), extra_files=files).module()
    else:
        module = torch.jit.load(str(path), _extra_files=files)
    meta = json.loads(files[METADATA_KEY])

    def run(obs):  # noqa: ANN001, ANN202
        with torch.no_grad():
            return module(torch.from_numpy(np.array(obs, np.float32))).numpy()

    return meta, run
