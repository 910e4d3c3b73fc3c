"""Fixtures for every chaos test."""

from __future__ import annotations

import pytest

from tests.chaos.helpers import TrainerThread


@pytest.fixture(autouse=True)
def _stop_trainers_left_running():
    """A test that fails while its trainer runs (an assertion, a wait that timed out) leaves the
    thread going; stopped here, after the test and before its module's Ray is shut down, so that
    the failure is reported as itself and the next module starts on a quiet Ray. A trainer that
    will not stop is an error of this test's, named here."""
    yield
    timeout = 120.0
    stuck = TrainerThread.stop_leftovers(timeout)
    if stuck:
        pytest.fail(f"{len(stuck)} trainer thread(s) did not stop within {timeout:.0f} s of the test's end",
                    pytrace=False)
