"""Parameters a user declares in ``[stages.shape.params]``: their spec, validation, and who accepts them.

Each declared parameter is a table, a range or a choice, never inferred from a list's length::

    [stages.shape.params]
    dropout = { low = 0.0, high = 0.5, default = 0.0 }
    weight_decay = { low = 1e-6, high = 1e-2, log = true, default = 0.0 }
    layers = { low = 1, high = 4, int = true, default = 2 }
    activation = { choices = ["relu", "gelu", "tanh"], default = "relu" }

``default`` is the value stage ``lr`` trains with (it lies in the range, or is 0 for a log-scaled
one: "off", which a log scale cannot hold); stages ``shape`` and ``audit`` search the range. Names
tuner knows act where they belong (:data:`KNOWN`); every name is also handed, as a keyword argument,
to the user's model factory, loop, loss and metric that declare it (:func:`accepted_arguments`). No
torch here: a spec is read without it.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tuner.errors import MISSING, SpecError

# Names a trial's plan sets itself, and the keywords tuner already hands to a loop or a factory.
RESERVED = ("lr", "width", "depth", "lr_scale", "schedule", "decay", "one_minus_momentum", "batch_size",
            "model", "train", "val", "optimizer", "epochs", "lr_at", "device", "report", "loss", "seed", "params",
            "input_shape", "n_outputs", "n_features")
# Names tuner itself acts on: the optimizer's (TrainConfig fields) and the built-in families' dropout.
OPTIMIZER_NAMES = ("weight_decay", "momentum")
KNOWN = (*OPTIMIZER_NAMES, "dropout")
KEYS = ("low", "high", "log", "int", "choices", "default")
EXAMPLE = "{ low = 0.0, high = 0.5, default = 0.0 }"
CHOICE_EXAMPLE = '{ choices = ["relu", "gelu"], default = "relu" }'


@dataclass(frozen=True)
class DeclaredParam:
    """One declared parameter: a range (``low``, ``high``, ``log``, ``int``) or ``choices``, and its ``default``."""

    name: str
    default: Any
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    integer: bool = False  # the spec's `int = true`
    choices: tuple[Any, ...] | None = None

    def as_table(self) -> dict[str, Any]:
        """The spec's table of it, as stored in the settings (None where unused: a choice has no range)."""
        choices = list(self.choices) if self.choices is not None else None
        return {"low": self.low, "high": self.high, "log": self.log, "int": self.integer, "choices": choices,
                "default": self.default}

    def pinned(self, value: Any) -> dict[str, Any]:
        """The table that searches ``value`` alone, with ``value`` as the default (``best.toml``)."""
        if self.choices is not None:
            return {"choices": [value], "default": value}
        return {"low": value, "high": value, "int": self.integer, "default": value}


def parse_params(table: Any, path: str, source: str) -> tuple[DeclaredParam, ...]:
    """The declared parameters of ``[stages.shape.params]``, checked one by one (SpecError naming the first bad one)."""
    if not isinstance(table, Mapping):
        raise SpecError(source, path, table, f"must be a table of parameters, e.g. [{path}] dropout = {EXAMPLE}")
    return tuple(_parse_one(str(name), value, f"{path}.{name}", source) for name, value in table.items())


def _parse_one(name: str, table: Any, path: str, source: str) -> DeclaredParam:
    if not name.isidentifier():
        raise SpecError(source, path, MISSING,
                        "a parameter's name is passed as a keyword argument: use letters, digits and _, e.g. dropout")
    if name in ("optimizer", "batch_size"):  # a rate is calibrated for each value: a list in [train]
        example = '["adam", "sgd"]' if name == "optimizer" else "[32, 128]"
        raise SpecError(source, path, MISSING, f"'{name}' is searched by listing its values in [train], e.g. "
                        f"{name} = {example}: stage lr then calibrates a rate for each")
    if name in RESERVED:
        raise SpecError(source, path, MISSING, f"'{name}' is tuner's own (searched or handed over by tuner already); "
                        "give your parameter another name")
    if not isinstance(table, Mapping):
        example = CHOICE_EXAMPLE if isinstance(table, list) and any(isinstance(v, str) for v in table) else EXAMPLE
        raise SpecError(source, path, table, f"must be a table: a range or a choice, e.g. {name} = {example}")
    table = {key: value for key, value in table.items() if value is not None}  # a stored setting's unused keys
    for key in table:
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1, cutoff=0.5)
            raise SpecError(source, f"{path}.{key}", MISSING,
                            f"unknown key; {f'did you mean {close[0]!r}?' if close else 'known keys: ' + ', '.join(KEYS)}")
    if "default" not in table:
        raise SpecError(source, f"{path}.default", MISSING, "missing; give the value stage lr trains with, e.g. default = 0.0")
    for flag in ("log", "int"):
        if not isinstance(table.get(flag, False), bool):
            raise SpecError(source, f"{path}.{flag}", table[flag], "must be true or false")
    default = table["default"]
    if "choices" in table:
        return _choice(name, table, path, source)
    if "low" not in table or "high" not in table:
        raise SpecError(source, path, dict(table), f"give a range (low and high) or choices, e.g. {name} = {EXAMPLE}")
    whole = bool(table.get("int", False))
    log = bool(table.get("log", False))
    low, high = (_number(table[key], f"{path}.{key}", source, whole) for key in ("low", "high"))
    if low > high:
        raise SpecError(source, f"{path}.low", low, f"must not exceed high ({high})")
    if log and low <= 0:
        raise SpecError(source, f"{path}.low", low, "a log-scaled range must lie above 0; e.g. low = 1e-6")
    default = _number(default, f"{path}.default", source, whole)
    if not (low <= default <= high or (log and default == 0)):
        raise SpecError(source, f"{path}.default", default,
                        f"lies outside [{low}, {high}]; give a value in the range{' (or 0: off)' if log else ''}")
    return DeclaredParam(name, default, low, high, log, whole)


def _choice(name: str, table: Mapping[str, Any], path: str, source: str) -> DeclaredParam:
    choices = table["choices"]
    if "low" in table or "high" in table or table.get("log") or table.get("int"):
        raise SpecError(source, path, dict(table), "give either choices or a range (low, high), not both")
    if not isinstance(choices, (list, tuple)) or not choices:
        raise SpecError(source, f"{path}.choices", choices, 'must be a non-empty list, e.g. choices = ["relu", "gelu"]')
    for choice in choices:
        if not isinstance(choice, (str, int, float, bool)):
            raise SpecError(source, f"{path}.choices", choices, "each choice must be a string, number or true/false")
    if len({repr(choice) for choice in choices}) < len(choices):
        raise SpecError(source, f"{path}.choices", choices, "lists a choice twice; list each once")
    default = table["default"]
    if not any(type(default) is type(choice) and default == choice for choice in choices):
        raise SpecError(source, f"{path}.default", default, f"is not one of the choices {choices}; give one of them")
    return DeclaredParam(name, default, choices=tuple(choices))


def _number(value: Any, path: str, source: str, whole: bool) -> float | int:
    if whole:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(source, path, value, "must be a whole number (int = true)")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(source, path, value, "must be a finite number")
    return float(value)


def defaults(params: tuple[DeclaredParam, ...]) -> dict[str, Any]:
    """Each declared parameter's default: what stage ``lr`` trains with."""
    return {param.name: param.default for param in params}


def accepts(function: Callable[..., object] | None, name: str) -> bool:
    """Whether ``function`` declares a keyword ``name`` (or takes ``**kwargs``)."""
    if function is None:
        return False
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # no signature to read (some builtins): it is given nothing
        return False
    found = parameters.get(name)
    if found is not None:
        return found.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def keyword_names(function: Callable[..., object] | None, skip: int = 0) -> list[str]:
    """The keyword arguments ``function`` declares by name, after its first ``skip`` parameters (those a caller
    passes by position); none for ``**kwargs``, or where no signature can be read."""
    if function is None:
        return []
    try:
        parameters = list(inspect.signature(function).parameters.values())[skip:]
    except (TypeError, ValueError):
        return []
    return [p.name for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]


def accepted_arguments(function: Callable[..., object], given: Mapping[str, object]) -> dict[str, object]:
    """The entries of ``given`` that ``function`` declares (all of them if it takes ``**kwargs``)."""
    return {name: value for name, value in given.items() if accepts(function, name)}
