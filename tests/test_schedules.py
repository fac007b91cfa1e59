from __future__ import annotations

import math

import pytest

from tuner.training.schedules import lr_factor

EPOCHS = 21  # t = 0 .. 20


@pytest.mark.parametrize("decay", [1e-3, 0.1, 0.5])
def test_exponential_follows_a0_exp_minus_kt(decay: float) -> None:
    k = -math.log(decay) / (EPOCHS - 1)
    for t in range(EPOCHS):
        assert lr_factor("exponential", t, EPOCHS, decay) == pytest.approx(math.exp(-k * t))


@pytest.mark.parametrize("decay", [1e-3, 0.1, 0.5])
def test_inverse_time_follows_a0_over_1_plus_kt(decay: float) -> None:
    k = (1 / decay - 1) / (EPOCHS - 1)
    for t in range(EPOCHS):
        assert lr_factor("inverse_time", t, EPOCHS, decay) == pytest.approx(1 / (1 + k * t))


def test_step_drops_by_a_constant_factor_every_k_epochs() -> None:
    values = [lr_factor("step", t, EPOCHS, 0.01, step_every=5) for t in range(EPOCHS)]
    # 20 / 5 = 4 drops reaching 0.01: factor 0.01 ** (1/4) each
    factor = 0.01 ** 0.25
    for t, value in enumerate(values):
        assert value == pytest.approx(factor ** (t // 5))
    assert values[0] == 1.0 and values[4] == 1.0 and values[5] == pytest.approx(factor)


@pytest.mark.parametrize("schedule", ["step", "exponential", "inverse_time", "cosine"])
def test_every_decaying_schedule_ends_at_the_decay_ratio(schedule: str) -> None:
    assert lr_factor(schedule, 0, EPOCHS, 0.05) == pytest.approx(1.0)
    assert lr_factor(schedule, EPOCHS - 1, EPOCHS, 0.05) == pytest.approx(0.05)
    values = [lr_factor(schedule, t, EPOCHS, 0.05) for t in range(EPOCHS)]
    assert all(a >= b for a, b in zip(values, values[1:])), "a decay schedule never rises"


def test_constant_ignores_decay() -> None:
    assert {lr_factor("constant", t, EPOCHS, 1e-3) for t in range(EPOCHS)} == {1.0}
