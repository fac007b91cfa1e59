"""The rate rules of stage lr's hand-off, judged on simulated sweeps whose true curve is known.

Training a real sweep takes minutes and gives one noisy sample of one task; this draws a thousand
sweeps in seconds and reads each rule's choice against the curve that made them. Each sweep: an
error rate against log10(lr) that sits at chance (0.9) for small rates, falls to a floor at a best
rate (steeper on the high side by a random factor), and diverges past a wall between 0.3 and 1.5
decades above it; 12, 20 or 40 trials, spread at random or half of them gathered around the best
so far (as TPE does); each value a binomial draw on 360 validation rows. A rule's regret is the true
error at the rate it hands on minus the floor (a diverged rate: chance minus the floor).

Usage:
    python scripts/rate_rule_sim.py                  # 1000 sweeps, seed 1, every rule
    python scripts/rate_rule_sim.py --sweeps 300 --seed 0
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tuner.study.rate_rule import choose_rate

ROWS = 360  # validation rows behind each error rate (digits' validation part)
CHANCE = 0.9
RULES = {"robust": {}, "basin": {"within_noise": True}, "backed": {"within_noise": True, "backed": True}}


def true_error(x: np.ndarray, best: float, floor: float, width: float, steep: float, wall: float) -> tuple[np.ndarray, np.ndarray]:
    """The error at log10 rates ``x`` and whether each diverges."""
    scale = np.where(x > best, width * steep, width)  # steeper towards the wall
    return floor + (CHANCE - floor) * (1 - np.exp(-((x - best) / scale) ** 2 / 2)), x > wall


def sweep(rng: np.random.Generator, curve: dict[str, float], n: int, gathered: bool) -> tuple[np.ndarray, ...]:
    xs: list[float] = []
    values: list[float] = []
    diverged: list[bool] = []
    for i in range(n):
        learned = [k for k in range(len(xs)) if not diverged[k]]
        if gathered and i >= 6 and learned and rng.random() < 0.6:
            best = min(learned, key=lambda k: values[k])
            x = float(np.clip(rng.normal(xs[best], 0.35), -5.0, 0.0))
        else:
            x = float(rng.uniform(-5.0, 0.0))
        error, gone = true_error(np.array([x]), **curve)
        xs.append(x)
        values.append(rng.binomial(ROWS, float(np.clip(error[0], 0, 1))) / ROWS)
        diverged.append(bool(gone[0]))
    return np.array(xs), np.array(values), np.array(diverged)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweeps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    regrets: dict[str, list[float]] = {rule: [] for rule in RULES}
    sizes: list[int] = []
    started = time.perf_counter()
    for _ in range(args.sweeps):
        best = rng.uniform(-3.5, -1.0)
        curve = {"best": best, "width": rng.uniform(0.3, 1.0), "steep": rng.uniform(0.3, 1.0),
                 "wall": best + rng.uniform(0.3, 1.5), "floor": rng.uniform(0.01, 0.2)}
        n = int(rng.choice([12, 20, 40]))
        x, values, diverged = sweep(rng, curve, n, bool(rng.random() < 0.5))
        if diverged.all():
            continue
        sizes.append(n)
        for rule, kwargs in RULES.items():
            choice = choose_rate(10 ** x, np.where(diverged, np.nan, values), diverged, error_rows=ROWS, **kwargs)
            error, gone = true_error(np.array([np.log10(choice.rate)]), **curve)
            regrets[rule].append(CHANCE - curve["floor"] if gone[0] else float(error[0]) - curve["floor"])
    print(f"{len(sizes)} simulated sweeps (seed {args.seed}, {time.perf_counter() - started:.0f} s); regret: the true "
          f"error at the rate handed on minus the curve's floor")
    print(f"{'rule':8} {'mean':>7} {'median':>7} {'p90':>7} {'max':>6}")
    for rule, values in regrets.items():
        r = np.array(values)
        print(f"{rule:8} {r.mean():7.4f} {np.median(r):7.4f} {np.quantile(r, 0.9):7.4f} {r.max():6.3f}")
    base = np.array(regrets["basin"])
    sizes_ = np.array(sizes)
    for rule in ("robust", "backed"):
        diff = np.array(regrets[rule]) - base
        per_size = ", ".join(f"{n} trials {diff[sizes_ == n].mean():+.4f}" for n in (12, 20, 40))
        print(f"{rule} against basin: better in {(diff < -0.005).sum()}, worse in {(diff > 0.005).sum()}, within 0.005 in "
              f"{(abs(diff) <= 0.005).sum()}; mean difference by size: {per_size}")


if __name__ == "__main__":
    main()
