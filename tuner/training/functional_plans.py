"""Which trials train as K copies of one network through ``torch.func``, and why the others train alone.

Copies are grouped only when they are the same network (:func:`network_key`): ``functional_call``
shares the module's Python attributes (a dropout probability, an activation slope) across copies, so
copies built from other factory arguments, or whose modules differ in anything but the values of
their parameters and buffers, would be computed wrongly; they train apart. :func:`batch_plans` builds
the copies as the one-at-a-time path builds each (:func:`built_copy`), groups them, and probes each
group once (:meth:`~tuner.training.functional.FuncBatchedTrainer.probe`); what cannot run batched
trains one trial at a time, with one line saying why.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from tuner.inputs.data import Dataset
from tuner.inputs.models import Family
from tuner.training.functional import FuncBatchedTrainer
from tuner.training.functional_state import FUNCTIONAL_OPTIMIZERS
from tuner.training.train import TrialPlan, seeded_model


def network_key(model: nn.Module, plan: TrialPlan) -> str:
    """What must be equal for two copies to be trained as one network; copies of equal keys batch.

    The factory's arguments (width, depth and the declared parameters), the batch size and
    optimizer, and each module's type, Python attributes, and its parameters' and buffers' names,
    shapes and dtypes. A tensor held as a plain attribute (not a parameter or buffer) is shared by
    ``functional_call`` as it is, so its value is part of the key.
    """
    parts = [f"width={plan.width}", f"depth={plan.depth}", f"batch={plan.train.batch_size}",
             f"optimizer={plan.train.optimizer}", f"declared={sorted(plan.declared.items())!r}"]
    for name, module in model.named_modules():
        attributes = []
        for attribute, value in sorted(vars(module).items()):
            if attribute.startswith("_") and attribute not in ("_forward_hooks", "_forward_pre_hooks"):
                continue
            if isinstance(value, torch.Tensor):
                data = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                value = f"{value.dtype}{tuple(value.shape)}:{hashlib.sha256(data).hexdigest()}"
            elif attribute in ("_forward_hooks", "_forward_pre_hooks"):
                value = len(value)
            attributes.append(f"{attribute}={value!r}")
        parts.append(f"{name}:{type(module).__qualname__}({', '.join(attributes)})")
    for kind, tensors in (("param", model.named_parameters()), ("buffer", model.named_buffers())):
        parts.extend(f"{kind} {name} {tuple(t.shape)} {t.dtype}" for name, t in tensors)
    return "\n".join(parts)


def not_vmappable(model: nn.Module) -> str | None:
    """Why ``model`` is known not to run under vmap before trying (None: not known)."""
    for module in model.modules():
        if isinstance(module, nn.RNNBase):
            return (f"its nn.{type(module).__name__} does not run under torch.func.vmap (pytorch/pytorch#105982): "
                    f"trials train one at a time")
    return None


def _not_stackable(model: nn.Module) -> str | None:
    """Why one flat tensor cannot hold the copies' parameters (None: it can)."""
    dtypes = {parameter.dtype for parameter in model.parameters()}
    if not dtypes:
        return "the model has no parameters to train: trials train one at a time"
    if len(dtypes) > 1:
        return f"the model's parameters are of {len(dtypes)} dtypes ({', '.join(sorted(map(str, dtypes)))}): trials train one at a time"
    frozen = [name for name, parameter in model.named_parameters() if not parameter.requires_grad]
    if frozen:  # torch.optim leaves them be; the flat copies would train them
        return f"the model has frozen parameters ({', '.join(frozen[:3])}): trials train one at a time"
    return None


def materialised(model: nn.Module, data: Dataset) -> nn.Module:
    """``model`` with its lazy modules' parameters made, by one forward pass on two rows (as its first evaluation would)."""
    if any(isinstance(module, nn.modules.lazy.LazyModuleMixin) for module in model.modules()):
        was_training = model.training
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model.eval()(data.x_train[:2])
        model.train(was_training)
    return model


def built_copy(family: Family, data: Dataset, plan: TrialPlan) -> nn.Module:
    """The trial's model as the one-at-a-time path builds it (same seed, lazy parameters made)."""
    return materialised(seeded_model(family, data, plan.width, plan.depth, plan.train.seed, plan.declared), data)


@dataclass
class Part:
    """Plans that train together (``trainer``) or one alone (``trainer`` None)."""

    indices: list[int]
    trainer: FuncBatchedTrainer | None = None


TIMED_PROBE = True  # whether a batched step slower than K steps of one copy alone makes copies train alone


def batch_plans(family: Family, data: Dataset, plans: Sequence[TrialPlan],
                timed: bool | None = None) -> tuple[list[Part], str | None]:
    """The plans in parts that train as K copies, or alone; and, when some that could batch train alone, why (one line).

    Copies of one :func:`network_key` form one part; each part of two or more is probed once
    (:meth:`FuncBatchedTrainer.probe`) and trains alone, plan by plan, if the probe finds a reason.
    ``timed``: whether a batched step slower than K steps of one copy is a reason (default :data:`TIMED_PROBE`;
    False where numbers, not speed, matter, as in tests: the timing of a busy machine is not repeatable).
    """
    timed = TIMED_PROBE if timed is None else timed
    optimizer = plans[0].train.optimizer
    if optimizer not in FUNCTIONAL_OPTIMIZERS:
        return [Part([i]) for i in range(len(plans))], f"optimizer {optimizer!r} has no batched form: trials train one at a time"
    models = [built_copy(family, data, plan) for plan in plans]
    reason = not_vmappable(models[0]) or _not_stackable(models[0])
    if reason:
        return [Part([i]) for i in range(len(plans))], reason
    groups: dict[str, list[int]] = {}
    for i, (model, plan) in enumerate(zip(models, plans)):
        groups.setdefault(network_key(model, plan), []).append(i)
    parts, reasons = [], []
    if len(groups) > 1:
        reasons.append(f"the {len(plans)} trials are {len(groups)} different networks (other factory arguments or "
                       f"modules): each trains apart")
    for indices in groups.values():
        if len(indices) == 1:
            parts.append(Part(indices))
            continue
        trainer = FuncBatchedTrainer(data, [plans[i] for i in indices], [models[i] for i in indices])
        why = trainer.probe(timed)
        if why is None:
            parts.append(Part(indices, trainer))
        else:
            reasons.append(why)
            parts.extend(Part([i]) for i in indices)
    return parts, "; ".join(dict.fromkeys(reasons)) or None
