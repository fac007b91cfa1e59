"""Refit: train a study's best configuration again, the same way its trial was trained.

:func:`write_best` reads the best complete trial of stages ``lr`` and ``shape`` (stage ``lr``'s small
network may beat every shape; ``--stage`` picks one stage's best), rebuilds the spec from the settings stored on that
stage's study, trains the trial's configuration again with the same seed and hands three files to
:mod:`tuner.best.folder`, their one writer:

- ``best.toml``: a spec whose ``shape`` stage trains exactly that configuration (one trial);
- ``model.pt``: the weights and what rebuilds the model and preprocesses raw inputs;
- ``metrics.json``: validation (and test, when the data has a test part) error and loss, the trial
  it came from and the value stored for it, which ``refit = "train"`` reproduces.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import tomllib
import torch
from optuna.trial import FrozenTrial, TrialState

from tuner.best.folder import FolderError, check_folder, model_record, write_folder
from tuner.folders import default_folder
from tuner.inputs.choices import label_choice
from tuner.inputs.data import Dataset, StreamedData
from tuner.inputs.load import load_dataset
from tuner.inputs.spec import StudySpec, spec_from_dict
from tuner.inputs.user_data import check_test_part
from tuner.inputs.usercode import code_changes, code_references, files_beside_spec, identity, resolve_code
from tuner.study.results import (
    LR_ATTR, SETTINGS_ATTR, SPEC_PATH_ATTR, best_complete, direction_of, load_stage_studies, loss_like, lr_stages,
)
from tuner.study.runner import TunerError
from tuner.study.stages import Stage, audit_stage, lr_stage, shape_stage, stored_moves
from tuner.study.stored import BATCHED_WITH_ATTR, STAGES, with_added_fields
from tuner.training.train import EpochResult, evaluate, resolve_device, use_threads
from tuner.training.trainers import LoopTrainer, make_trainer, with_code

REFITS = ("train", "train+val")


class BestError(ValueError):
    """A study whose winner cannot be trained again (no complete trial, a bad refit): bad input."""


@dataclass(frozen=True)
class BestResult:
    """What :func:`write_best` wrote, and the metrics it wrote into ``metrics.json``."""

    folder: Path
    spec_path: Path
    model_path: Path
    metrics_path: Path
    metrics: dict[str, Any]
    replaced: str | None = None  # why the folder's earlier content could not be trusted, if it could not
    code_paths: tuple[Path, ...] = ()  # the study's own modules, copied beside best.toml
    redrawn: str | None = None  # why the value trained again is not the stored one (metrics "redrawn"), in words


def write_best(
    name: str,
    storage: str | optuna.storages.BaseStorage | None = None,
    out: str | Path | None = None,
    *,
    refit: str = "train",
    device: str = "auto",
    model: Callable[..., Any] | None = None,
    loader: Callable[..., Any] | None = None,
    loop: Callable[..., Any] | None = None,
    loss: Callable[..., Any] | None = None,
    metric: Callable[..., Any] | None = None,
    stage: str | None = None,
) -> BestResult:
    """Train the best configuration of study ``name`` again (same seed) and write it into ``out``.

    Example:
        >>> result = tuner.write_best("quickstart", "sqlite:///tuner.db", "quickstart-best")  # doctest: +SKIP
        >>> result.metrics["validation"]["error"] == result.metrics["stored_value"]  # doctest: +SKIP
        True

    Args:
        name: the study's name (its stages are the Optuna studies ``<name>/<stage>``).
        storage: an Optuna storage URL (default ``sqlite:///tuner.db``) or storage object.
        out: the folder to write into (created if missing); default ``<name>-best`` in the working
            folder (made a safe folder name: see :func:`tuner.folders.default_folder`).
        refit: ``train``: the trial's own training part, so the validation score reproduces the
            stored one; ``train+val``: training and validation parts together (the validation score
            is then no fair estimate; the test part, if any, still is).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        stage: train this stage's best trial (``lr``, ``shape`` or ``audit``); default the best
            of stages ``lr`` and ``shape`` (stage ``shape`` on a tie), with the reason in ``metrics["chosen"]``.
        model, loader, loop, loss, metric: the callables handed to :func:`tuner.run_study` from
            Python, if the study was run that way (a spec's ``"module:function"`` is imported anew).

    Raises:
        tuner.analysis.importance.UnknownStudyError: no study of that name in the storage.
        BestError: no complete trial, an unknown ``refit``, or ``out`` is a file.
    """
    if refit not in REFITS:
        raise BestError(f"--refit {refit!r}: choose one of {', '.join(REFITS)}")
    resolve_device(device)  # an unknown name, or cuda without a GPU: before any work
    folder = Path(out) if out is not None else Path(default_folder(name, "-best"))
    if folder.exists() and not folder.is_dir():
        raise BestError(f"--out {str(folder)!r}: is a file; give a folder (created if missing)")
    replaced = _earlier_output(folder)
    asked = stage
    spec, stage, trial, chosen, stored_identity = _best_trial(name, storage, stage)
    given = {"model": model, "loader": loader, "loop": loop, "loss": loss, "metric": metric}
    code = resolve_code(spec, given)  # the study's own code, imported once, here
    changed = [] if stored_identity is None else code_changes(stored_identity, identity(spec, code, stored_identity), spec, code)
    if changed:
        raise BestError(f"study {name!r}: its own code or data changed since its trials ran ({'; '.join(changed)}); "
                        f"put the old version back to train its winner again")
    # The modules beside the study's spec, read once, as checked: best.toml imports its copy of them.
    code_files = {name: path.read_bytes() for name, path in files_beside_spec(spec).items()}
    plan = with_code(stage.plan(trial.params), code)
    torch_device = resolve_device(device)
    use_threads(None, torch_device)  # $TUNER_THREADS, else one on the CPU, as tuner study
    data = load_dataset(spec.data, spec.seed, spec.source, code.loader).to(torch_device)
    check_test_part(spec.data, data, spec.source)  # a loader's test Dataset, unread by the stages: before training
    fit_data = data
    if refit == "train+val":
        if isinstance(data, StreamedData):
            fit_data = dataclasses.replace(data, train_set=torch.utils.data.ConcatDataset([data.train_set, data.val_set]))
        else:
            fit_data = dataclasses.replace(data, x_train=torch.cat([data.x_train, data.x_val]),
                                           y_train=torch.cat([data.y_train, data.y_val]))
    # The trial's own trainer (tuner's loop, or the user's), as the stage trained it: plan -> trainer.
    trainer = make_trainer([plan], fit_data, code, torch_device)
    results: list[EpochResult] = []

    def keep(epoch: list[EpochResult | None]) -> list[int]:
        results.extend(result for result in epoch if result is not None)
        return []  # no pruning here: it trains to the end (or until it diverges)

    trainer.run(keep)
    model = trainer.model  # type: ignore[attr-defined]
    loop_value = trainer.values[-1] if isinstance(trainer, LoopTrainer) else None
    if not results or results[-1].diverged:
        raise TunerError(f"study {name!r}: trial {trial.number} of stage '{stage.name}' diverged when trained again "
                         f"(refit {refit}); try --refit train")
    val_loss, val_error = evaluate(model, data, plan.train)
    objective = spec.train.objective
    value = loop_value if loop_value is not None else val_error if objective == "val_error" else val_loss
    together = int(trial.user_attrs.get(BATCHED_WITH_ATTR, 1))
    # A trial trained as one of K copies and trained again alone: where the copies drew random numbers of
    # their own (dropout masks, under vmap), its value is another draw of that noise; without, the stacked
    # arithmetic ran in another order, a rounding that grows over the epochs (a review: 0.3 % after 60).
    redrawn = (refit == "train" and together > 1 and trial.value is not None
               and not math.isclose(value, trial.value, rel_tol=1e-4, abs_tol=1e-6))
    masks = any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())
    why = (f"trained as one of {together} copies, each drawing random numbers of its own (dropout masks): trained "
           "alone it draws others" if masks else
           f"trained as one of {together} stacked copies, whose arithmetic runs in another order than one copy's "
           "alone: a rounding that grows over the epochs") + ", so 'value' does not reproduce 'stored_value'"
    metrics: dict[str, Any] = {
        "study": name,
        "stage": stage.name,
        "trial": trial.number,
        "chosen": chosen,
        "params": stage.trained(trial.params),
        "objective": objective,
        "stored_value": trial.value,
        "refit": refit,
        "seed": spec.seed,
        "epochs": plan.train.epochs,
        "task": data.task,
        # A metric of the user's own replaces val_error: "error" is then its value.
        # With a loop of the user's own, its last report is the value trials were compared by ("validation.value").
        "value_is": "your loop's last report" if loop_value is not None else "the objective",
        "error_is": (f"your metric ({spec.train.metric}, {spec.train.direction}d)" if spec.train.metric
                     else "1 - accuracy" if data.task == "classification" else "RMSE in the target's units"),
        "train_rows": _rows(fit_data, "train"),
        "validation": {
            "error": val_error,
            "loss": val_loss,
            # A user's loop reports its own objective: the value its last report (or return) gave.
            "value": value,
            "rows": _rows(data, "val"),
            "fair": refit == "train",
        },
        "test": None,
        "trained_together": together,
        "redrawn": redrawn,  # the note says why: dropout masks drawn again, or the copies' order of arithmetic
        "note": (
            f"validation: the rows every trial was scored on; the trial {why}" if redrawn else
            "validation: the rows every trial was scored on; with refit train, 'value' reproduces 'stored_value'"
            if refit == "train" else
            "refit train+val: the model was trained on the validation rows too, so the validation numbers are "
            "no fair estimate of its error on new data (and need not reproduce 'stored_value'); the test part is"
        ),
    }
    if _rows(data, "test"):
        test_loss, test_error = evaluate(model, data, plan.train, part="test")
        metrics["test"] = {"error": test_error, "loss": test_loss, "rows": _rows(data, "test")}

    # A stage asked for by name is in the study name too: best.toml of the default and of --stage audit both run
    # from one folder's tuner.db, where one name would be refused as a study made with other settings.
    best_name = f"{name}-best" + ("" if asked is None else "-" + re.sub(r"[^A-Za-z0-9_.]+", "-", stage.name).strip("-"))
    spec_text = best_spec_text(spec, name, stage, trial, plan_values=_plan_values(plan), refit=refit, best_name=best_name,
                               code_files=sorted(code_files), path=shlex.quote(str(folder / "best.toml")))
    record = model_record(model, spec, data, plan.width, plan.depth, plan.declared)
    spec_path, model_path, metrics_path = write_folder(folder, spec_text, record, metrics, code_files)
    return BestResult(folder, spec_path, model_path, metrics_path, metrics, replaced,
                      tuple(folder / name for name in sorted(code_files)), f"trial {trial.number} {why}" if redrawn else None)


def _earlier_output(folder: Path) -> str | None:
    """The one line saying that ``folder`` holds the partial or mixed output of a stopped run (None: it does not)."""
    try:
        check_folder(folder)
    except FolderError as error:
        return error.problem
    return None


def _rows(data: Dataset | StreamedData, part: str) -> int:
    if isinstance(data, StreamedData):
        dataset = {"train": data.train_set, "val": data.val_set, "test": data.test_set}[part]
        return 0 if dataset is None else len(dataset)
    tensor = {"train": data.x_train, "val": data.x_val, "test": data.x_test}[part]
    return 0 if tensor is None else len(tensor)


def _stage_named(asked: str, names: list[str]) -> str:
    """The stage ``asked`` means, written as a person might (``lr[adam]``, ``lr[optimizer = adam]``, its choices
    in another order, ``LR``); else BestError naming the stages it matches, or those there are and the closest."""
    compact = "".join(asked.split()).lower()
    exact = [name for name in names if name.lower() == compact]
    if exact:
        return exact[0]
    if compact.startswith("lr[") and compact.endswith("]"):
        parts = [part.partition("=") for part in compact[3:-1].split(",") if part]
        matches = []
        for name in names:
            choice = {key.lower(): value.lower() for key, value in label_choice(name).items()}
            # each part a choice of this stage: key=value, or its value alone
            if choice and all(choice.get(key) == value if eq else key in choice.values() for key, eq, value in parts):
                matches.append(name)
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise BestError(f"--stage {asked!r} matches {len(matches)} stages ({', '.join(matches)}); name one of them")
    close = difflib.get_close_matches(compact, names, n=1, cutoff=0.5)
    raise BestError(f"--stage {asked!r}: {f'did you mean {close[0]!r}? ' if close else ''}choose one of {', '.join(names)}")


def _best_trial(name: str, storage: str | optuna.storages.BaseStorage | None,
                stage: str | None = None) -> tuple[StudySpec, Stage, FrozenTrial, str, dict[str, Any] | None]:
    """The spec (from the stored settings), the stage, the best complete trial to train again, why that one,
    and the stored identity of the study's own code (None: it names none).

    ``stage`` None: the best of stages ``lr`` and ``shape`` (``shape`` on a tie): the small network of
    stage ``lr`` is a configuration too, and stage ``shape`` may end worse than it.
    """
    studies = load_stage_studies(name, storage)
    lr_names = lr_stages(studies) or ["lr"]  # each variant's stage lr, with listed choices
    if stage is not None and stage not in STAGES and stage not in studies:
        stage = _stage_named(stage, list(dict.fromkeys([*STAGES, *studies])))
    bests: dict[str, FrozenTrial] = {}
    for stage_name in (lr_names if stage == "lr" else [stage]) if stage else ["shape", *lr_names]:
        study = studies.get(stage_name)
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if study else []
        complete = [t for t in complete if t.value is not None and math.isfinite(t.value)]
        best_here = best_complete(complete, direction_of(study)) if study else None
        if best_here is not None:
            bests[stage_name] = best_here
    if stage == "audit" and "audit" not in studies:
        raise BestError(f"study {name!r} has no stage audit: its spec runs none ([stages.audit] trials = 0, the "
                        f"default), or it has not begun; set [stages.audit] trials (e.g. 20) and run `tuner study` "
                        f"again, or choose --stage lr or shape")
    if not bests:
        where = f"stage '{stage}'" if stage else "stage 'lr' or 'shape'"
        raise BestError(f"study {name!r}: no complete trial in {where} yet; run "
                        f"`tuner study` to the end (or until a trial completes), then again `tuner best`")
    # Shape first: it wins a tie. Scores of a study that maximizes count the highest best.
    stage_name = min(bests, key=lambda s: loss_like(bests[s].value, direction_of(studies[s])))  # type: ignore[arg-type]
    best, study = bests[stage_name], studies[stage_name]
    chosen = chosen_words(stage_name, bests, lr_names, asked=stage is not None)
    settings = study.user_attrs.get(SETTINGS_ATTR)
    if settings is None:
        raise BestError(f"study {name!r}: stage '{stage_name}' has no stored settings; was it made by tuner?")
    # Fields stored before they existed come back at the value they had then, not today's default.
    stored = {key: value for key, value in _without_none(with_added_fields(settings)).items() if key != "identity"}
    spec_path = study.user_attrs.get(SPEC_PATH_ATTR, "")
    spec = spec_from_dict({**stored, "name": name}, source=spec_path)
    if stage_name == "shape":
        lr = best.user_attrs.get(LR_ATTR, study.user_attrs.get(LR_ATTR))
        return spec, shape_stage(spec, float(lr), moves=stored_moves(study)), best, chosen, settings.get("identity")
    if stage_name == "audit":
        return spec, audit_stage(spec), best, chosen, settings.get("identity")
    return spec, lr_stage(spec, label=stage_name), best, chosen, settings.get("identity")


def chosen_words(stage_name: str, bests: dict[str, Any], lr_names: list[str], *, asked: bool) -> str:
    """Why trial ``bests[stage_name]`` is the one trained: asked for by ``--stage``, or the best of the stages,
    each stage's best named, and a tie said to be one (stage shape wins it).

    Example:
        >>> from types import SimpleNamespace as T
        >>> chosen_words("shape", {"lr": T(value=0.15, number=10), "shape": T(value=0.15, number=5)}, ["lr"], asked=False)
        "trial 5 of stage 'shape', the best of stages lr and shape: stage 'lr' 0.15 (trial 10), stage 'shape' 0.15 (trial 5); a tie with stage 'lr', which stage 'shape' wins"
    """
    best = bests[stage_name]
    if asked:
        return f"stage '{stage_name}', as asked (--stage): its best trial {best.number} ({best.value:.4g})"
    values = ", ".join(f"stage '{s}' {bests[s].value:.4g} (trial {bests[s].number})" for s in [*lr_names, "shape"] if s in bests)
    tied = [s for s in bests if s != stage_name and bests[s].value == best.value]
    tie = f"; a tie with stage {', '.join(repr(s) for s in tied)}, which stage '{stage_name}' wins" if tied else ""
    return f"trial {best.number} of stage '{stage_name}', the best of stages lr and shape: {values}{tie}"


def _without_none(table: dict[str, Any]) -> dict[str, Any]:
    """Stored settings hold unset optional fields as None (JSON null); a spec leaves them out."""
    return {k: _without_none(v) if isinstance(v, dict) else v for k, v in table.items() if v is not None}


def _plan_values(plan: Any) -> dict[str, Any]:
    return {"lr": plan.train.lr, "width": plan.width, "depth": plan.depth, "schedule": plan.train.schedule,
            "decay": plan.train.decay, "epochs": plan.train.epochs, "momentum": plan.train.momentum,
            "declared": plan.declared, "optimizer": plan.train.optimizer, "batch_size": plan.train.batch_size}


# Settings that act only for some data sets, optimizers or schedules: best.toml leaves them out
# elsewhere, so that it says what trained the winner and nothing that did not.
_DATA_ONLY_FOR = {
    "csv": ("path", "target", "task", "max_rows", "drop_constant_columns"),
    "adding": ("sequence_length", "samples"),
    "python": ("loader", "workers"),
}


def _applying(table: dict[str, Any], spec: StudySpec, schedule: str) -> dict[str, Any]:
    """The settings ``table`` without those that do nothing for this spec's data, optimizer and ``schedule``."""
    for data_name, keys in _DATA_ONLY_FOR.items():
        if spec.data.name != data_name:
            for key in keys:
                table["data"].pop(key, None)
    if spec.data.name == "csv" and spec.data.path:  # read beside best.toml otherwise: the study's own file, wherever run
        from tuner.inputs.csv_file import csv_path

        table["data"]["path"] = str(csv_path(spec.data, spec.source).resolve())
    if table["train"]["optimizer"] != "sgd":
        table["train"].pop("momentum", None)
        table["stages"]["shape"]["params"].pop("momentum", None)  # a declared momentum acts with SGD only
    if schedule != "step":
        table["stages"]["shape"].pop("step_every", None)
    table["stages"]["shape"].pop("first_rung", None)  # pruner "none": no rung
    table["stages"]["audit"] = {"trials": 0}  # off: nothing else of it acts
    return table


def best_spec_text(spec: StudySpec, name: str, stage: Stage, trial: FrozenTrial, *, plan_values: dict[str, Any],
                   refit: str, code_files: list[str] | None = None, path: str = "best/best.toml",
                   best_name: str | None = None) -> str:
    """``best.toml``: the stored settings with every searched value pinned to the winner's.

    Settings that do not act for its data, optimizer or schedule are left out; ``code_files``: the
    study's own modules copied beside it (named in its header); ``path``: where it is written, as
    the user gave the folder, for the command its header gives; ``best_name``: its study's name
    (default ``<name>-best``).
    """
    table = spec.settings()
    table = {"name": best_name or f"{name}-best", **table}
    lr = plan_values["lr"]
    table["stages"]["lr"].update(trials=1, lr_min=lr, lr_max=math.nextafter(lr, math.inf), lr_range="fixed")
    table["stages"]["shape"].update(
        trials=1,
        width=[plan_values["width"]] * 2,
        depth=[plan_values["depth"]] * 2,
        schedules=[plan_values["schedule"]],
        decay=[plan_values["decay"]] * 2,
        epochs=plan_values["epochs"],
        lr_scale=[1.0, 1.0],  # the winner's rate already holds its scale
        lr_transfer="none",  # and its move to its shape: the one trial trains at exactly that rate
        pruner="none",  # one trial, trained to the end
    )
    # Declared parameters: the winner's value, as the one value searched and as the default stage lr trains with.
    declared = {param.name: param for param in spec.stages.shape.params}
    table["stages"]["shape"]["params"] = {name: declared[name].pinned(value)
                                          for name, value in plan_values.get("declared", {}).items()}
    table["train"]["momentum"] = plan_values.get("momentum", table["train"]["momentum"])  # the audit samples it
    # A listed choice (train.optimizer = ["adam", "sgd"]): the winner's one value.
    table["train"].update({key: plan_values[key] for key in ("optimizer", "batch_size") if key in plan_values})
    table = _applying(table, spec, plan_values["schedule"])
    copied = ", ".join(code_files or ())
    tops = {Path(file).parts[0].removesuffix(".py") for file in code_files or ()}
    elsewhere = [f"{field} = {reference!r}" for field, reference in code_references(spec).items()
                 if reference.partition(":")[0].split(".")[0] not in tops]
    header = [
        f"# The best configuration of study '{name}': trial {trial.number} of stage '{stage.name}'"
        f" ({'your metric' if spec.train.metric and spec.train.objective == 'val_error' else spec.train.objective}"
        f" {trial.value:.6g}), written by `tuner best`.",
        "#",
        f"#   tuner study {path}   # (its path, from any folder) trains it again as the one trial of stage 'shape'",
        "#",
        *([f"# Your modules ({copied}) are copied beside it, as they were when the study ran: it imports those.",
           "#"] if copied else []),
        *([f"# Not copied (not a file beside the study's spec): {', '.join(elsewhere)}; it must import where",
           "# this runs, or be handed over from Python: tuner.run_study(path, model=..., loader=...).",
           "#"] if elsewhere else []),
        "# Every searched value is pinned: width, depth, schedule, decay and your declared parameters to",
        "# one value each, and the learning rate to [lr, the next float above lr] (the spec format needs",
        "# lr_min < lr_max), so stage 'lr' hands on that rate and stage 'shape' trains exactly the winner,",
        "# with the same seed and data.",
    ]
    if refit == "train+val":
        header.append("# (model.pt was refit on training + validation rows: a spec always holds validation out.)")
    text = "\n".join(header) + "\n\n" + _toml(table)
    spec_from_dict(tomllib.loads(text))  # what we write must read back as a valid spec
    return text


def _toml(table: dict[str, Any], prefix: str = "") -> str:
    """The spec's settings as TOML: scalars first, then each sub-table; None (a default) left out."""
    lines = [f"{key} = {_toml_value(value)}" for key, value in table.items()
             if value is not None and not isinstance(value, dict)]
    text = "\n".join(lines) + ("\n" if lines else "")
    for key, value in table.items():
        if isinstance(value, dict):
            inner = _toml(value, f"{prefix}{key}.")
            if not any(not isinstance(v, dict) for v in value.values()):
                text += inner  # a table of tables only ([stages]): its sub-tables carry the headers
            else:
                text += f"\n[{prefix}{key}]\n{inner}"
    return text


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: the same escapes
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")  # a bug: specs hold only the types above
