"""Choices that change what a learning rate means: ``train.optimizer`` and ``train.batch_size`` as lists.

A rate means something for one optimizer and one batch size only. When the spec lists several
values of either, stage ``lr`` calibrates a rate for each combination (a *variant*: its own Optuna
study, ``<name>/lr[optimizer=adam]``, with the stage's whole budget), and stage ``shape`` searches
the choice with the rest, each trial at its own variant's calibrated rate. A field given one value
(or a list of one) is that value: the study is what it always was, one ``<name>/lr``.

No torch here: a spec is read and its stored studies named without it.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tuner.inputs.spec import StudySpec

CHOICE_FIELDS = ("optimizer", "batch_size")  # train.<field>: a value, or a list of values to choose from


@dataclass(frozen=True)
class Variant:
    """One combination of the listed choices, e.g. ``{"optimizer": "adam"}``, and the stage ``lr`` of it."""

    choice: dict[str, Any]  # the listed fields and this variant's value of each (empty: nothing is listed)
    spec: StudySpec  # the spec with this variant's values in place of the lists
    index: int = 0  # its place among the variants, in the spec's order (its stage lr's seeds follow it)

    @property
    def label(self) -> str:
        """Its stage ``lr``'s name: ``lr`` when nothing is listed, else ``lr[optimizer=adam,batch_size=32]``."""
        return lr_label(self.choice)

    def words(self) -> str:
        """The variant for people: ``optimizer adam, batch size 32`` (empty when nothing is listed)."""
        return ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in self.choice.items())


def listed(spec: StudySpec) -> dict[str, tuple[Any, ...]]:
    """The choice fields the spec lists more than one value of, each with its values in the spec's order."""
    found = {}
    for name in CHOICE_FIELDS:
        value = getattr(spec.train, name)
        if isinstance(value, tuple):
            found[name] = value
    return found


def values_of(spec: StudySpec, name: str) -> tuple[Any, ...]:
    """Every value of ``train.<name>`` a trial may train with (one, or the listed ones)."""
    value = getattr(spec.train, name)
    return value if isinstance(value, tuple) else (value,)


def variants(spec: StudySpec) -> list[Variant]:
    """Every combination of the listed values, in the spec's order (one, empty, when nothing is listed)."""
    fields = listed(spec)
    combos = itertools.product(*fields.values())
    return [Variant(dict(zip(fields, combo)), with_choice(spec, dict(zip(fields, combo))), index)
            for index, combo in enumerate(combos)]


def with_choice(spec: StudySpec, choice: Mapping[str, Any]) -> StudySpec:
    """``spec`` training with the values of ``choice`` (e.g. a trial's ``optimizer``) in place of its lists."""
    if not choice:
        return spec
    return dataclasses.replace(spec, train=dataclasses.replace(spec.train, **dict(choice)))


def first_choice(spec: StudySpec) -> StudySpec:
    """``spec`` with each list at its first value: what checks that need one value (a batch, a model) run with."""
    return variants(spec)[0].spec


def lr_label(choice: Mapping[str, Any]) -> str:
    """The name of the stage ``lr`` that calibrates the rate of ``choice`` (``lr`` for no choice)."""
    if not choice:
        return "lr"
    return "lr[" + ",".join(f"{key}={value}" for key, value in choice.items()) + "]"


def is_lr_label(stage: str) -> bool:
    """Whether ``stage`` names a stage ``lr``: ``lr`` itself or one variant's, ``lr[...]``."""
    return stage == "lr" or (stage.startswith("lr[") and stage.endswith("]") and len(stage) > 4)


def label_choice(stage: str) -> dict[str, str]:
    """The choice a variant's stage lr name spells, as text: ``lr[optimizer=adam]`` -> ``{"optimizer": "adam"}``."""
    if not is_lr_label(stage) or stage == "lr":
        return {}
    return dict(part.partition("=")[::2] for part in stage[3:-1].split(","))  # type: ignore[misc]

