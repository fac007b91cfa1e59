"""The rate rules of stage lr's hand-off, judged on simulated sweeps whose true curve is known.

Training a real sweep takes minutes and gives one noisy sample of one task; this draws a thousand
sweeps in seconds and reads each rule's choice against the curve that made them. Each sweep: an
error rate against log10(lr) that sits at chance (0.9) for small rates, falls to a floor at a best
rate (steeper on the high side by a random factor), and diverges past a wall between 0.3 and 1.5
decades above it; 12, 20 or 40 trials, spread at random or half of them gathered around the best
so far (as TPE does); each value a binomial draw on 360 validation rows. A rule's regret is the true
error at the rate it hands on minus the floor (a diverged rate: chance minus the floor).

Three harder kinds of noise, each its own flag: ``--lucky F``, a share F of the trials that score far
below the curve (floor x U(0.3, 1): the lucky seeds the robustness passes exist for); ``--unlucky F``,
a share F that score far above it (a seed that trained badly: a share U(0.3, 1) of the way from its
value to chance, which the robustness passes leave at full weight); and
``--correlated S``, a smooth random factor exp(g(log10 lr)) on every value of a sweep (g a random
function of sd S and length scale 0.3 decade), since every trial of a stage lr trains from one seed
and neighbouring rates err alike.

Usage:
    python scripts/rate_rule_sim.py                  # 1000 sweeps, seed 1, every rule
    python scripts/rate_rule_sim.py --sweeps 300 --seed 0
    python scripts/rate_rule_sim.py --lucky 0.08 --correlated 0.3
    python scripts/rate_rule_sim.py --seed 7 --unlucky 0.08
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


def smooth_noise(rng: np.random.Generator, sd: float, length: float = 0.3, features: int = 24):
    """A random smooth function of log10 lr with standard deviation ``sd`` (random Fourier features)."""
    omega = rng.normal(0.0, 1.0 / length, features)
    phase = rng.uniform(0.0, 2 * np.pi, features)
    return lambda x: sd * np.sqrt(2.0 / features) * np.cos(np.multiply.outer(x, omega) + phase).sum(-1)


def sweep(rng: np.random.Generator, curve: dict[str, float], n: int, gathered: bool,
          lucky: float = 0.0, correlated: float = 0.0, unlucky: float = 0.0) -> tuple[np.ndarray, ...]:
    shared = smooth_noise(rng, correlated) if correlated > 0 else (lambda x: 0.0)
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
        p = float(np.clip(error[0] * np.exp(shared(x)), 0, 1))
        if lucky > 0 and rng.random() < lucky:
            p = curve["floor"] * rng.uniform(0.3, 1.0)
        if unlucky > 0 and rng.random() < unlucky:  # a seed that trained badly: far above the curve
            p = p + (CHANCE - p) * rng.uniform(0.3, 1.0)
        xs.append(x)
        values.append(rng.binomial(ROWS, p) / ROWS)
        diverged.append(bool(gone[0]))
    return np.array(xs), np.array(values), np.array(diverged)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweeps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--lucky", type=float, default=0.0, help="share of trials far below the curve [default 0]")
    parser.add_argument("--unlucky", type=float, default=0.0,
                        help="share of trials far above the curve (a seed that trained badly) [default 0]")
    parser.add_argument("--correlated", type=float, default=0.0,
                        help="sd of a smooth random factor shared by a sweep's neighbouring rates [default 0]")
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
        x, values, diverged = sweep(rng, curve, n, bool(rng.random() < 0.5), args.lucky, args.correlated, args.unlucky)
        if diverged.all():
            continue
        sizes.append(n)
        for rule, kwargs in RULES.items():
            choice = choose_rate(10 ** x, np.where(diverged, np.nan, values), diverged, error_rows=ROWS, **kwargs)
            error, gone = true_error(np.array([np.log10(choice.rate)]), **curve)
            regrets[rule].append(CHANCE - curve["floor"] if gone[0] else float(error[0]) - curve["floor"])
    print(f"{len(sizes)} simulated sweeps (seed {args.seed}, lucky {args.lucky}, unlucky {args.unlucky}, correlated {args.correlated}, "
          f"{time.perf_counter() - started:.0f} s); regret: the true error at the rate handed on minus the curve's floor")
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
