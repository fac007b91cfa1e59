"""A stage's Optuna study: created once with the spec's settings, refused when made otherwise.

Every stage is the Optuna study ``<name>/<stage>``, and what decides its trials' results (the spec's
settings, the identity of the user's code and data files) is stored on it when it is created. A
spec whose settings differ, a study of that name made by another tool, or a raised learning-rate
budget after the hand-off is refused with the reason, before anything is written; and of several
workers starting a new study at once exactly one creates it (see :func:`open_stage_study`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from tuner.errors import StudyMismatchError
from tuner.inputs.choices import variants
from tuner.inputs.spec import StudySpec, settings_hash
from tuner.inputs.usercode import UserCode, code_changes, from_main_fix, spec_folder
from tuner.storage import StorageError, resolve_url, write_study_attrs
from tuner.study import stored as contract
from tuner.study.stored import stage_study_name
from tuner.study.stages import Stage, describe_search, stage_settings

SETTINGS_WAIT_S = 10.0  # how long a worker that lost the race to create a stage waits for its settings


def with_value(spec: StudySpec, table: str, key: str, value: Any) -> StudySpec:
    """``spec`` with ``<table>.<key>`` set to ``value`` (``table``: ``data``, ``train``, ``stages.shape``...)."""
    head, _, rest = table.partition(".")
    part = getattr(spec, head)
    if rest:
        inner = dataclasses.replace(getattr(part, rest), **{key: value})
        return dataclasses.replace(spec, **{head: dataclasses.replace(part, **{rest: inner})})
    return dataclasses.replace(spec, **{head: dataclasses.replace(part, **{key: value})})


def with_stage_value(spec: StudySpec, stage: str, key: str, value: Any) -> StudySpec:
    """``spec`` with ``stages.<stage>.<key>`` set to ``value``."""
    return with_value(spec, f"stages.{stage}", key, value)


def _field(spec: StudySpec, table: str) -> Any:
    """The part of ``spec`` that ``table`` names (``spec.stages.shape`` for ``stages.shape``)."""
    part: Any = spec
    for name in table.split("."):
        part = getattr(part, name)
    return part


def with_stored_defaults(spec: StudySpec, storage: optuna.storages.BaseStorage,
                         note: Callable[[str], None] | None = None) -> StudySpec:
    """The spec, with each default changed since a stored stage was made put back to that stage's value.

    A study made by an earlier version resumes as it began, rather than being refused for a setting
    its user never wrote; a value the spec sets other than the default is compared as any other.
    ``note`` is told of each default put back.
    """
    return _put_back_defaults(spec, _stored_stages(spec, storage), note)


def _stored_stages(spec: StudySpec, storage: optuna.storages.BaseStorage) -> dict[str, optuna.Study]:
    """The spec's stage studies that exist in ``storage``, each loaded once, by stage name (a variant's
    stage lr by its label, ``lr[optimizer=adam]``).

    Refuses a study whose stored stage lr is of other choices than the spec lists (e.g. ``<name>/lr``
    stored, ``train.optimizer`` now a list): its trials would be left behind.
    """
    existing = set(optuna.get_all_study_names(storage))
    labels = [v.label for v in variants(spec)]
    names = {stage: stage_study_name(spec.name, stage) for stage in [*labels, "shape", "audit"]}
    others = sorted(stage for name in existing if (split := contract.split_stage_study_name(name))
                    and split[0] == spec.name and (stage := split[1]) not in names)
    if others:
        raise StudyMismatchError(
            f"study '{spec.name}' was made with stage {', '.join(repr(s) for s in others)}, and this spec runs "
            f"{', '.join(repr(s) for s in labels)} instead (train.optimizer or train.batch_size changed). Its trials "
            f"would be left behind: give the study a new name (name = \"...\" in the spec, or --name NEW), or put "
            f"the old values back to resume it"
        )
    return {stage: optuna.load_study(study_name=name, storage=storage) for stage, name in names.items() if name in existing}


def _put_back_defaults(spec: StudySpec, studies: dict[str, optuna.Study], note: Callable[[str], None] | None) -> StudySpec:
    """``spec`` with each field left at today's default put back to the past default its stored stage was made with."""
    for (table, key), legacies in contract.past_defaults().items():
        # A stage's own table is stored on that stage's study; data, model and train on every stage's.
        stage = table.removeprefix("stages.") if table.startswith("stages.") else next(iter(studies), None)
        if stage == "lr":  # with listed choices, the first variant's stage lr holds it
            stage = next((s for s in studies if contract.stage_kind(s) == "lr"), stage)
        study = studies.get(stage) if stage is not None else None
        settings = study.user_attrs.get(contract.SETTINGS_ATTR) if study is not None else None
        default = getattr(type(_field(spec, table))(), key)
        if getattr(_field(spec, table), key) != default:
            continue
        if settings is None:
            spec = _as_made_by_the_others(spec, table, key, default, studies, note)
            continue
        version = contract.stored_version(study.user_attrs)
        was = _normalise(contract.made_with(table, key, settings, version))
        if version is None:  # stored before versions: any past default may be the one it was made with
            legacy = next((value for value in legacies if _normalise(value) == was), None)
        else:  # only the default in force when it was made; a value written out stays a change
            legacy = contract.default_when_made(table, key, version)
            legacy = legacy if legacy is not None and _normalise(legacy) == was else None
        if legacy is not None and was != _normalise(default):
            spec = with_value(spec, table, key, legacy)
            if note is not None:
                note(f"stage '{stage}' was made when {table}.{key} defaulted to {was!r} "
                     f"(now {_normalise(default)!r}): it resumes with {was!r}")
    return spec


def _as_made_by_the_others(spec: StudySpec, table: str, key: str, default: Any, studies: dict[str, optuna.Study],
                           note: Callable[[str], None] | None) -> StudySpec:
    """A stage not started yet in a study whose other stages a known older contract made: that contract's default.

    A study interrupted in stage ``lr`` under contract 2 goes on as contract 2 made it, not as a
    mix of two contracts. (Studies from before versions were stored: today's defaults, as always.)
    """
    versions = {contract.stored_version(s.user_attrs) for s in studies.values() if contract.SETTINGS_ATTR in s.user_attrs}
    if len(versions) != 1 or None in versions:
        return spec
    (version,) = versions
    legacy = contract.default_when_made(table, key, version)
    if legacy is None or _normalise(legacy) == _normalise(default):
        return spec
    if note is not None:
        note(f"stage '{table.removeprefix('stages.')}' starts in a study made when {table}.{key} defaulted to "
             f"{_normalise(legacy)!r} (now {_normalise(default)!r}): it starts with {_normalise(legacy)!r}")
    return with_value(spec, table, key, legacy)


def check_stored_settings(spec: StudySpec, storage: optuna.storages.BaseStorage,
                          note: Callable[[str], None] | None = None, code: UserCode | None = None) -> StudySpec:
    """Refuse a spec whose stored stages were made with other settings, or by another tool.

    Also refuses a raised ``stages.lr.trials`` once the learning rate was handed on: the new lr
    trials would run, but stage ``shape`` would stay at the rate the old ones calibrated. Returns
    the spec to run: with the defaults changed since its stages were stored put back to theirs
    (:func:`with_stored_defaults`; ``note`` is told of each), the stored stages read once for both.
    """
    studies = _stored_stages(spec, storage)
    for study in studies.values():
        contract.check_version(study.study_name, study.user_attrs)
    spec = _put_back_defaults(spec, studies, note)
    specs = {variant.label: variant.spec for variant in variants(spec)}  # each stage lr compared with its own choice
    takeovers = [_check_settings(study, specs.get(stage, spec), contract.stage_kind(stage), code)
                 for stage, study in studies.items()]
    handed_off = studies["shape"].user_attrs.get(contract.LR_ATTR) if "shape" in studies else None
    for stage in specs if handed_off is not None else ():
        lr_attrs = studies[stage].user_attrs if stage in studies else {}
        calibrated_on = lr_attrs.get(contract.HANDOFF_TRIALS_ATTR, lr_attrs.get(contract.BUDGET_ATTR))
        if calibrated_on is not None and spec.stages.lr.trials > int(calibrated_on):
            rate = lr_attrs.get(contract.BEST_LR_ATTR, handed_off)
            raise StudyMismatchError(
                f"stage '{stage}' of '{spec.name}' handed lr = {float(rate):.3g} on to stage 'shape' after "
                f"{calibrated_on} trials; with stages.lr.trials = {spec.stages.lr.trials}, the new lr trials would "
                f"run but 'shape' would stay at the old rate. Put stages.lr.trials back to {calibrated_on} (or "
                f"lower) to resume, or run under a new name (--name NEW) to calibrate again"
            )
    for takeover in takeovers:  # written once every stage passed: a refused run leaves the stored settings as they were
        if takeover is not None:
            takeover.apply(note)
    return spec


def _made_elsewhere(study: optuna.Study, direction: str) -> bool:
    """A study without tuner's settings that holds something: trials, another direction than ``direction``, attributes."""
    if contract.SETTINGS_ATTR in study.user_attrs:
        return False
    # What an interrupted start of ours may have left.
    ours = {contract.LR_FIND_ATTR, contract.BUDGET_ATTR, contract.CONTRACT_VERSION_ATTR}
    return bool(study.get_trials(deepcopy=False)) or _directions(study) != direction or not set(study.user_attrs) <= ours


@dataclass(frozen=True)
class Takeover:
    """A stage study whose every trial failed, to go on with changed code or data: what to write, and the line saying so."""

    study: optuna.Study
    attrs: dict[str, Any]
    sentence: str

    def apply(self, note: Callable[[str], None] | None) -> None:
        write_study_attrs(self.study, self.attrs)
        if note is not None:
            note(self.sentence)


def _takeover(study: optuna.Study, stored: dict[str, Any], wanted: dict[str, Any], made: dict[str, Any] | None,
              changed: list[str]) -> Takeover | None:
    """The takeover of ``study`` by the spec's changed code or data, where allowed; None where not.

    Allowed where every trial of the study failed (none complete, pruned, running or waiting: nothing
    trained by the old code is kept in its results), only the identity of code or data changed, or the
    name of a function of the user's (any other setting is refused as ever), and the new identity is
    not one the study already left behind (a worker with an old copy of the code must not take the
    study back from the fixed one). What the old code measured on the study goes with it: the range test (``lr_find``) and the batching fallback.
    ``wanted``: the spec's settings, normalised; ``made``: their identity as made, to store.
    """
    trials = study.get_trials(deepcopy=False)
    identity = wanted.get("identity")
    if not changed or not identity or not trials or any(t.state != optuna.trial.TrialState.FAIL for t in trials):
        return None
    left = study.user_attrs.get(contract.LEFT_IDENTITIES_ATTR) or []
    settings = {**stored, "identity": made}  # the identity as the spec's settings hold it, before normalising
    for field in set(stored.get("identity") or {}) & set(identity):  # the name of a function may change too
        _copy_field(settings, wanted, field)  # (train.loop: mine:fit_bad -> mine:fit); not own code for tuner's
    if _normalise(settings) != wanted or identity in [_normalise(i) for i in left]:
        return None
    return Takeover(study, {contract.SETTINGS_ATTR: settings, contract.SETTINGS_HASH_ATTR: settings_hash(settings),
                            contract.LEFT_IDENTITIES_ATTR: [*left, stored.get("identity")],
                            contract.LR_FIND_ATTR: None, contract.FALLBACK_ATTR: None},
                    f"study '{study.study_name}' has no finished trial (its {len(trials)} trials failed): it goes on with "
                    f"the changed code or data ({'; '.join(changed)}); the failed trials stay, marked failed")


def _copy_field(settings: dict[str, Any], wanted: dict[str, Any], field: str) -> None:
    """Set the dotted ``field`` (``train.loop``) of ``settings`` to ``wanted``'s, or drop it where ``wanted`` has none."""
    *path, key = field.split(".")
    into, source = settings, wanted
    for part in path:
        if not isinstance(into.get(part), dict):
            return  # a field these settings do not hold as a table: left as it is (and compared as it is)
        into[part] = into = dict(into[part])  # a copy: the stored settings are not changed in place
        source = source.get(part) if isinstance(source, dict) else None
    if isinstance(source, dict) and key in source:
        into[key] = source[key]
    else:
        into.pop(key, None)


def _check_settings(study: optuna.Study, spec: StudySpec, stage: str, code: UserCode | None = None) -> Takeover | None:
    """Refuse ``study`` made with other settings, code or data than ``spec``'s (StudyMismatchError); a
    :class:`Takeover` where every trial failed and only the code or data changed, to apply once every stage passed."""
    stored = study.user_attrs.get(contract.SETTINGS_ATTR)
    name = study.study_name
    if stored is None and not _made_elsewhere(study, spec.train.direction):
        return  # an empty study an interrupted start of ours left: it is adopted when opened
    if stored is None:
        raise StudyMismatchError(
            f"study '{name}' exists and was not made by tuner; nothing was written to it. Give the study "
            f"a new name (name = \"...\" in the spec, or --name NEW), or use another storage"
        )
    # Each function identified the way its identity was stored (a study from before code-object hashes as then).
    made = stage_settings(spec, stage, code, stored_identity=stored.get("identity"))
    wanted = _normalise(made)
    if "identity" not in stored:
        wanted.pop("identity", None)  # stored before tuner kept the identity of code and CSV files
    from_main = _left_main(stored.get("identity") or {}, wanted.get("identity") or {})
    if from_main:
        raise StudyMismatchError(f"study '{name}' was run with {from_main}")
    changed = code_changes(stored.get("identity") or {}, wanted.get("identity") or {}, spec, code)
    takeover = _takeover(study, stored, wanted, made.get("identity"), changed)
    if takeover is not None:
        return takeover
    if changed:
        raise StudyMismatchError(
            f"study '{name}' was made with other code or data: {'; '.join(changed)}. Its trials would be mixed "
            f"with different ones: give the study a new name (name = \"...\" in the spec, or --name NEW), or "
            f"put the old version back to resume it."
        )
    if _normalise(stored) != wanted:
        # Fields left out at their added value read as that value: "'minimize' -> 'maximize'", not "None -> ...".
        changes = "; ".join(_differences(contract.with_added_fields(stored), contract.with_added_fields(wanted))) \
            or "settings differ"
        raise StudyMismatchError(
            f"study '{name}' was made with other search settings ({changes}). Its trials would be "
            f"mixed with different ones: give the study a new name (name = \"...\" in the spec, or "
            f"--name NEW), or put the old settings back to resume it."
        )


def _left_main(stored: dict[str, Any], wanted: dict[str, Any]) -> str:
    """Where a field stored as a function of a script's or notebook's ``__main__`` now names other code
    (or none), e.g. the study resumed from the command line: that field and what to do (empty: none such)."""
    for field in sorted(stored):
        old, new = stored[field] or {}, wanted.get(field) or {}
        if old.get("module") == "__main__" and new.get("module") != "__main__":
            reference = f"__main__:{old.get('function')}"
            return f"{field} = {reference!r}: {from_main_fix(field, reference)}"
    return ""


def _normalise(settings: Any) -> Any:
    return json.loads(json.dumps(settings, sort_keys=True))


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found: list[str] = []
        for key in sorted(set(old) | set(new)):
            found += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return found
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def storage_error_of(spec: StudySpec, storage: str | None, error: StorageError) -> StorageError:
    """``error`` of opening the study's storage, naming the spec's field ``storage`` where the URL came from it."""
    if storage or not spec.storage:
        return error
    return StorageError(f"{spec.source or spec.name}: field 'storage': {error}")


def storage_of_study(spec: StudySpec, storage: str | None = None) -> str:
    """The storage URL a study runs on, a SQLite path made absolute once.

    ``storage`` (the ``--storage`` option) wins, read from the working folder; else the spec's own
    ``storage``, whose relative SQLite path is read beside the spec, as ``data.path`` is; else
    ``sqlite:///tuner.db`` in the working folder.
    """
    if storage:
        return resolve_url(storage)
    if not spec.storage:
        return resolve_url(None)
    beside = resolve_url(spec.storage, relative_to=spec_folder(spec.source) or Path.cwd())
    from_cwd = resolve_url(spec.storage)
    if beside != from_cwd and _sqlite_file(from_cwd).is_file() and not _sqlite_file(beside).is_file():
        # tuner before 0.2 read it from the working folder: never start a second study beside the first.
        raise StorageError(
            f"{spec.source}: field 'storage' = {spec.storage!r}: a relative SQLite path is read beside the spec, "
            f"as {_sqlite_file(beside)}; that file does not exist, but {_sqlite_file(from_cwd)} (from the working "
            f"folder, where earlier versions put it) does: move that file beside the spec, or give an absolute path"
        )
    return beside


def _sqlite_file(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///").partition("?")[0])


def open_stage_study(spec: StudySpec, stage: Stage, storage: optuna.storages.BaseStorage,
                     code: UserCode | None = None) -> optuna.Study:
    """The stage's study, created with the spec's settings if new; refused if made otherwise.

    Of several workers that start a new study at once, exactly one creates it and writes its
    settings; the others wait for those and compare, so that two different specs under one name
    never mix their trials, whatever the timing. ``code``: the spec's own code as resolved, whose
    identity joins the settings (default: read from the spec's files).
    """
    name = stage.study_name(spec.name)
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction=spec.train.direction)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
        waited = time.monotonic()
        while contract.SETTINGS_ATTR not in study.user_attrs and not study.get_trials(deepcopy=False):
            if time.monotonic() - waited > SETTINGS_WAIT_S:
                break  # its creator died before writing them: take it over below
            time.sleep(0.05)
        if contract.SETTINGS_ATTR in study.user_attrs or _made_elsewhere(study, spec.train.direction):
            takeover = _check_settings(study, spec, stage.kind, code)
            if takeover is not None:  # check_stored_settings takes a study over first; a study made meanwhile, here
                takeover.apply(None)
            return study
    settings = stage_settings(spec, stage.kind, code)
    # In one commit where the storage allows: a worker waiting for the settings sees all of them at once.
    write_study_attrs(study, {
        contract.SETTINGS_ATTR: settings,
        contract.SETTINGS_HASH_ATTR: settings_hash(settings),
        contract.SEARCH_ATTR: describe_search(stage),
        contract.CONTRACT_VERSION_ATTR: _contract_of(spec, stage.kind, storage),
        # A user's loop reports its own objective: say so, rather than name one it may not compute.
        contract.OBJECTIVE_ATTR: "loop" if spec.train.loop else spec.train.objective,
        **({contract.SPEC_PATH_ATTR: str(Path(spec.source).resolve())} if spec.source else {}),
    })
    return study


def _contract_of(spec: StudySpec, stage: str, storage: optuna.storages.BaseStorage) -> int:
    """The contract version a new stage study is made under: its study's, where stage lr was made under an older one.

    A later stage started after an upgrade takes the defaults its study was made with
    (:func:`_as_made_by_the_others`), and says so, so that its resume reads them back the same way.
    """
    first = stage_study_name(spec.name, variants(spec)[0].label)
    if stage == "lr" or first not in optuna.get_all_study_names(storage):
        return contract.CONTRACT_VERSION
    version = contract.stored_version(optuna.load_study(study_name=first, storage=storage).user_attrs)
    return contract.CONTRACT_VERSION if version is None else min(version, contract.CONTRACT_VERSION)


def _directions(study: optuna.Study) -> str:
    return ",".join(d.name.lower() for d in study.directions)
