"""A tiny staged study with an audit stage, built once per test session and shared by test files.

Pytest shares a session fixture across files only through conftest.py; this cache does the same
from a module of its own, so the study (about 20 trials on wine) is trained once.
"""

from __future__ import annotations

import functools
from pathlib import Path

import tuner
from tuner.study.stage_studies import with_value
from tuner.study.stored import past_defaults

AUDITED_SPEC = {
    "name": "audited",
    "seed": 0,
    "data": {"name": "wine"},
    "model": {"width": 8, "depth": 1},
    "train": {"epochs": 2, "batch_size": 32},
    # lr and shape stay below the importance minimum (10 complete trials): they must be reported skipped.
    "stages": {
        "lr": {"trials": 4, "lr_min": 1e-3, "lr_max": 0.3},
        "shape": {"trials": 2, "width": [4, 16], "depth": [1, 2]},
        "audit": {"trials": 12},
    },
}


@functools.cache
def audited_study(base: Path) -> tuple[str, tuner.StudyResult]:
    """(storage URL, result) of the tiny audited study, trained on first use under ``base``
    (pass ``tmp_path_factory.getbasetemp()``: the same folder for the whole session)."""
    folder = base / "audited"
    folder.mkdir(exist_ok=True)
    storage = f"sqlite:///{folder / 'audited.db'}"
    spec = tuner.spec_from_dict(AUDITED_SPEC)
    return storage, tuner.run_study(spec, storage=storage, device="cpu")


def as_stored_before_versions(storage: str, name: str) -> None:
    """Make the stage studies of ``name`` look as a release before contract versions stored them."""
    import optuna

    for study_name in optuna.get_all_study_names(storage):
        if study_name.startswith(f"{name}/"):
            optuna.load_study(study_name=study_name, storage=storage).set_user_attr("contract_version", None)


def before_the_changed_defaults(spec: tuner.StudySpec) -> tuner.StudySpec:
    """``spec`` with every default changed since studies were first stored at the value they were made with."""
    for (table, key), legacies in past_defaults().items():
        spec = with_value(spec, table, key, legacies[0])
    return spec
