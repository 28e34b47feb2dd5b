"""Window and sink sampling per step (docs/method.md §Training)."""

import pytest

from ahn_jax.config import ConfigError
from ahn_jax.training import windows


def test_random_sampling_follows_the_reference_rule():
    seen = set()
    for step in range(300):
        window, sinks = windows.sample_window(7, step, 4096)
        total = window + sinks
        assert total in windows.WINDOW_CHOICES and 4096 / 8 < total < 4096
        assert sinks in windows.SINK_CHOICES and sinks <= total / 2
        seen.add((window, sinks))
    assert {w + s for w, s in seen} == {1024, 2048}
    assert len(seen) > 5


def test_sampling_is_a_function_of_seed_and_step():
    draws = [windows.sample_window(3, step, 24576) for step in range(50)]
    assert draws == [windows.sample_window(3, step, 24576) for step in range(50)]
    assert draws != [windows.sample_window(4, step, 24576) for step in range(50)]


def test_fixed_and_linear():
    assert windows.sample_window(0, 5, 4096, kind="fixed", window=200, sinks=8) == (200, 8)
    assert windows.sample_window(0, 5, 4096, kind="linear", sinks=0) == (1024, 0)
    assert windows.sample_window(0, 5, 1000, kind="linear", sinks=12) == (500, 12)


def test_no_admissible_window_is_an_error():
    with pytest.raises(ConfigError, match="L=16"):
        windows.sample_window(0, 0, 16)
