"""The learner on a CUDA GPU: the same update as on the CPU, checkpoints that move between devices,
and a real training run with the learner on the GPU. Skipped (reported as skipped) where torch sees
no CUDA device, which includes CI; run on a GPU machine with `pytest tests/test_learner_cuda.py`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from actors.trajectory import Trajectory
from learner import checkpoint
from learner import config as C
from learner.learner import Learner

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ROOT = Path(__file__).resolve().parents[1]


def _fragments(rng: np.random.Generator, version: int, n: int = 2, t: int = 32, b: int = 8) -> list[Trajectory]:
    """n biped-shaped fragments [T = t, B = b] with terminations and truncations in the middle."""
    out = []
    for worker in range(n):
        term = rng.random((t, b)) < 0.03
        trunc = ~term & (rng.random((t, b)) < 0.03)
        out.append(Trajectory(
            rng.normal(size=(t + 1, b, 31)).astype(np.float32), rng.uniform(-1, 1, (t, b, 6)).astype(np.float32),
            rng.normal(-8.0, 0.5, (t, b)).astype(np.float32), rng.normal(size=(t, b)).astype(np.float32),
            term, trunc, rng.normal(size=(int(trunc.sum()), 31)).astype(np.float32), version, worker))
    return out


def _learner(device: str, **overrides: object) -> Learner:
    cfg = C.load(None, {"ppo.minibatches": 4, "ppo.epochs": 2, "ppo.target_kl": 0.0, **overrides})
    return Learner(cfg, obs_dim=31, act_dim=6, device=device)


def test_auto_device_is_cuda_when_a_gpu_is_present() -> None:
    assert C.resolve_device("auto") == "cuda"
    C.validate(C.load(None, {"train.device": "cuda:0"}))  # accepted, not "no CUDA GPU"


def test_cuda_update_matches_the_cpu_update() -> None:
    """Same seed, same fragments, same minibatch order (the shuffle generator lives on the CPU):
    three updates leave CPU and GPU weights equal to float32 rounding, with the same diagnostics."""
    cpu, gpu = _learner("cpu"), _learner("cuda")
    torch.testing.assert_close(gpu.flat_params.detach().cpu(), cpu.flat_params.detach())
    rng = np.random.default_rng(0)
    for version in range(3):
        frags = _fragments(rng, version)
        s_cpu = cpu.update(frags, env_steps=version * 512)
        s_gpu = gpu.update(frags, env_steps=version * 512)
        for key in ("policy_loss", "value_loss", "approx_kl", "explained_variance", "entropy"):
            assert s_gpu[key] == pytest.approx(s_cpu[key], rel=1e-3, abs=1e-4), key
    assert gpu.flat_params.device.type == "cuda" and gpu.version == cpu.version == 3
    moved = (cpu.flat_params.detach() - _learner("cpu").flat_params.detach()).abs().max().item()
    assert moved > 1e-3  # the updates did change the weights...
    torch.testing.assert_close(gpu.flat_params.detach().cpu(), cpu.flat_params.detach(), rtol=1e-4, atol=1e-4)
    weights, reference = gpu.weights(), cpu.weights()  # ...and what the actors receive is host memory
    assert weights.version == 3 and weights.state.keys() == reference.state.keys()
    for name, array in weights.state.items():
        assert isinstance(array, np.ndarray), name
        np.testing.assert_allclose(array, reference.state[name], rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("loss", ["clip", "penalty"])
def test_cuda_graph_updates_match_eager_updates(loss: str) -> None:
    """The captured forward/loss/backward gives the eager path's updates: over five updates with
    batches of two and three fragments (two minibatch sizes, so two graphs), an entropy bonus
    that decays over them and, for the penalty loss, a beta that changes between updates (device
    scalars the graph reads)."""
    # The entropy bonus falls from 0.005 to 0 over the five updates: another device scalar.
    eager = _learner("cuda", **{"train.cuda_graphs": False, "ppo.loss": loss, "ppo.ent_decay_steps": 2048})
    graphed = _learner("cuda", **{"ppo.loss": loss, "ppo.ent_decay_steps": 2048})
    assert eager.graphs is None and graphed.graphs is not None
    rng = np.random.default_rng(2)
    for version in range(5):
        frags = _fragments(rng, version, n=2 + version % 2)
        s_eager = eager.update(frags, env_steps=version * 512)
        s_graph = graphed.update(frags, env_steps=version * 512)
        assert s_graph["ent_coef"] == s_eager["ent_coef"] == pytest.approx(0.005 * (1 - version / 4))
        for key in ("loss", "policy_loss", "value_loss", "approx_kl", "clipfrac", "grad_norm", "kl_beta"):
            assert s_graph[key] == pytest.approx(s_eager[key], rel=1e-4, abs=1e-5), (version, key)
    assert sorted(graphed.graphs.graphs) == [512 // 4, 768 // 4]
    if loss == "penalty":
        assert eager.beta == graphed.beta and eager.beta != C.load(None).ppo.kl_beta  # it did adapt
    torch.testing.assert_close(graphed.flat_params.detach(), eager.flat_params.detach(), rtol=1e-4, atol=1e-5)


def test_cuda_graph_non_finite_loss_never_reaches_the_weights() -> None:
    learner = _learner("cuda")
    rng = np.random.default_rng(3)
    learner.update(_fragments(rng, 0), env_steps=0)
    before = learner.flat_params.detach().clone()
    moments = [v.clone() for v in learner.optimizer.state[learner.flat_params].values()]
    bad = _fragments(rng, 1)
    bad[0].rewards[:] = 1e38  # finite, but the value loss overflows
    with pytest.raises(FloatingPointError, match="non-finite PPO loss"):
        learner.update(bad, env_steps=512)
    assert torch.equal(learner.flat_params.detach(), before) and learner.version == 1
    after = list(learner.optimizer.state[learner.flat_params].values())
    assert all(torch.equal(a, b) for a, b in zip(moments, after, strict=True))
    learner.update(_fragments(rng, 1), env_steps=512)  # and the next good batch trains normally
    assert learner.version == 2 and torch.isfinite(learner.flat_params).all()
    assert not torch.equal(learner.flat_params.detach(), before)


def test_a_cuda_checkpoint_resumes_on_the_cpu_and_back(tmp_path: Path) -> None:
    gpu = _learner("cuda")
    rng = np.random.default_rng(1)
    gpu.update(_fragments(rng, 0), env_steps=0)
    checkpoint.save(tmp_path, 1, {**gpu.state_dict(), "counters": {"iteration": 1}})
    # Loaded once per learner: a CPU learner adopts the loaded optimiser tensors as they are.
    cpu, again = _learner("cpu"), _learner("cuda")
    cpu.load_state_dict(checkpoint.latest(tmp_path)[1])
    torch.testing.assert_close(cpu.flat_params.detach(), gpu.flat_params.detach().cpu())
    again.load_state_dict(checkpoint.latest(tmp_path)[1])
    assert again.flat_params.device.type == "cuda"
    frags = _fragments(rng, 1)  # and the optimiser state came along: the next updates agree
    cpu.update(frags, env_steps=256)
    again.update(frags, env_steps=256)
    torch.testing.assert_close(again.flat_params.detach().cpu(), cpu.flat_params.detach(), rtol=1e-4, atol=1e-4)


def test_pendulum_learns_with_the_learner_on_cuda(tmp_path: Path) -> None:
    """test_end_to_end's Pendulum run through `stride train` and the real Ray path, learner on the GPU."""
    run_dir = tmp_path / "pendulum"
    stride = [sys.executable, "-m", "services.cli"]
    done = subprocess.run([*stride, "train", "--config", "configs/pendulum.yaml", "--actors", "2", "--run-dir",
                           str(run_dir), "--metrics-port", "0", "--set", "train.device=cuda"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(r["gpu_memory_bytes"] and r["gpu_memory_bytes"] > 0 for r in recs)  # the learner was on the GPU
    returns = [r["episode_return_mean"] for r in recs if r["episode_return_mean"] is not None]
    assert np.mean(returns[:2]) < -900
    assert np.mean(returns[-3:]) > -500, returns
