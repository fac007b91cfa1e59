"""The names a spec may give as ``model.family``, and the families registered from Python.

No torch here: reading and validating a spec needs the names, not the models. The built-in
families themselves are built in :mod:`tuner.inputs.models`; a family registered with
:func:`register_model` is looked up here first, so a user may also register another model under a
built-in name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

BUILT_IN_FAMILIES = ("mlp", "lstm", "cnn")
INPUT_KINDS = ("flat", "sequence", "shape")

# name -> (factory, input kind). Filled by the user's register_model calls only, never as a side
# effect of importing a module; a spec's "module:function" family is a ModelFamily passed down instead.
_REGISTERED: dict[str, tuple[Callable[..., Any], str]] = {}


@dataclass(frozen=True)
class ModelFamily:
    """A model factory resolved from a spec's ``model.family = "module:function"``, passed where a family name goes.

    Built where the user's code is resolved (:func:`tuner.inputs.usercode.resolve_code`) and handed
    down, instead of being registered in a global table under its reference.
    """

    name: str  # the reference the spec names it by
    factory: Callable[..., Any]
    inputs: str = "shape"  # called with keywords (see register_model)


def register_model(name: str, factory: Callable[..., Any], *, sequence: bool = False, inputs: str | None = None) -> None:
    """Make a model family available to specs as ``model.family = name``.

    ``inputs`` says how the factory sees the data (``sequence=True`` is ``inputs="sequence"``):

    - ``"flat"`` (default): called as ``factory(n_features, n_outputs, width, depth)``; each sample
      is flattened and ``n_features`` is its total size;
    - ``"sequence"``: the same call; inputs (batch, steps, features), ``n_features`` per step;
    - ``"shape"``: called with keywords ``factory(input_shape=..., n_outputs=..., width=...,
      depth=...)``, ``input_shape`` one sample's shape (e.g. ``(1, 8, 8)``); samples are handed
      over as they are, not flattened.

    Example:
        >>> from torch import nn
        >>> register_model("linear", lambda n_in, n_out, width, depth: nn.Linear(n_in, n_out))
        >>> register_model("my_cnn", cnn, inputs="shape")  # cnn(input_shape=(1, 8, 8), n_outputs=10, ...)  # doctest: +SKIP
    """
    kind = inputs or ("sequence" if sequence else "flat")
    if kind not in INPUT_KINDS:
        raise ValueError(f"register_model: inputs={inputs!r}; choose one of {', '.join(INPUT_KINDS)}")
    _REGISTERED[name] = (factory, kind)


def unregister_model(name: str) -> None:
    """Forget a family registered with :func:`register_model` (a built-in one stays); no error if none."""
    _REGISTERED.pop(name, None)


def registered_family(name: str | ModelFamily) -> tuple[Callable[..., Any], str] | None:
    """(factory, input kind) registered under ``name`` from Python (or of a resolved family), or None."""
    if isinstance(name, ModelFamily):
        return name.factory, name.inputs
    return _REGISTERED.get(name)


def model_families() -> tuple[str, ...]:
    """The names a spec may give as ``model.family``: the built-in ones and those registered."""
    return tuple(dict.fromkeys((*BUILT_IN_FAMILIES, *_REGISTERED)))
