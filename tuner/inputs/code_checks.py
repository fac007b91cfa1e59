"""The user's own code checked once it is resolved, before anything is written: the model it builds, the names it takes.

:func:`check_model` builds the spec's small network from the user's factory and runs two samples through
it; :func:`check_loss` calls the user's loss on its outputs; :func:`check_training_step` trains it one
step on a batch, as a trial would; :func:`check_params` refuses a declared parameter that nothing takes.
Each answers with a :class:`~tuner.errors.SpecError` naming the field and the fix; :func:`check_code`
runs the checks of the model in their order. torch is imported inside them: reading a spec needs none.
"""

from __future__ import annotations

import difflib
from typing import Any

from tuner.errors import MISSING, SpecError, a_type, error_line
from tuner.inputs.choices import values_of
from tuner.inputs.families import ModelFamily
from tuner.inputs.params import RESERVED, accepted_arguments, accepts, defaults, keyword_names
from tuner.inputs.spec import StudySpec
from tuner.inputs.usercode import CODE_FIELDS, UserCode, code_references, is_reference

__all__ = ["check_code", "check_loss", "check_model", "check_params", "check_training_step", "first_batch"]


def check_code(spec: StudySpec, data: Any, code: UserCode, device: Any) -> None:
    """The model, the loss, one training step and the memory, checked in that order before anything is written.

    A model that cannot build or run (:func:`check_model`), a loss that cannot train
    (:func:`check_loss`), a model that fails only once it trains (:func:`check_training_step`), or the
    largest model too large for the device's memory (:func:`tuner.inputs.models.check_model_fits`): each
    would fail every trial, without naming its field.
    """
    from tuner.inputs.choices import first_choice
    from tuner.inputs.models import check_model_fits

    check_model(spec, data, code)
    check_loss(first_choice(spec), data, code)
    check_training_step(first_choice(spec), data, code)
    check_model_fits(spec, data, device, code.family)


def check_model(spec: StudySpec, data: Any, code: UserCode) -> None:
    """Build the spec's small network once and run two samples through it: SpecError if that fails.

    A factory that raises, returns something other than an ``nn.Module``, or a module whose
    outputs do not have the shape the task needs, is named before anything is written.
    """
    if not is_reference(spec.model.family):
        return
    import torch
    from torch import nn

    from tuner.inputs.data import StreamedData, data_device, sample_shape
    from tuner.inputs.models import build_model

    field, reference = "model.family", spec.model.family
    shape = sample_shape(data)
    declared = defaults(spec.stages.shape.params)  # what stage lr builds it with
    given = "".join(f", {name}={value!r}" for name, value in accepted_arguments(code.family.factory, declared).items()) \
        if isinstance(code.family, ModelFamily) else ""
    call = (f"{reference.partition(':')[2]}(input_shape={shape}, n_outputs={data.n_outputs}, width={spec.model.width}, "
            f"depth={spec.model.depth}{given})")
    try:
        model = build_model(code.family, shape, data.n_outputs, spec.model.width, spec.model.depth, declared)
    except Exception as error:  # noqa: BLE001 -- the user's factory raised
        also = ", or the default of a parameter it was given ([stages.shape.params])" if given else ""
        raise SpecError(spec.source, field, reference, f"{call} raised {error_line(error)}; fix the factory{also}") from None
    if not isinstance(model, nn.Module):
        raise SpecError(spec.source, field, reference, f"{call} returned {a_type(model)}; return a torch.nn.Module")
    model = model.to(data_device(data))
    if isinstance(data, StreamedData):
        x = torch.stack([torch.as_tensor(data.train_set[i][0]) for i in range(min(2, len(data.train_set)))])
    else:
        x = data.x_train[:2]
    try:
        with torch.no_grad():
            out = model.eval()(x.to(data_device(data)))
    except Exception as error:  # noqa: BLE001
        dropped = getattr(data, "dropped_columns", ())
        sizes = any(word in str(error).lower() for word in ("shape", "size", "mat1", "dimension"))  # a width mismatch
        why = (f" ({len(dropped)} constant column(s) of the CSV file were dropped, so a row has {x.shape[-1]} features, "
               f"not {x.shape[-1] + len(dropped)}; build from input_shape, or set data.drop_constant_columns = false)"
               if dropped and sizes else "")
        raise SpecError(spec.source, field, reference,
                        f"the model it builds fails on a batch of inputs of shape {tuple(x.shape)}{why}: "
                        f"{error_line(error)}") from None
    wanted = (len(x), data.n_outputs)
    if not isinstance(out, torch.Tensor) or (tuple(out.shape) != wanted and not (data.n_outputs == 1 and tuple(out.shape) == wanted[:1])):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SpecError(spec.source, field, reference,
                        f"the model it builds returns {got} for a batch of {len(x)}; return (batch, n_outputs) = {wanted}")


def first_batch(spec: StudySpec, data: Any) -> tuple[Any, Any]:
    """The first ``batch_size`` training rows, as a check of the user's code runs them (torch's generator untouched)."""
    import torch
    from torch.utils.data import DataLoader

    from tuner.inputs.data import StreamedData

    if isinstance(data, StreamedData):
        # A generator of its own: a DataLoader without one draws its seed from torch's global one.
        return next(iter(DataLoader(data.train_set, batch_size=spec.train.batch_size, generator=torch.Generator())))
    return data.x_train[:spec.train.batch_size], data.y_train[:spec.train.batch_size]


def _small_network(spec: StudySpec, data: Any, code: UserCode) -> tuple[Any, Any, Any, Any]:
    """(model, x, y, loss) as stage lr trains them: the spec's small network of the user's factory with the declared
    defaults (built with torch's generator left as found), the first batch on the data's device, the trial's loss."""
    import torch

    from tuner.inputs.data import data_device, sample_shape
    from tuner.inputs.models import build_model
    from tuner.training.train import model_loss, with_declared

    declared = defaults(spec.stages.shape.params)  # what stage lr builds and calls them with
    device = data_device(data)
    x, y = first_batch(spec, data)
    with torch.random.fork_rng(devices=[]):
        model = build_model(code.family, sample_shape(data), data.n_outputs, spec.model.width, spec.model.depth, declared)
    return model.to(device), x.to(device), y.to(device), model_loss(data.task, with_declared(code.loss, declared))


def check_loss(spec: StudySpec, data: Any, code: UserCode) -> None:
    """Call the spec's own loss once, on the small network's outputs for the first training batch: SpecError unless it can train.

    A loss that raises, returns something other than a tensor, more than one number (e.g. one per
    row, ``reduction="none"``), or a number that does not depend on the outputs (no gradient) is
    named before anything is written, instead of failing every trial with a message that does not
    name it.
    """
    if not spec.train.loss:
        return
    import torch

    field, reference = "train.loss", spec.train.loss
    model, x, y, loss = _small_network(spec, data, code)
    try:
        value = loss(model.eval()(x), y)  # eval: no dropout draws; gradients still flow
    except Exception as error:  # noqa: BLE001 -- the user's loss raised
        raise SpecError(spec.source, field, reference,
                        f"calling it on the first batch raised {error_line(error)}; fix the loss") from None
    if not isinstance(value, torch.Tensor):
        raise SpecError(spec.source, field, reference, f"it returns {a_type(value)}; return a 0-dim tensor computed "
                        f"from the outputs with torch operations, e.g. F.mse_loss(outputs, targets)")
    if value.dim() != 0:
        raise SpecError(spec.source, field, reference, f"it returns a tensor of shape {tuple(value.shape)} for a batch of "
                        f"{len(x)}; return one number (a 0-dim tensor) for the batch, e.g. end with .mean()")
    if not value.requires_grad:
        raise SpecError(spec.source, field, reference, "it returns a number that does not depend on the outputs (no gradient "
                        "to train with); compute it from the outputs with torch operations, not .item() or numpy")


def check_training_step(spec: StudySpec, data: Any, code: UserCode) -> None:
    """Train the spec's small network of the user's factory one step, as a trial would: SpecError if that fails.

    In training mode, on the first ``batch_size`` rows, with the trial's loss, then backward: a model
    that fails only there (``.detach()`` or ``.item()`` in its forward, a layer that refuses a batch
    of that size, a branch taken in training only) passed :func:`check_model` and would fail every
    trial instead. Not for a user's loop, which trains its own way; torch's generator is left as found.
    """
    if not is_reference(spec.model.family) or code.loop is not None:
        return
    import torch

    model, x, y, loss = _small_network(spec, data, code)
    trained = f"the model it builds fails a training step (training mode, a batch of {len(x)}, then backward)"
    with torch.random.fork_rng(devices=[]):  # its dropout draws, if any
        try:
            value = loss(model.train()(x), y)
            if not any(p.requires_grad for p in model.parameters()):
                raise SpecError(spec.source, "model.family", spec.model.family,
                                "the model it builds has no parameters to train (none, or all with requires_grad=False); "
                                "give it layers with weights that train")
            if isinstance(value, torch.Tensor) and not value.requires_grad:
                raise SpecError(spec.source, "model.family", spec.model.family,
                                f"{trained}: in training its outputs carry no gradient (.detach(), .item(), numpy or "
                                f"torch.no_grad() in its forward?), so nothing would learn; compute them with torch operations")
            value.backward()
        except SpecError:
            raise
        except Exception as error:  # noqa: BLE001 -- the user's model raised
            raise SpecError(spec.source, "model.family", spec.model.family,
                            f"{trained}: {error_line(error)}; fix the model") from None


def check_params(spec: StudySpec, code: UserCode) -> None:
    """Refuse a declared parameter (``[stages.shape.params]``) that nothing takes, or a loop that needs an
    argument tuner does not pass: SpecError naming it.

    ``weight_decay`` sets the optimizer's, ``momentum`` SGD's, ``dropout`` the built-in families'; any
    name is taken by the user's model factory, loop, loss or metric that declares it (or ``**kwargs``).
    Checked when the code is resolved, before anything is written.
    """
    from tuner.inputs.models import factory_of, is_built_in  # here: tuner.inputs.models imports torch

    _check_loop_arguments(spec, code)
    factory = code.family.factory if isinstance(code.family, ModelFamily) else factory_of(code.family)
    built_in = factory is not None and is_built_in(factory)
    own = [function for function in (None if built_in else factory, code.loop, code.loss, code.metric) if function is not None]
    references = code_references(spec)
    yours = ", ".join(f"{field} ({references[field]})" for field in CODE_FIELDS
                      if field != "data.loader" and field in references) or "none in this spec"
    for param in spec.stages.shape.params:
        name = param.name
        if (name == "weight_decay" or (name == "momentum" and "sgd" in values_of(spec, "optimizer"))
                or (name == "dropout" and built_in) or any(accepts(function, name) for function in own)):
            continue
        optimizers = values_of(spec, "optimizer")
        why = {"momentum": f"momentum acts with train.optimizer = \"sgd\" only (here "
                           f"{optimizers[0] if len(optimizers) == 1 else list(optimizers)!r})",
               "dropout": f"dropout acts on the built-in families (mlp, lstm, cnn) only, not {spec.model.family!r}"}
        # A misspelt name of one that would be taken (p_dorp for p_drop): said first, as the likely fix. Keywords
        # only: a loss's and a metric's first two arguments are the outputs and targets tuner passes them.
        takers = {n for function in own for n in keyword_names(function, skip=2 if function in (code.loss, code.metric) else 0)}
        takers |= {"weight_decay"} | ({"momentum"} if "sgd" in optimizers else set()) | ({"dropout"} if built_in else set())
        close = difflib.get_close_matches(name, sorted(takers - set(RESERVED) - {name}), n=1, cutoff=0.75)
        meant = f"did you mean '{close[0]}'? " if close else ""
        raise SpecError(spec.source, f"stages.shape.params.{name}", MISSING,
                        f"nothing takes it{': ' + why[name] if name in why else ''}; {meant}declare a keyword argument '{name}' "
                        f"in your model factory, loop, loss or metric (yours: {yours}), or remove it")


def _check_loop_arguments(spec: StudySpec, code: UserCode) -> None:
    """A loop (``[train] loop``) is called with keyword arguments only, those it names among tuner's and the
    declared parameters': one that needs any other (``trainloader``), or takes one by position only, would
    fail every trial with a TypeError, and the study would be made before that was seen."""
    import inspect

    from tuner.training.trainers import LOOP_ARGUMENTS  # here: it imports torch

    if code.loop is None:
        return
    try:
        outer = inspect.signature(code.loop, follow_wrapped=False).parameters.values()
        parameters = inspect.signature(code.loop).parameters.values()
    except (TypeError, ValueError):  # no signature to read: it is given what it takes, as ever
        return
    if inspect.unwrap(code.loop) is not code.loop and any(
            p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD) for p in outer):
        return  # a decorator's (*args, **kwargs) wrapper may supply what the function it wraps needs
    passed = [*LOOP_ARGUMENTS, *(param.name for param in spec.stages.shape.params)]
    reference = code_references(spec).get("train.loop", MISSING)
    for parameter in parameters:
        needed = parameter.default is inspect.Parameter.empty and parameter.kind not in (
            inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        if needed and parameter.kind == inspect.Parameter.POSITIONAL_ONLY:
            raise SpecError(spec.source, "train.loop", reference,
                            f"it takes '{parameter.name}' by position only; tuner passes every argument by name: "
                            f"drop the '/' from its signature")
        if needed and parameter.name not in passed:
            close = difflib.get_close_matches(parameter.name, passed, n=1, cutoff=0.6)
            meant = f"did you mean '{close[0]}'? " if close else ""
            raise SpecError(spec.source, "train.loop", reference,
                            f"it needs an argument '{parameter.name}' that tuner does not pass; {meant}tuner passes, "
                            f"by name, those of {', '.join(LOOP_ARGUMENTS)} (and your declared parameters) the "
                            f"loop names; rename it, or give it a default")

