"""benchmarks/ablate_walker2d.py: per-step observation normalisation and the command-line parsing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from actors.rollout import make_envs

_spec = importlib.util.spec_from_file_location(
    "ablate_walker2d", Path(__file__).resolve().parents[1] / "benchmarks" / "ablate_walker2d.py")
ablate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ablate)


def test_observations_are_normalised_with_the_statistics_of_everything_emitted_so_far() -> None:
    """Against a twin of the same envs stepped with the same actions: at every step the output is
    the raw observation standardised by the mean and (population) variance of all raw
    observations emitted up to and including that step, clipped to +-10; a truncated episode's
    final observation gets the same statistics."""
    from learner.normalizer import RunningMeanStd

    wrapped = ablate.StepNormalizedEnvs(make_envs("Pendulum-v1", 2), RunningMeanStd(3))
    twin = make_envs("Pendulum-v1", 2)
    rng = np.random.default_rng(0)

    def expected(history: list[np.ndarray], x: np.ndarray) -> np.ndarray:
        seen = np.concatenate(history)
        return np.clip((x - seen.mean(0)) / np.sqrt(seen.var(0) + 1e-8), -10, 10)

    obs, _ = wrapped.reset(seed=3)
    raw, _ = twin.reset(seed=3)
    history = [raw]
    np.testing.assert_allclose(obs, expected(history, raw), atol=1e-5)
    finals = 0
    for _ in range(210):  # Pendulum truncates at 200 steps
        a = rng.uniform(-2, 2, size=(2, 1)).astype(np.float32)
        obs, r, term, trunc, info = wrapped.step(a)
        raw, r_twin, _, trunc_twin, info_twin = twin.step(a)
        history.append(raw)
        np.testing.assert_allclose(obs, expected(history, raw), atol=1e-5)
        np.testing.assert_array_equal(r, r_twin)
        np.testing.assert_array_equal(trunc, trunc_twin)
        for i in np.flatnonzero(trunc):
            np.testing.assert_allclose(info["final_obs"][i], expected(history, info_twin["final_obs"][i]), atol=1e-5)
            finals += 1
    assert finals == 2


def test_seeds_and_variants_parse() -> None:
    assert ablate.parse_seeds("1-3,7") == [1, 2, 3, 7]
    name, overrides, obs_norm = ablate.parse_variant(["sb3like", "ppo.lr_schedule=constant", "obs_norm=per_step"])
    assert (name, overrides, obs_norm) == ("sb3like", {"ppo.lr_schedule": "constant"}, "per_step")
    assert ablate.parse_variant(["base"]) == ("base", {}, "learner")
    with pytest.raises(SystemExit, match="key=value"):
        ablate.parse_variant(["bad", "ppo.lr"])
    with pytest.raises(SystemExit, match="obs_norm"):
        ablate.parse_variant(["bad", "obs_norm=sometimes"])
