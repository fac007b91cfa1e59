"""The LR range test (Smith 2015; fastai's and Lightning's ``lr_find``) on a spec's small network.

One short run with the learning rate rising exponentially per mini-batch, from ``start_lr`` to
``end_lr``: the training loss per step shows where it falls fastest and where it blows up. The run
stops once the smoothed loss is far past its minimum (or turns NaN). The rules that turn the curve
into a learning rate and a search range live in :mod:`tuner.training.lr_suggest`; this module trains,
records and writes ``lr_find.csv`` / ``lr_find.png``; :mod:`tuner.study.lr_range` runs it once per
study for ``lr_range = "auto"``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuner.inputs.choices import first_choice
from tuner.inputs.data import Dataset
from tuner.inputs.load import load_dataset
from tuner.inputs.params import defaults
from tuner.inputs.spec import StudySpec, load_spec
from tuner.inputs.usercode import UserCode, resolve_code
from tuner.training.lr_suggest import Suggestion, smooth, smoothed_curve, stop_index, suggest
from tuner.training.train import (
    TrainConfig,
    loss_function,
    make_optimizer,
    order_generator,
    resolve_device,
    seeded_model,
    task_outputs,
    train_batches,
    training_loader,
    use_threads,
    with_declared,
)

START_LR = 1e-7
END_LR = 10.0
STEPS = 100  # fastai's num_it
STOP_FACTOR = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum so far (fastai)
MAX_LR = 1e10  # far past any rate that trains; above float32's range (3.4e38) an optimizer step cannot even be taken


class LRFindInputError(ValueError):
    """A ramp that cannot be run (bounds out of order, not finite, too large); the message names the option and the fix."""


@dataclass(frozen=True)
class LRFindResult:
    """What a range test recorded: one entry per mini-batch step, and what it suggests."""

    lrs: list[float]
    losses: list[float]  # training loss of each step's mini-batch (NaN where it was not finite)
    # The smoothed loss the suggestion's rules read (lr_suggest.smoothed_curve: median, then a zero-phase
    # moving average); NaN where they read none (warm-up, past the blow-up). Its minimum is at 10 x ``minimum``.
    smoothed: list[float]
    suggestion: Suggestion | None  # None when the curve supports none (see ``problem``)
    problem: str | None = None  # why there is no suggestion


def smoothing_beta(steps: int) -> float:
    """The decay of the moving average that stops the ramp (fastai's rule): spans the same fraction of
    the ramp whatever its length. Only the stop reads it; the curve shown is the one the rules read
    (:func:`tuner.training.lr_suggest.smoothed_curve`), whose average does not lag."""
    return float(np.clip(1.0 - 10.0 / steps, 0.5, 0.99))


def lr_find(
    spec: StudySpec | str | Path,
    *,
    start_lr: float = START_LR,
    end_lr: float = END_LR,
    steps: int = STEPS,
    device: str = "auto",
    data: Dataset | None = None,
    code: UserCode | None = None,
) -> LRFindResult:
    """Run the LR range test on the spec's small network (``[model]``), data, optimizer and batch size
    (the first of each where ``train.optimizer`` or ``train.batch_size`` lists several).

    Example:
        >>> result = lr_find("studies/quickstart.toml", steps=100)  # doctest: +SKIP
        >>> result.suggestion.lr, result.suggestion.search_min, result.suggestion.search_max  # doctest: +SKIP

    Args:
        spec: a :class:`StudySpec` or the path of a TOML study file.
        start_lr, end_lr: the ramp's first and last rate (exponential in between).
        steps: mini-batch steps of the full ramp (it stops earlier once the loss blows up).
        device: ``auto``, ``cpu`` or ``cuda``.
        data: the spec's data already loaded (and on the device); loaded from the spec if None.
        code: the spec's own code, already resolved; resolved from the spec if None.
    """
    check_ramp(start_lr, end_lr, steps, device)
    # A list of optimizers or batch sizes: the test runs with the first of each (stage lr tests each variant).
    spec = first_choice(spec if isinstance(spec, StudySpec) else load_spec(spec))
    code = code or resolve_code(spec)  # the spec's own model factory, loss and metric, if it names them
    torch_device = resolve_device(device)
    use_threads(None, torch_device)  # $TUNER_THREADS, else one on the CPU, as tuner study
    if data is None:
        data = load_dataset(spec.data, spec.seed, spec.source, code.loader).to(torch_device)
    train = spec.train
    declared = defaults(spec.stages.shape.params)  # the small network at the values stage lr trains with
    model = seeded_model(code.family, data, spec.model.width, spec.model.depth, spec.seed, declared)
    optimizer = make_optimizer(train.optimizer, model.parameters(), start_lr, declared.get("momentum", train.momentum),
                               declared.get("weight_decay", train.weight_decay))
    config = TrainConfig(lr=start_lr, batch_size=train.batch_size, seed=spec.seed,
                         loss=with_declared(code.loss, declared), metric=with_declared(code.metric, declared))
    criterion = loss_function(data.task, config.loss)
    order_rng = order_generator(spec.seed)  # the data order train_epochs would use
    loader = training_loader(data, config)
    beta = smoothing_beta(steps)
    ramp = [start_lr * (end_lr / start_lr) ** (step / (steps - 1)) for step in range(steps)]

    lrs: list[float] = []
    losses: list[float] = []
    model.train()
    while len(lrs) < len(ramp) and not _stopped(losses, beta):
        for x, y in train_batches(data, config, order_rng, loader):  # an epoch: a fresh order
            lr = ramp[len(lrs)]
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = criterion(task_outputs(model(x), data.task), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = loss.item()
            lrs.append(lr)
            losses.append(value if math.isfinite(value) else math.nan)
            if len(lrs) == len(ramp) or _stopped(losses, beta):
                break  # NaN, or far past the minimum: the rest of the ramp says nothing new
    try:
        suggestion, problem = suggest(lrs, losses, factor=STOP_FACTOR), None
    except ValueError as error:
        suggestion, problem = None, str(error)
    try:  # the curve the rules read, as they read it: what the CSV and the figure show
        smoothed = smoothed_curve(lrs, losses, factor=STOP_FACTOR).tolist()
    except ValueError:  # too few points to read one
        smoothed = [math.nan] * len(lrs)
    return LRFindResult(lrs, losses, smoothed, suggestion, problem)


def _stopped(losses: list[float], beta: float) -> bool:
    return bool(losses) and stop_index(smooth(losses, beta), STOP_FACTOR) is not None


def check_ramp(start_lr: float, end_lr: float, steps: int = STEPS, device: str = "auto") -> None:
    """Refuse a ramp that cannot run, before any data is loaded.

    Raises:
        LRFindInputError: the rates are not 0 < start_lr < end_lr <= MAX_LR, or steps < 5.
        tuner.training.train.DeviceError: ``device`` is not one of auto, cpu, cuda.
    """
    resolve_device(device)  # an unknown name, or cuda without a GPU
    rates_ok = all(math.isfinite(rate) for rate in (start_lr, end_lr)) and 0 < start_lr < end_lr <= MAX_LR
    if not rates_ok or not math.isfinite(end_lr / start_lr):
        raise LRFindInputError(
            f"--start-lr {start_lr:g} / --end-lr {end_lr:g}: need 0 < start-lr < end-lr <= {MAX_LR:g}, finite, e.g. 1e-7 and 10"
        )
    if steps < 5:
        raise LRFindInputError(f"--steps {steps}: must be at least 5, e.g. 100")


def search_bounds(suggestion: Suggestion, lr_min: float, lr_max: float) -> tuple[float, float] | None:
    """The suggested search range, kept within [lr_min, lr_max]; None if nothing of it is inside."""
    low, high = max(suggestion.search_min, lr_min), min(suggestion.search_max, lr_max)
    return (low, high) if low < high else None


def write_lr_find(result: LRFindResult, out: str | Path, title: str = "LR range test") -> tuple[Path, Path]:
    """Write ``lr_find.csv`` (lr, loss, smoothed) and ``lr_find.png`` (suggestion and band marked) into ``out``."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = folder / "lr_find.csv", folder / "lr_find.png"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["lr", "loss", "smoothed"])
        for row in zip(result.lrs, result.losses, result.smoothed):
            writer.writerow([repr(v) if math.isfinite(v) else "" for v in row])  # empty: not finite
    _plot(result, png_path, title)
    return csv_path, png_path


def _plot(result: LRFindResult, path: Path, title: str) -> None:
    plot_lr_find(result, title).savefig(path, dpi=110)


def blow_up_index(smoothed: list[float]) -> int:
    """Where the blow-up starts: the first step past the smoothed minimum above the starting loss."""
    s = np.asarray(smoothed, dtype=float)
    finite = np.flatnonzero(np.isfinite(s))
    if finite.size == 0:
        return len(s)
    lowest = int(finite[np.argmin(s[finite])])
    above = np.flatnonzero(~(s[lowest:] <= s[finite[0]]))  # NaN counts as above
    return lowest + int(above[0]) if above.size else len(s)


def plot_lr_find(result: LRFindResult, title: str = "LR range test") -> Any:
    """The loss per step and smoothed against the rate, the rules, the band they agree on and the suggestion.

    The y axis holds every loss up to where the blow-up starts (matplotlib's object API: no pyplot).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.5, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(result.lrs, result.losses, color="0.7", linewidth=0.8, label="loss per step")
    ax.plot(result.lrs, result.smoothed, color="C0", linewidth=1.8, label="smoothed, as the rules read it")
    s = result.suggestion
    if s is not None:
        ax.axvspan(s.search_min, s.search_max, color="C2", alpha=0.12, label=f"search range {s.search_min:.2g} – {s.search_max:.2g}")
        ax.axvspan(s.low, s.high, color="C1", alpha=0.2, label=f"rules agree {s.low:.2g} – {s.high:.2g}")
        # The suggestion is the median of the rules, so it often equals one of them: a wide pale line
        # underneath, and each rule a thin line of its own colour on top, so none hides another.
        ax.axvline(s.lr, color="C3", linewidth=6, alpha=0.35, zorder=1.5, label=f"suggested {s.lr:.2g}")
        for (name, value), (color, style) in zip(s.rules.items(), (("C3", "--"), ("C4", "-."), ("C5", ":"))):
            ax.axvline(value, color=color, linestyle=style, linewidth=1.3, zorder=3, label=f"{name} {value:.2g}")
    else:
        ax.text(0.02, 0.95, f"no suggestion: {result.problem}", transform=ax.transAxes, va="top", fontsize=8, wrap=True)
    end = blow_up_index(result.smoothed)
    shown = [v for v in [*result.losses[:end], *result.smoothed[:end]] if math.isfinite(v)]
    if shown:  # every loss before the blow-up, and no more: the blow-up would squash the rest
        low, high = min(shown), max(shown)
        ax.set_ylim(low - 0.05 * (high - low + 1e-12), high + 0.05 * (high - low + 1e-12))
        if end < len(result.lrs):
            ax.axvline(result.lrs[end], color="0.5", linewidth=0.8, zorder=1)
            ax.text(result.lrs[end], 0.98, "loss blows up ", transform=ax.get_xaxis_transform(), va="top",
                    ha="right", fontsize=8, color="0.35")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the curve, not over it
    return fig
