"""The range ``stages.shape.lr_scale = "auto"`` resolves to: how far the best rate moves with the shape.

Stage ``shape`` trains every shape at the rate calibrated on the small network times its own
``lr_scale``. Where the best rate of a larger shape lies depends on the optimizer. With Adam (and
the other per-coordinate methods) it falls with width, at most about as 1/width (muP, Yang et al.
2022: a hidden layer's Adam rate scales as 1/fan_in). With SGD it stays near or rises a little
with width. With both, it falls with depth. ``scripts/lr_shift.py`` measured this on the built-in
mlp (digits), lstm (digits_rows) and cnn (digits_images) families (``docs/lr_shift.csv``):

- Adam, best rate of the widest shapes over the small network's: mlp 8x wider 0.1-0.56 (smoothed
  0.056), lstm 4x 0.56, cnn 4x 0.56 and 4x wider and 1.5x deeper 0.32;
- SGD: mlp 8x wider 1.8-5.6, lstm 4x 3.2, cnn 4x 0.56-1.8; the cnn 1.5x deeper 0.32 (training the
  deeper cnn at the small network's rate diverged).

:data:`RATE_MOVES` is the rule read from that, each of width and depth a power of its ratio; as
the two may pull apart (SGD: wider up, deeper down), the range covers each move alone and both
together, :data:`MARGIN` further on both sides (how far the measured best rates lay from the
rule), and the basin of the calibrated rate (the rates within noise of the best on the small
network, as multiples of the handed-on rate) where that is wider than the margin. It always
contains 1 and never reaches past :data:`LOWEST` or :data:`HIGHEST`. With it, every shape measured
has a rate within one standard error of its best inside its range (tests/test_lr_scale.py).

**Carried by a rule** (``stages.shape.lr_transfer = "rule"``, the default since contract 7): one
range for every shape, as above, has to reach from the widest shape's rate to the narrowest's (45
to 118-fold on issue 21's tasks), and a stage of a dozen trials then spends most of them far from
where its shape learns. So each shape starts instead from the calibrated rate moved by
:data:`TRANSFER_MOVES` for its own width and depth (:func:`transfer_move`), and ``lr_scale``
searches only :data:`SPREAD` either side of that: with these, every shape of ``docs/lr_shift.csv``
has a rate within one standard error of its best inside its own range (tests/test_lr_scale.py), a
10-fold range where the union was 45-fold. With Adam a shape moves down as 1/sqrt(width): for each
family, the least-squares fit, to a quarter, of where its measured shapes' near-best rates lie
against where the small network's lie (:func:`fitted_width_exponent`: mlp -0.47, lstm -0.42, cnn
-0.42; the rates within one standard error of each best, their geometric centre, as the hand-off
picks the broadest window of the small network's basin, not its best point). muP's 1/width, the
rule's first version, is what the mlp's shapes give against the small network's best single rate;
its basin's centre lies at a third of that anchor, and the lstm's and cnn's shapes move far less
(-0.14 and -0.42 read that way), so that every wider LSTM started at a quarter of the rate that
suits it at 4x width. With depth, down as 1/sqrt(depth): assumed, as the measurement has only one
or two deeper shapes per family, each wider too. With SGD it does not move: the measured best rates
of SGD's shapes lay both above and below the small network's (0.3x to 5.6x, wider mostly up, the
deeper cnn down) on U's flat enough that the calibrated rate itself is within the spread of a
near-best one for every one of them, and moving them by a power of the width (x sqrt(width), tried
first) made stage shape end worse than stage lr more often on the bundled SGD studies (no worse in 3
of 5 seeds of breast cancer against 4 unmoved, diabetes 1 against 2) and doubled reg_table's compute
(BENCHMARKS.md, issue 21).

Example:
    >>> auto_lr_scale("adam", width_ratio=8, depth_ratio=1)
    (0.0625, 2.0)
    >>> auto_lr_scale("sgd", width_ratio=8, depth_ratio=1, basin=(0.3, 3.0))
    (0.3, 8.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from tuner.inputs.choices import values_of
from tuner.inputs.families import BUILT_IN_FAMILIES
from tuner.inputs.spec import LR_SCALE_AUTO, StudySpec

# optimizer -> (width exponent, depth exponent): the best rate of a shape width_ratio times as
# wide and depth_ratio times as deep as the small network lies near width_ratio**w (wider alone),
# depth_ratio**d (deeper alone) or their product, times the small network's best rate.
RATE_MOVES: dict[str, tuple[float, float]] = {
    "sgd": (0.5, -1.5),
    "adam": (-1.0, -0.5),  # width: muP's 1/fan_in; depth: weaker than SGD's in the measurement
}
# family -> optimizer -> (width exponent, depth exponent) of lr_transfer = "rule": where a shape
# starts, as a multiple of the calibrated rate; SPREAD: how far either side of it "auto" lets lr_scale reach.
# SGD's shapes start at the calibrated rate (its measured moves go both ways). Adam's width exponent
# is fitted per family to docs/lr_shift.csv (fitted_width_exponent: mlp -0.47, lstm -0.42, cnn -0.42),
# its depth exponent assumed (the measurement has one or two deeper shapes per family).
TRANSFER_MOVES: dict[str, dict[str, tuple[float, float]]] = {
    "mlp": {"sgd": (0.0, 0.0), "adam": (-0.5, -0.5)},
    "lstm": {"sgd": (0.0, 0.0), "adam": (-0.5, -0.5)},
    "cnn": {"sgd": (0.0, 0.0), "adam": (-0.5, -0.5)},
}
SPREAD = 3.2
ADAPTIVE = ("adam", "rmsprop", "adagrad")  # per-coordinate step sizes: moved as Adam's rate (muP treats them alike)
MARGIN = 2.0  # the measured best rates lay within this factor of the rule; the range reaches that far past it
# Never wider: past these, the shape stage's few trials would go to searching the rate rather than
# the shape, and the small network is too far from the shapes searched to calibrate them.
LOWEST = 1 / 32
HIGHEST = 8.0


def auto_lr_scale(optimizer: str, width_ratio: float, depth_ratio: float,
                  basin: tuple[float, float] | None = None) -> tuple[float, float]:
    """The ``lr_scale`` range for a shape ``width_ratio`` times as wide, ``depth_ratio`` as deep as the small net.

    Args:
        optimizer: ``train.optimizer``: ``sgd``, or an adaptive one (``adam``, ``rmsprop``, ``adagrad``).
        width_ratio: the shape's width over the small network's (below 1 for a narrower one).
        depth_ratio: the shape's depth over the small network's.
        basin: (low, high) rates within noise of the best on the small network, as multiples of the
            handed-on rate (e.g. ``(0.5, 2.0)``); None where it is not known.

    Returns:
        (low, high) with ``LOWEST <= low <= 1 <= high <= HIGHEST``.
    """
    if width_ratio <= 0 or depth_ratio <= 0:
        raise ValueError(f"width_ratio and depth_ratio must be > 0, not {width_ratio}, {depth_ratio}")
    width_exponent, depth_exponent = RATE_MOVES["adam" if optimizer in ADAPTIVE else "sgd"]
    wider, deeper = width_ratio**width_exponent, depth_ratio**depth_exponent
    moves = (1.0, wider, deeper, wider * deeper)
    below, above = 1 / MARGIN, MARGIN
    if basin is not None:
        below, above = min(below, basin[0]), max(above, basin[1])
    low = min(moves) * below
    high = max(moves) * above
    return max(LOWEST, min(1.0, _tidy(low))), min(HIGHEST, max(1.0, _tidy(high)))


def resolve_lr_scale(spec: StudySpec, basin: tuple[float, float] | None = None) -> tuple[float, float]:
    """The ``lr_scale`` range stage ``shape`` searches: the spec's pair, or ``"auto"`` resolved.

    ``"auto"`` covers every shape the stage may try: the union of :func:`auto_lr_scale` over the
    corners of its width and depth ranges, relative to the small network of ``[model]`` (and over
    the optimizers, where ``train.optimizer`` lists several).
    """
    shape = spec.stages.shape
    if shape.lr_scale != LR_SCALE_AUTO:
        low, high = shape.lr_scale
        return float(low), float(high)
    if transfer_moves(spec) is not None:  # around each shape's own start (transfer_move), widened by the basin
        below, above = 1 / SPREAD, SPREAD
        if basin is not None:
            below, above = min(below, basin[0]), max(above, basin[1])
        return max(LOWEST, min(1.0, _tidy(below))), min(HIGHEST, max(1.0, _tidy(above)))
    ranges = [
        auto_lr_scale(optimizer, width / spec.model.width, depth / spec.model.depth, basin)
        for optimizer in values_of(spec, "optimizer")
        for width in shape.width
        for depth in shape.depth
    ]
    return min(low for low, _ in ranges), max(high for _, high in ranges)


def transfer_move(optimizer: str, width_ratio: float, depth_ratio: float,
                  moves: Mapping[str, Sequence[float]] | None = None, *, family: str | None = None) -> float:
    """Where a shape ``width_ratio`` times as wide and ``depth_ratio`` as deep as the small network starts,
    as a multiple of the rate calibrated on it (``lr_transfer = "rule"``): by ``moves``, the exponents per
    optimizer a stored study was made with, or else by :data:`TRANSFER_MOVES` of the built-in ``family``."""
    if moves is None and family is None:
        raise ValueError("transfer_move needs the stored moves or the built-in family whose rule to use")
    width_exponent, depth_exponent = moves[optimizer] if moves is not None else _family_move(str(family), optimizer)
    return float(width_ratio**width_exponent * depth_ratio**depth_exponent)


def _family_move(family: str, optimizer: str) -> tuple[float, float]:
    return TRANSFER_MOVES[family]["adam" if optimizer in ADAPTIVE else "sgd"]


def fitted_width_exponent(shapes: Sequence[tuple[float, float]]) -> float:
    """The power of the width ratio that best carries the small network's rate to wider and narrower shapes.

    ``shapes``: (width ratio, rate ratio) per measured shape of the small network's depth, the rate
    ratio the geometric centre of the rates within one standard error of that shape's best over the
    same centre of the small network's (the hand-off hands on the middle of the small network's basin,
    not its best point). Least squares of log rate ratio on log width ratio through the origin (the
    small network keeps its rate), rounded to a quarter: the measurement (3 seeds, a grid a quarter
    decade apart) does not tell finer powers apart.
    """
    logs = [(math.log(w), math.log(r)) for w, r in shapes if w != 1]
    if not logs:
        raise ValueError("no shape of another width to fit the width exponent on")
    slope = sum(x * y for x, y in logs) / sum(x * x for x, _ in logs)
    return round(slope * 4) / 4


def transfer_moves(spec: StudySpec) -> dict[str, tuple[float, float]] | None:
    """Each listed optimizer's (width, depth) exponents of the rule, where it acts: ``lr_transfer = "rule"`` on a
    built-in family, whose width is a hidden layer's fan-in as the rule was measured on. None elsewhere: a
    user's factory may read ``width`` as anything (heads, blocks), so its shapes start at the calibrated rate."""
    if spec.stages.shape.lr_transfer != "rule" or spec.model.family not in BUILT_IN_FAMILIES:
        return None
    return {o: _family_move(spec.model.family, o) for o in values_of(spec, "optimizer")}


def transfer_record(spec: StudySpec) -> dict[str, object] | None:
    """What ``<name>/shape`` stores of the rule its shapes start by (None: no rule acts), read back on resume."""
    moves = transfer_moves(spec)
    if moves is None:
        return None
    return {"rule": f"rate x (width / {spec.model.width})^a x (depth / {spec.model.depth})^b",
            "width": spec.model.width, "depth": spec.model.depth,
            "exponents": {o: list(exponents) for o, exponents in moves.items()}}


def rule_moves(rule: Mapping[str, object]) -> dict[str, tuple[float, float]]:
    """Each optimizer's (width, depth) exponents of a rule as :func:`transfer_record` stores it."""
    exponents: Mapping[str, Sequence[float]] = rule["exponents"]  # type: ignore[assignment]
    return {o: (float(a), float(b)) for o, (a, b) in exponents.items()}


def shape_move(params: Mapping[str, object], moves: Mapping[str, Sequence[float]], width: int, depth: int,
               optimizer: str) -> float:
    """The rule's move for a trial of ``params``: its width and depth (else the small network's ``width`` and
    ``depth``) against the small network's, by its optimizer's exponents (else ``optimizer``'s)."""
    return transfer_move(str(params.get("optimizer", optimizer)), params.get("width", width) / width,  # type: ignore[operator]
                         params.get("depth", depth) / depth, moves)  # type: ignore[operator]


def rule_words(moves: Mapping[str, Sequence[float]], width: int, depth: int) -> str:
    """The rule in words: ``adam: x (width / 16)^-0.5 x (depth / 1)^-0.5; sgd: not moved``."""
    return "; ".join(f"{o}: x (width / {width})^{a:g} x (depth / {depth})^{b:g}" if a or b else f"{o}: not moved"
                     for o, (a, b) in moves.items())


def transfer_words(spec: StudySpec) -> str:
    """The rule in words, for the hand-off's message: ``adam: x (width / 16)^-0.5 x (depth / 1)^-0.5``."""
    return rule_words(transfer_moves(spec) or {}, spec.model.width, spec.model.depth)


def _tidy(value: float) -> float:
    """Three significant digits: a range a person reads in the stored study and the summary."""
    return float(f"{value:.3g}") if value > 0 and math.isfinite(value) else value
