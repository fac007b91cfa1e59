"""Whether stage lr asks its trials ``batch_trials`` at a time, and why not where it does not.

The ask batch (what TPE sees: its start-up and constant-liar batches) follows from the spec alone,
never from how the asked trials then train (:func:`tuner.training.trainers.make_trainer` decides
that, and says why copies asked together trained apart). Where ``stages.lr.batched`` is on but the
spec rules batching out before anything trains (a user's loop, tuner's LSTM past what its stacked
copies do, data read batch by batch), the stage asks one at a time, and :func:`settled_ask_batch`
keeps the reason on the stage study (``fallback``): the summary prints it, as it prints the
reasons found while training.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import optuna

from tuner.inputs.params import OPTIMIZER_NAMES
from tuner.inputs.spec import StudySpec
from tuner.study.stored import ASK_BATCH_KEY, FALLBACK_ATTR, SEARCH_ATTR

if TYPE_CHECKING:
    from tuner.study.stages import Stage


def batchable_params(spec: StudySpec) -> bool:
    """Whether stage lr's trials, at the declared defaults, can train as tuner's hand-written stacked copies.

    Those keep each copy's momentum and weight decay, but have no dropout, and hand nothing to a
    user's code: with dropout above 0, or any other name, the ``torch.func`` copies train them.
    """
    return all(param.name in OPTIMIZER_NAMES or (param.name == "dropout" and param.default == 0)
               for param in spec.stages.shape.params)


def asks_together(spec: StudySpec) -> bool:
    """Whether stage lr asks its trials ``batch_trials`` at a time: wherever they may train as K copies.

    As tuner's hand-written stacked MLP or LSTM, as K copies through ``torch.func`` (a user's model,
    the ``cnn`` family, a user's loss or metric, declared parameters), or one at a time where the
    copies turn out not to run batched. A user's loop trains one trial at a time, and tuner's own
    LSTM only batches up to ``BATCHED_LSTM_MAX_WIDTH`` units (``nn.LSTM`` does not run under vmap):
    those ask one at a time (:func:`asks_apart_reason` says why).
    """
    return spec.stages.lr.batched and asks_apart_reason(spec) is None


def asks_apart_reason(spec: StudySpec) -> str | None:
    """Why stage lr, batched by its spec, asks one trial at a time (None: it asks ``batch_trials`` at a time)."""
    from tuner.training.batched import BATCHED_LSTM_MAX_WIDTH, supports  # here: torch comes with them
    from tuner.training.stacked import StackedLSTM, stacked_class
    from tuner.training.trainers import LOOP_FALLBACK

    if spec.train.loop:
        return LOOP_FALLBACK
    if stacked_class(spec.model.family) is not StackedLSTM:
        return None
    why = "(nn.LSTM does not run under torch.func.vmap): trials train one at a time"
    if not supports(spec.model.family, spec.train.optimizer):
        return f"tuner's batched LSTM trains with SGD or Adam only, not {spec.train.optimizer} {why}"
    if spec.model.width > BATCHED_LSTM_MAX_WIDTH:
        return (f"tuner's batched LSTM is faster than one at a time up to {BATCHED_LSTM_MAX_WIDTH} units only, "
                f"not at width {spec.model.width}: trials train one at a time")
    if spec.train.loss or spec.train.metric:
        return f"tuner's batched LSTM trains with its own loss and metric only ([train] loss or metric given) {why}"
    if not batchable_params(spec):
        return f"tuner's batched LSTM takes no dropout nor other declared parameter ([stages.shape.params]) {why}"
    return None


def asked_together_before(spec: StudySpec) -> bool:
    """:func:`asks_together` as tuner decided it before ``torch.func`` copies (issue 23): only where the
    hand-written stacked copies applied. A stage lr stored then resumes asking as it began."""
    from tuner.training.batched import worth_batching  # here: torch comes with it

    own_code = spec.train.loop or spec.train.loss or spec.train.metric
    return bool(spec.stages.lr.batched and not own_code and batchable_params(spec)
                and worth_batching(spec.model.family, spec.train.optimizer, spec.model.width))


def resumed_ask_batch(spec: StudySpec, stage: Stage, search: dict[str, Any] | None, n_trials: int) -> Stage:
    """``stage`` (lr) asking as its stored study began: a study stored before the ask batch was recorded
    (no ``ask_batch`` in its ``search``) that holds trials asks by the rule of then."""
    if search is None or ASK_BATCH_KEY in search or not n_trials:
        return stage
    return dataclasses.replace(stage, batch_trials=spec.stages.lr.batch_trials if asked_together_before(spec) else 1)


def settled_ask_batch(spec: StudySpec, stage: Stage, study: optuna.Study, *, streamed: bool = False) -> Stage:
    """Stage lr asking as its stored study began (:func:`resumed_ask_batch`), one at a time for data read
    batch by batch; where the spec asked for batches that it rules out, the reason kept on ``study``."""
    from tuner.training.trainers import STREAMED_FALLBACK

    stage = resumed_ask_batch(spec, stage, study.user_attrs.get(SEARCH_ATTR), len(study.get_trials(deepcopy=False)))
    lr = spec.stages.lr
    reason = asks_apart_reason(spec) if lr.batched else None
    if streamed and lr.batched and stage.batch_trials > 1:
        stage, reason = dataclasses.replace(stage, batch_trials=1), STREAMED_FALLBACK
    if reason and lr.batch_trials > 1 and not study.user_attrs.get(FALLBACK_ATTR):
        study.set_user_attr(FALLBACK_ATTR, reason)
    return stage
