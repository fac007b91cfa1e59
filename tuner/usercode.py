"""A user's own code named in a spec as ``"module:function"``, and its identity.

A spec may name its model factory (``[model] family``), data loader (``[data] loader``), training
loop (``[train] loop``), loss and metric (``[train] loss``, ``[train] metric``) as
``"module:function"``. The module is imported from the spec's folder first, then from
``sys.path``. From Python, :func:`tuner.run_study` takes the same things as callables.

A changed function must not resume into trials its old version made: the identity of each named
function (module, function, and a hash of its module file, or of its source when it has no file)
and of a CSV file's content joins the stored settings, so a changed one is a changed study.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuner.spec import SpecError, StudySpec

# Spec fields that may name a function, and what the function is for (in messages).
CODE_FIELDS = {
    "model.family": "the model factory",
    "data.loader": "the data loader",
    "train.loop": "the training loop",
    "train.loss": "the loss",
    "train.metric": "the metric",
}

# Callables handed to run_study from Python, by the reference the spec now names them with.
_GIVEN: dict[str, Callable[..., Any]] = {}
_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def is_reference(value: object) -> bool:
    """Whether a spec value names a function (``"module:function"``) rather than a built-in."""
    return isinstance(value, str) and ":" in value


def reference_of(function: Callable[..., Any]) -> str:
    """The ``module:function`` name a callable handed over from Python is stored under."""
    module = getattr(function, "__module__", None) or "__main__"
    name = getattr(function, "__qualname__", None) or getattr(function, "__name__", None) or type(function).__name__
    return f"{module}:{name}"


def give(function: Callable[..., Any]) -> str:
    """Make a Python callable resolvable by :func:`load_callable`; returns its reference."""
    if not callable(function):
        raise TypeError(f"{function!r} is not callable")
    reference = reference_of(function)
    _GIVEN[reference] = function
    return reference


def with_callables(spec: StudySpec, **functions: Callable[..., Any] | None) -> StudySpec:
    """``spec`` naming the given callables (model, loader, loop, loss, metric) by their references."""
    given = {name: function for name, function in functions.items() if function is not None}
    if not given:
        return spec
    model_spec, data_spec, train_spec = spec.model, spec.data, spec.train
    if "model" in given:
        model_spec = dataclasses.replace(model_spec, family=give(given["model"]))
    if "loader" in given:
        data_spec = dataclasses.replace(data_spec, name="python", loader=give(given["loader"]))
    train_spec = dataclasses.replace(train_spec, **{k: give(given[k]) for k in ("loop", "loss", "metric") if k in given})
    return dataclasses.replace(spec, model=model_spec, data=data_spec, train=train_spec)


def spec_folder(source: str) -> Path | None:
    """The folder of the spec file ``source`` (None for a spec made in Python)."""
    return Path(source).resolve().parent if source else None


def load_callable(reference: str, field: str, source: str = "") -> Callable[..., Any]:
    """Import ``module:function`` (from the folder of spec file ``source`` first, then ``sys.path``).

    Raises :class:`SpecError` naming the field, the module and the fix when that fails.
    """
    if reference in _GIVEN:
        return _GIVEN[reference]
    module_name, _, function_name = reference.partition(":")
    if not module_name or not function_name:
        raise SpecError(source, field, reference, 'write it as "module:function", e.g. "mynet:make_model"')
    module = _import(module_name, field, reference, source)
    target: Any = module
    for part in function_name.split("."):
        if not hasattr(target, part):
            found = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
            raise SpecError(source, field, reference, f"module '{module_name}' has no '{function_name}'; "
                            f"its functions: {', '.join(found[:10]) or 'none'}")
        target = getattr(target, part)
    if not callable(target):
        raise SpecError(source, field, reference, f"'{function_name}' in module '{module_name}' is not callable; "
                        f"name a function that returns {CODE_FIELDS.get(field, 'the result')}")
    return target


def _import(module_name: str, field: str, reference: str, source: str) -> Any:
    folder = spec_folder(source)
    added = folder is not None and str(folder) not in sys.path
    if added:
        sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name.split(".")[0] and error.name != module_name:
            raise SpecError(source, field, reference,
                            f"importing module '{module_name}' failed: {error}; install what it needs") from None
        where = f"beside the spec ({folder})" if folder else "in the working folder"
        raise SpecError(source, field, reference,
                        f"no module '{module_name}' {where} or on sys.path; put {module_name}.py there, or make it importable") from None
    except Exception as error:  # noqa: BLE001 -- the user's module raised while being imported
        first = str(error).splitlines()[0] if str(error) else ""
        raise SpecError(source, field, reference,
                        f"importing module '{module_name}' raised {type(error).__name__}: {first}; fix the module") from None
    finally:
        if added:
            sys.path.remove(str(folder))


def function_identity(function: Callable[..., Any], reference: str) -> dict[str, str]:
    """Module, function and a hash of the module's file (else of the function's source)."""
    module_name, _, function_name = reference.partition(":")
    identity = {"module": module_name, "function": function_name}
    module = sys.modules.get(getattr(function, "__module__", "") or "")
    path = getattr(module, "__file__", None)
    if path and Path(path).is_file():
        identity["sha256"] = file_sha256(Path(path))
        return identity
    try:
        text = inspect.getsource(function)
    except (OSError, TypeError):
        text = reference  # no source to be had (a builtin, a REPL lambda): the name alone
    identity["sha256"] = hashlib.sha256(text.encode()).hexdigest()
    return identity


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, computed once per process for a file that did not change."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _FILE_HASHES[key] = digest.hexdigest()
    return _FILE_HASHES[key]


def code_references(spec: StudySpec) -> dict[str, str]:
    """The spec's fields that name a function: field -> ``module:function``."""
    values = {
        "model.family": spec.model.family,
        "data.loader": getattr(spec.data, "loader", None),
        "train.loop": getattr(spec.train, "loop", None),
        "train.loss": getattr(spec.train, "loss", None),
        "train.metric": getattr(spec.train, "metric", None),
    }
    return {field: value for field, value in values.items() if is_reference(value)}


def identity(spec: StudySpec) -> dict[str, Any]:
    """What the spec's own code and data files are: joins the stored settings (empty: nothing of the user's)."""
    found: dict[str, Any] = {}
    for field, reference in code_references(spec).items():
        found[field] = function_identity(load_callable(reference, field, spec.source), reference)
    if spec.data.name == "csv" and spec.data.path:
        from tuner.data import csv_path

        path = csv_path(spec.data, spec.source)
        if path.is_file():
            found["data.path"] = {"sha256": file_sha256(path)}
    return found


def install(spec: StudySpec) -> None:
    """Make the spec's own model factory buildable as ``model.family`` (registered under its reference)."""
    if not is_reference(spec.model.family):
        return
    from tuner.models import register_model

    factory = load_callable(spec.model.family, "model.family", spec.source)
    register_model(spec.model.family, factory, inputs="shape")


def train_functions(spec: StudySpec) -> dict[str, Callable[..., Any] | None]:
    """The spec's own ``loss`` and ``metric`` (None where it names none)."""
    return {
        name: load_callable(reference, f"train.{name}", spec.source) if reference else None
        for name, reference in (("loss", spec.train.loss), ("metric", spec.train.metric))
    }


def check_model(spec: StudySpec, data: Any) -> None:
    """Build the spec's small network once and run two samples through it: SpecError if that fails.

    A factory that raises, returns something other than an ``nn.Module``, or a module whose
    outputs do not have the shape the task needs, is named before anything is written.
    """
    if not is_reference(spec.model.family):
        return
    import torch
    from torch import nn

    from tuner.data import StreamedData, data_device, sample_shape
    from tuner.models import build_model

    field, reference = "model.family", spec.model.family
    shape = sample_shape(data)
    call = f"{reference.partition(':')[2]}(input_shape={shape}, n_outputs={data.n_outputs}, width={spec.model.width}, depth={spec.model.depth})"
    try:
        model = build_model(reference, shape, data.n_outputs, spec.model.width, spec.model.depth)
    except Exception as error:  # noqa: BLE001 -- the user's factory raised
        first = str(error).splitlines()[0] if str(error) else ""
        raise SpecError(spec.source, field, reference, f"{call} raised {type(error).__name__}: {first}; fix the factory") from None
    if not isinstance(model, nn.Module):
        raise SpecError(spec.source, field, reference, f"{call} returned a {type(model).__name__}; return a torch.nn.Module")
    model = model.to(data_device(data))
    if isinstance(data, StreamedData):
        x = torch.stack([torch.as_tensor(data.train_set[i][0]) for i in range(min(2, len(data.train_set)))])
    else:
        x = data.x_train[:2]
    try:
        with torch.no_grad():
            out = model.eval()(x.to(data_device(data)))
    except Exception as error:  # noqa: BLE001
        first = str(error).splitlines()[0] if str(error) else ""
        raise SpecError(spec.source, field, reference,
                        f"the model it builds fails on a batch of inputs of shape {tuple(x.shape)}: {type(error).__name__}: {first}") from None
    wanted = (len(x), data.n_outputs)
    if not isinstance(out, torch.Tensor) or (tuple(out.shape) != wanted and not (data.n_outputs == 1 and tuple(out.shape) == wanted[:1])):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SpecError(spec.source, field, reference,
                        f"the model it builds returns {got} for a batch of {len(x)}; return (batch, n_outputs) = {wanted}")


def check_loss(spec: StudySpec, data: Any) -> None:
    """Call the spec's own loss once, on the small network's outputs for the first training batch: SpecError unless it can train.

    A loss that raises, returns something other than a tensor, more than one number (e.g. one per
    row, ``reduction="none"``), or a number that does not depend on the outputs (no gradient) is
    named before anything is written, instead of failing every trial with a message that does not
    name it.
    """
    if not spec.train.loss:
        return
    import torch
    from torch.utils.data import DataLoader

    from tuner.data import StreamedData, data_device, sample_shape
    from tuner.models import build_model
    from tuner.train import model_loss

    field, reference = "train.loss", spec.train.loss
    loss = model_loss(data.task, load_callable(reference, field, spec.source))
    device = data_device(data)
    if isinstance(data, StreamedData):
        # A generator of its own: a DataLoader without one draws its seed from torch's global one.
        x, y = next(iter(DataLoader(data.train_set, batch_size=spec.train.batch_size, generator=torch.Generator())))
    else:
        x, y = data.x_train[:spec.train.batch_size], data.y_train[:spec.train.batch_size]
    with torch.random.fork_rng(devices=[]):  # the check leaves torch's global generator as it found it
        model = build_model(spec.model.family, sample_shape(data), data.n_outputs, spec.model.width, spec.model.depth)
    model = model.to(device).eval()  # eval: no dropout draws; gradients still flow
    try:
        value = loss(model(x.to(device)), y.to(device))
    except Exception as error:  # noqa: BLE001 -- the user's loss raised
        first = str(error).splitlines()[0] if str(error) else ""
        raise SpecError(spec.source, field, reference,
                        f"calling it on the first batch raised {type(error).__name__}: {first}; fix the loss") from None
    if not isinstance(value, torch.Tensor):
        raise SpecError(spec.source, field, reference, f"it returns a {type(value).__name__}; return a 0-dim tensor computed "
                        f"from the outputs with torch operations, e.g. F.mse_loss(outputs, targets)")
    if value.dim() != 0:
        raise SpecError(spec.source, field, reference, f"it returns a tensor of shape {tuple(value.shape)} for a batch of "
                        f"{len(x)}; return one number (a 0-dim tensor) for the batch, e.g. end with .mean()")
    if not value.requires_grad:
        raise SpecError(spec.source, field, reference, "it returns a number that does not depend on the outputs (no gradient "
                        "to train with); compute it from the outputs with torch operations, not .item() or numpy")
