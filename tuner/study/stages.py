"""What each stage searches, and how a sampled point becomes a training run.

A stage is one Optuna study, ``<study name>/<stage>`` (stage lr one per listed choice of optimizer or
batch size, ``<study name>/lr[optimizer=adam]``: :mod:`tuner.inputs.choices`). Its search space is a
dict of Optuna distributions, asked for through ``study.ask(fixed_distributions=...)`` (which also
lets a batch of trials be asked at once), or, where some parameters act only for some values of
another (``decay`` for schedules that decay, SGD's momentum), sampled define-by-run in its order
(:func:`ask_conditional`). How it samples and prunes: :mod:`tuner.study.search`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from tuner.inputs.choices import CHOICE_FIELDS, first_choice, listed, values_of
from tuner.inputs.names import RUNG_RULES
from tuner.inputs.params import OPTIMIZER_NAMES, DeclaredParam
from tuner.inputs.params import defaults as declared_defaults
from tuner.inputs.spec import LR_SCALE_AUTO, StudySpec
from tuner.inputs.usercode import UserCode, identity
from tuner.storage import write_study_attrs
from tuner.study.lr_scale import resolve_lr_scale, rule_moves, shape_move, transfer_moves, transfer_record
from tuner.study.pruning import FirstRung
from tuner.study.search import (  # noqa: F401 -- how a stage searches, importable from here as before
    describe_search,
    make_pruner,
    make_sampler,
    pruner_settings,
    sampler_for,
    tpe_settings,
)
from tuner.study.results import trained_params
from tuner.study.stored import ADDED_FIELDS, LR_SCALE_RANGE_ATTR, LR_TRANSFER_ATTR, STAGES, stage_kind
from tuner.study.together import asks_together, batchable_params, resumed_ask_batch  # noqa: F401 -- importable from here as before

if TYPE_CHECKING:  # torch comes with them: imported where a stage is built, not to read a stored one's settings
    from tuner.training.train import TrainConfig, TrialPlan

STAGE_NAMES = STAGES  # the name it has always had here

__all__ = ["STAGE_NAMES", "Stage", "TrialPlan", "audit_stage", "lr_stage", "settle_lr_scale", "shape_stage", "stage_settings"]


@dataclass(frozen=True)
class Stage:
    """One stage of a staged study: what it searches, its budget, and what its trials train with.

    ``base`` holds the training settings every trial of the stage shares; :meth:`plan` turns one
    sampled point into a trial's :class:`TrialPlan` from it alone.
    """

    name: str
    budget: int  # finished (complete or pruned) trials the stage owes
    epochs: int
    sampler: str  # "tpe" or "random"
    pruner: str  # "none", "median", "hyperband" or "successive_halving"
    space: dict[str, BaseDistribution]
    fixed: dict[str, Any]  # settings shared by every trial of the stage (e.g. the calibrated lr)
    base: TrainConfig  # what its trials share; lr, schedule, decay (and momentum) come from the point
    width: int  # the model's shape where the point does not set it
    depth: int
    batch_trials: int = 1  # trials asked and trained together as one batched model
    first_rung: int | None = 1  # the epoch from which the pruner may act (None: it never does)
    # Set (stages.shape.first_rung = "learned" or "auto"): the noise unit below which a rung's values count as untrained,
    # and the pruner decides nothing at a step where all of them are (pruning.UntilLearningPruner).
    untrained_noise: float | None = None
    rung_rule: str = "fixed"  # "learned" or "auto": first_rung was read from stage lr's curves (by that rule)
    # The user's declared parameters, each with the value a trial takes where the point does not
    # set it (its default: stage lr searches none of them).
    declared: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Parameters sampled only where they act: name -> (the parameter it depends on, the values of that
    # one where it does), e.g. decay -> (schedule, the schedules that decay). Empty: every parameter in
    # every trial (studies made before stages.shape.conditional). Set, TPE models them in groups.
    conditions: dict[str, tuple[str, tuple[Any, ...]]] = dataclasses.field(default_factory=dict)
    direction: str = "minimize"  # train.direction: "maximize" for a score (the progress shows the highest as best)
    # With train.optimizer or batch_size listed (tuner.inputs.choices), ``name`` is a variant's stage lr,
    # "lr[optimizer=adam]" (``kind``: "lr"), and this its place among the variants (its seeds follow it).
    variant_index: int = 0
    # Stage shape with listed choices: each variant's choice and calibrated rate; a trial trains at its own
    # variant's rate (``fixed``'s lr is then the rate of the variant whose stage lr did best).
    rates: tuple[tuple[tuple[tuple[str, Any], ...], float], ...] = ()
    # Stage shape with lr_transfer = "rule": each shape starts from the calibrated rate moved for its width and depth,
    # by these (optimizer, width exponent, depth exponent); empty: no move.
    transfer: tuple[tuple[str, float, float], ...] = ()

    @property
    def kind(self) -> str:
        """Which stage this is: ``lr`` (for each variant's too), ``shape`` or ``audit``."""
        return stage_kind(self.name)

    def fixed_for(self, params: dict[str, Any]) -> dict[str, Any]:
        """The stage's fixed settings for a trial of ``params``: with listed choices, its variant's calibrated lr."""
        for choice, rate in self.rates:
            if all(params.get(key) == value for key, value in choice):
                return {**self.fixed, "lr": rate}
        if self.rates:  # never another choice's rate
            raise ValueError(f"no calibrated rate for the choice of {params!r}; known: {[dict(c) for c, _ in self.rates]}")
        return self.fixed

    def move(self, params: dict[str, Any]) -> float:
        """The factor the rule moves the calibrated rate by for the shape of ``params`` (1 without ``transfer``)."""
        if not self.transfer:
            return 1.0
        return shape_move(params, {o: (a, b) for o, a, b in self.transfer}, self.width, self.depth, self.base.optimizer)

    def trained(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` with the stage's fixed settings, ``lr`` the rate the trial trains at: in stage shape the
        calibrated rate, moved to its shape (:meth:`move`), times its ``lr_scale``."""
        values = trained_params(params, self.fixed_for(params))
        if self.transfer and "lr" in values:
            values["lr"] *= self.move(params)
        return values

    def active(self, name: str, params: dict[str, Any]) -> bool:
        """Whether parameter ``name`` is sampled for a trial whose parameters so far are ``params``."""
        if name not in self.conditions:
            return True
        parent, values = self.conditions[name]
        return parent in params and params[parent] in values

    def plan(self, params: dict[str, Any]) -> TrialPlan:
        """The trial of the sampled ``params``, from the stage's base settings."""
        from tuner.training.train import TrialPlan
        values = self.trained(params)
        # A listed choice (train.optimizer = ["adam", "sgd"]): the trial's own, searched by the stage, never a declared name.
        changes: dict[str, Any] = {name: values[name] for name in CHOICE_FIELDS if name in self.space}
        changes |= {
            "lr": float(values["lr"]),
            "schedule": str(values.get("schedule", "constant")),
            "decay": float(values.get("decay", 1.0)),
        }
        if "one_minus_momentum" in values:
            changes["momentum"] = 1.0 - values["one_minus_momentum"]
        declared = {name: values.get(name, default) for name, default in self.declared.items()}
        # The names tuner knows set the optimizer's own; every declared value also travels to the user's code.
        changes.update({name: float(declared[name]) for name in OPTIMIZER_NAMES if name in declared})
        width, depth = int(values.get("width", self.width)), int(values.get("depth", self.depth))
        return TrialPlan(width, depth, dataclasses.replace(self.base, **changes), dict(params), declared)

    def study_name(self, study: str) -> str:
        return f"{study}/{self.name}"


def __getattr__(name: str) -> Any:
    # TrialPlan is importable from here as before, without torch coming with this module.
    if name == "TrialPlan":
        from tuner.training.train import TrialPlan

        return TrialPlan
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def base_config(spec: StudySpec, epochs: int) -> TrainConfig:
    """The training settings a stage's trials share, from the spec."""
    from tuner.training.train import TrainConfig

    train = first_choice(spec).train  # with listed choices, each trial's plan sets its own
    return TrainConfig(
        lr=1.0,  # every trial sets its own
        epochs=epochs,
        batch_size=train.batch_size,
        optimizer=train.optimizer,
        momentum=train.momentum,
        weight_decay=train.weight_decay,
        step_every=spec.stages.shape.step_every,
        divergence_factor=train.divergence_factor,
        seed=spec.seed,  # the user's own loss and metric join at the trainer (tuner.training.trainers.with_code)
    )


def _shaped(spec: StudySpec, **fields: Any) -> Stage:
    epochs = fields["epochs"]
    return Stage(**fields, base=base_config(spec, epochs), width=spec.model.width, depth=spec.model.depth,
                 direction=spec.train.direction,
                 declared=declared_defaults(spec.stages.shape.params))


def conditions(spec: StudySpec, space: dict[str, BaseDistribution]) -> dict[str, tuple[str, tuple[Any, ...]]]:
    """Which parameters of ``space`` act only for some values of another (``stages.shape.conditional``)."""
    if not spec.stages.shape.conditional:
        return {}
    found: dict[str, tuple[str, tuple[Any, ...]]] = {}
    if "optimizer" in space and "sgd" in values_of(spec, "optimizer"):  # momentum is SGD's alone
        found.update({name: ("optimizer", ("sgd",)) for name in ("momentum", "one_minus_momentum") if name in space})
    decaying = tuple(s for s in spec.stages.shape.schedules if s != "constant")
    if "decay" in space and "schedule" in space and len(decaying) < len(spec.stages.shape.schedules):
        found["decay"] = ("schedule", decaying)  # 'constant' ignores decay
    return found


def shape_space(spec: StudySpec) -> dict[str, BaseDistribution]:
    """What stage ``shape`` searches besides ``lr_scale`` (and the audit with the rest): width, depth, schedule,
    decay, and the user's declared parameters."""
    shape = spec.stages.shape
    return {
        # Listed choices first: what acts only with one of them (SGD's momentum) is sampled after it.
        **{name: CategoricalDistribution(list(values)) for name, values in listed(spec).items()},
        "width": IntDistribution(shape.width[0], shape.width[1], log=True),
        "depth": IntDistribution(shape.depth[0], shape.depth[1]),
        "schedule": CategoricalDistribution(list(shape.schedules)),
        "decay": FloatDistribution(shape.decay[0], shape.decay[1], log=True),
        **{param.name: declared_distribution(param) for param in shape.params},
    }


def declared_distribution(param: DeclaredParam) -> BaseDistribution:
    """The Optuna distribution a declared parameter is searched on."""
    if param.choices is not None:
        return CategoricalDistribution(list(param.choices))
    if param.integer:
        return IntDistribution(int(param.low), int(param.high), log=param.log)  # type: ignore[arg-type]
    return FloatDistribution(float(param.low), float(param.high), log=param.log)  # type: ignore[arg-type]


def _lr_scale_space(spec: StudySpec, lr_scale: tuple[float, float] | None) -> dict[str, BaseDistribution]:
    """The shape stage's refinement of the calibrated rate, if its range is not [1, 1]."""
    low, high = lr_scale or resolve_lr_scale(spec)
    return {"lr_scale": FloatDistribution(low, high, log=True)} if low < high else {}


def settle_lr_scale(spec: StudySpec, study: optuna.Study, basin: tuple[float, float] | None = None) -> tuple[float, float]:
    """The ``lr_scale`` range of stage ``shape``: as stored on its ``study``, else resolved (and stored if "auto").

    ``lr_scale = "auto"`` is resolved once, from the optimizer, the shapes and ``basin`` (see
    :mod:`tuner.study.lr_scale`), and kept on ``<name>/shape`` (:data:`LR_SCALE_RANGE_ATTR`): every
    worker, and every resume, then searches the same distribution. A [min, max] the spec writes is
    its own record. With ``lr_transfer = "rule"`` the rule the shapes start by is stored beside it
    (:data:`LR_TRANSFER_ATTR`).
    """
    stored = study.user_attrs.get(LR_SCALE_RANGE_ATTR)
    low, high = (float(stored[0]), float(stored[1])) if stored is not None else resolve_lr_scale(spec, basin)
    attrs: dict[str, Any] = {LR_SCALE_RANGE_ATTR: [low, high]} if stored is None and spec.stages.shape.lr_scale == LR_SCALE_AUTO else {}
    if (rule := transfer_record(spec)) is not None and LR_TRANSFER_ATTR not in study.user_attrs:
        attrs[LR_TRANSFER_ATTR] = rule
    write_study_attrs(study, attrs)  # one commit: no worker reads the range without the rule
    return low, high


def stored_moves(study: optuna.Study) -> dict[str, tuple[float, float]] | None:
    """The rule's exponents per optimizer that ``<name>/shape`` was made with (None: none stored)."""
    rule = study.user_attrs.get(LR_TRANSFER_ATTR)
    return rule_moves(rule) if isinstance(rule, dict) else None


def fixed_settings(spec: StudySpec, stage: str, best_lr: float | None = None) -> dict[str, Any]:
    """What every trial of ``stage`` trains with and does not sample: stage lr's small network at a
    constant rate, stage shape's calibrated rate ``best_lr``; the audit samples everything."""
    if stage == "lr":
        return {"width": spec.model.width, "depth": spec.model.depth, "schedule": "constant"}
    if stage == "shape":
        return {"lr": best_lr}
    return {}


def lr_stage(spec: StudySpec, lr_range: tuple[float, float] | None = None, *, label: str | None = None,
             variant_index: int = 0) -> Stage:
    """Stage 1: ``lr`` log-uniform on the spec's small network, constant schedule.

    ``label``, ``variant_index``: with listed choices, the variant's stage name and place; ``spec`` is
    then the variant's (:attr:`tuner.inputs.choices.Variant.spec`).
    """
    lr = spec.stages.lr
    low, high = lr_range or (lr.lr_min, lr.lr_max)
    return _shaped(
        spec,
        name=label or "lr",
        budget=lr.trials,
        epochs=lr.epochs or spec.train.epochs,
        sampler=lr.sampler,
        pruner=lr.pruner,
        space={"lr": FloatDistribution(low, high, log=True)},
        fixed=fixed_settings(spec, "lr"),
        batch_trials=lr.batch_trials if asks_together(spec) else 1,
        variant_index=variant_index,
    )


def shape_stage(spec: StudySpec, best_lr: float, rung: FirstRung | None = None, *,
                lr_scale: tuple[float, float] | None = None,
                rates: tuple[tuple[tuple[tuple[str, Any], ...], float], ...] = (),
                moves: dict[str, tuple[float, float]] | None = None) -> Stage:
    """Stage 2: width, depth, schedule and decay at the learning rate calibrated by stage 1.

    ``rung``: with ``first_rung = "learned"`` (or ``"auto"``), the first rung chosen from stage lr (:mod:`tuner.study.pruning`);
    until it is known (the study's creation at the hand-off) the stage prunes nothing.
    ``lr_scale``: the range its multiplier on that rate is searched over, as :func:`settle_lr_scale`
    stored it; None: resolved from the spec alone (enough to plan a trial from its params).
    ``rates``: with listed choices, each variant's choice and calibrated rate (:attr:`Stage.rates`).
    ``moves``: the rule's exponents as :func:`stored_moves` read them from the study; None: the spec's
    (:func:`tuner.study.lr_scale.transfer_moves`).
    """
    shape = spec.stages.shape
    pruning: dict[str, Any] = {"pruner": shape.pruner, "first_rung": shape.first_rung}
    if shape.pruner == "none":
        pruning["first_rung"] = None
    elif shape.first_rung in RUNG_RULES:
        epoch = rung.epoch if rung is not None else None
        pruning = {"pruner": shape.pruner if epoch is not None else "none", "first_rung": epoch, "rung_rule": shape.first_rung,
                   "untrained_noise": rung.noise if rung is not None and epoch is not None else None}
    space = {**shape_space(spec), **_lr_scale_space(spec, lr_scale)}
    return _shaped(
        spec,
        name="shape",
        budget=shape.trials,
        epochs=shape.epochs or spec.train.epochs,
        sampler=shape.sampler,
        space=space,
        fixed=fixed_settings(spec, "shape", best_lr),
        conditions=conditions(spec, space),
        rates=rates,
        transfer=tuple((o, a, b) for o, (a, b) in (moves or transfer_moves(spec) or {}).items()),
        **pruning,
    )


def audit_stage(spec: StudySpec) -> Stage:
    """The audit: everything at once, by random search, as Greff et al. did, to check interactions."""
    lr, audit = spec.stages.lr, spec.stages.audit
    space: dict[str, BaseDistribution] = {"lr": FloatDistribution(lr.lr_min, lr.lr_max, log=True), **shape_space(spec)}
    if "sgd" in values_of(spec, "optimizer") and "momentum" not in space:  # a declared momentum is sampled as declared
        low, high = audit.momentum
        space["one_minus_momentum"] = FloatDistribution(1.0 - high, 1.0 - low, log=True)
    return _shaped(
        spec,
        name="audit",
        budget=audit.trials,
        epochs=audit.epochs or spec.train.epochs,
        sampler="random",
        pruner="none",
        space=space,
        fixed=fixed_settings(spec, "audit"),
        conditions=conditions(spec, space),
    )


def stage_settings(spec: StudySpec, stage: str, code: UserCode | None = None, *,
                   stored_identity: dict[str, Any] | None = None) -> dict[str, Any]:
    """The spec's settings a stage's results depend on (budgets excluded: raising one resumes).

    ``stored_identity``: the identity of the user's code a stored stage holds, to compare with:
    each function is identified by the scheme it was stored with (:func:`tuner.inputs.usercode.identity`).
    """
    settings = spec.settings()
    stages = settings.pop("stages")
    for table in stages.values():
        table.pop("trials")
    # How trials are scheduled (one by one or batched) does not change what each one computes; and
    # lr_range joins the settings only when not the default, so studies made before it resume.
    for key in ("batched", "batch_trials"):
        stages["lr"].pop(key)
    if stages["lr"].get("lr_range") == "fixed":
        stages["lr"].pop("lr_range")
    # Fields added since: only when set, so that the settings (and hash) of older studies stay the same.
    settings["data"].pop("workers", None)  # how batches are loaded, not what they hold
    for table, defaults in ADDED_FIELDS.items():
        fields = stages[table.split(".")[1]] if table.startswith("stages.") else settings[table]
        for key, default in defaults.items():
            if fields.get(key, default) == default:
                fields.pop(key, None)
    found = identity(spec, code, stored_identity)  # the user's own code and data files, by content
    if found:
        settings["identity"] = found
    settings["stages"] = {"lr": stages["lr"]}
    if stage in ("shape", "audit"):
        settings["stages"][stage] = stages[stage]
    if stage != "shape" and "params" in stages["shape"]:
        # Stage lr trains at the declared defaults, the audit samples the declared ranges: theirs too.
        settings["stages"]["shape"] = {"params": stages["shape"]["params"]}
    return settings


def ask_conditional(study: optuna.Study, stage: Stage) -> optuna.Trial:
    """A trial whose parameters are sampled in the space's order, each only where it acts (``stage.conditions``)."""
    trial = study.ask()
    for name, distribution in stage.space.items():
        if stage.active(name, trial.params):
            suggest(trial, name, distribution)
    return trial


def suggest(trial: optuna.Trial, name: str, distribution: BaseDistribution) -> Any:
    """``trial``'s value of ``name`` on ``distribution``, through Optuna's public ``suggest_*``."""
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
    if isinstance(distribution, FloatDistribution):
        return trial.suggest_float(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
    raise TypeError(f"parameter {name!r}: no suggest_* for {type(distribution).__name__}")
