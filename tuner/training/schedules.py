"""Learning-rate decay schedules, all driven by one number: ``decay``, final LR / initial LR.

One shared ``decay`` instead of per-schedule constants keeps the search space flat (every trial
has the same parameters, so importance analyses cover them all) and puts every schedule on one
scale. Each schedule derives its own constant from it, over epochs t = 0 .. T with T = epochs - 1,
so the last epoch trains at ``a0 * decay`` exactly:

- constant:      a0 (ignores ``decay``)
- step:          a0 * f^floor(t / k), f chosen so that the last drop lands on a0 * decay
- exponential:   a0 * exp(-k t),      k = -ln(decay) / T
- inverse_time:  a0 / (1 + k t),      k = (1 / decay - 1) / T
- cosine:        a0 * (decay + (1 - decay) * (1 + cos(pi t / T)) / 2)
"""

from __future__ import annotations

import math


def default_step_every(epochs: int) -> int:
    return max(1, epochs // 4)


def lr_factor(schedule: str, epoch: int, epochs: int, decay: float, step_every: int | None = None) -> float:
    """The multiplier of the initial learning rate in ``epoch`` (0-based) of a run of ``epochs``."""
    if schedule == "constant" or decay == 1.0:
        return 1.0
    last = max(epochs - 1, 1)
    t = min(epoch, last)
    if schedule == "exponential":
        return math.exp(math.log(decay) * t / last)
    if schedule == "inverse_time":
        k = (1.0 / decay - 1.0) / last
        return 1.0 / (1.0 + k * t)
    if schedule == "step":
        every = step_every or default_step_every(epochs)
        drops = last // every
        if drops == 0:
            return 1.0
        factor = decay ** (1.0 / drops)
        return factor ** (t // every)
    if schedule == "cosine":
        return decay + (1.0 - decay) * (1.0 + math.cos(math.pi * t / last)) / 2.0
    raise ValueError(f"unknown schedule {schedule!r}")
