"""The public contract that a change of the package's layout must keep (issue 16).

What a user or a stored study depends on, pinned against today's code: the CLI's commands, options
and exit codes; the columns of every CSV file; the study names ``<name>/<stage>`` and the attribute
keys stored on studies and trials; the ``settings_hash`` of every bundled spec (a stored study must
keep matching its spec); the names in ``tuner.__all__``; and a database made by the code of before,
``tests/data/contract_v0.db``, which must resume without training anything.

Where growth is harmless (a new option, attribute or public name) the tests ask for a superset;
where a change would break a stored study or a user's script they ask for equality.

``tests/data/contract_v0.db`` was made at commit 6f4fe42 with
``tuner study tests/data/contract_v0.toml --storage sqlite:///tests/data/contract_v0.db --device cpu``,
then checkpointed, switched to ``journal_mode=DELETE`` and vacuumed so that it is one small file.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib
import inspect
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
import tomllib
import torch
import typer
from optuna.trial import TrialState
from typer.testing import CliRunner

import tuner
import tuner.cli
from tuner.inputs.choices import variants
from tuner.inputs.families import unregister_model
from tuner.inputs.spec import load_spec, settings_hash
from tuner.study.stage_studies import with_stored_defaults

from _tiny_study import before_the_changed_defaults

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
V0_SPEC = DATA / "contract_v0.toml"
V0_DB = DATA / "contract_v0.db"
STAGES = ("lr", "shape", "audit")


def _stage_settings() -> Callable[[Any, str], dict[str, Any]]:
    """``stage_settings`` wherever the layout puts it: today ``tuner.study.stages``, after issue 16 maybe ``tuner.study.results``."""
    for module in ("tuner.study.stages", "tuner.study.results"):
        try:
            return getattr(importlib.import_module(module), "stage_settings")
        except (ImportError, AttributeError):
            continue
    raise AssertionError("stage_settings is neither in tuner.study.stages nor in tuner.study.results")


def _env() -> dict[str, str]:
    # The code of this checkout, not whatever tuner is installed; one thread: a busy 2-core machine.
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _tuner(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``tuner ARGS`` as its own process, the way a user runs it."""
    return subprocess.run([sys.executable, "-m", "tuner.cli", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=300)


def _invoke(*args: str) -> Any:
    """``tuner ARGS`` in this process (fast); the result's ``exit_code`` is what the process would return."""
    # A wide terminal: help text folded at 80 columns would cut long option names apart.
    result = CliRunner().invoke(tuner.cli.app, list(args), env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return result


def _header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        return next(csv.reader(handle))


# --- 1. The CLI: commands, their options and arguments, exit codes -----------------------------------------

STORAGE = {"--storage", "-s", "--storage-password-file"}
# command -> (option names, positional arguments in order); None is `tuner` itself.
CLI = {
    None: (set(), []),
    "study": (STORAGE | {"--device", "--name"}, ["spec"]),
    "importance": (STORAGE | {"--out", "-o"}, ["name"]),
    "export": (STORAGE | {"--out", "-o"}, ["name"]),
    "report": (STORAGE | {"--out", "-o"}, ["name"]),
    "dashboard": (STORAGE | {"--port"}, []),
    "lr-find": ({"--out", "-o", "--device", "--steps", "--start-lr", "--end-lr"}, ["spec"]),
}
# (command, option) -> default, where a user relies on it without writing the option.
DEFAULTS = {
    ("study", "--device"): "auto",
    ("lr-find", "--device"): "auto",
    ("lr-find", "--steps"): 100,
    ("lr-find", "--start-lr"): 1e-7,
    ("lr-find", "--end-lr"): 10.0,
    ("dashboard", "--port"): 8080,
    ("importance", "--out"): Path("."),
    ("export", "--out"): Path("."),
    ("lr-find", "--out"): Path("."),
    ("report", "--out"): None,  # NAME-report
}


# Typer ships its own copy of click (typer._click) in some versions: parameters are told apart by
# click's param_type_name, not by isinstance checks against the click package.
def _command(name: str | None) -> Any:
    group = typer.main.get_command(tuner.cli.app)
    return group if name is None else group.commands[name]


def _options(command: Any) -> dict[str, Any]:
    return {opt: p for p in command.params if p.param_type_name == "option" for opt in (*p.opts, *p.secondary_opts)}


def test_the_console_script_is_the_typer_app_with_every_command() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attribute = scripts["tuner"].partition(":")
    assert callable(getattr(importlib.import_module(module), attribute))
    assert set(_command(None).commands) >= {name for name in CLI if name is not None}


@pytest.mark.parametrize("name", list(CLI), ids=lambda n: n or "tuner")
def test_each_command_keeps_its_options_and_arguments(name: str | None) -> None:
    command = _command(name)
    options, arguments = CLI[name]
    missing = options - set(_options(command))
    assert not missing, f"tuner {name or ''}: options gone: {sorted(missing)}"
    assert [p.name for p in command.params if p.param_type_name == "argument"] == arguments
    for (owner, option), default in DEFAULTS.items():
        if owner == name:
            assert _options(command)[option].default == default, (name, option)
    if "--storage" in options:
        # Kept from the environment, as the README tells a cluster to set it once.
        assert _options(command)["--storage"].envvar == "TUNER_STORAGE"


@pytest.mark.parametrize("name", list(CLI), ids=lambda n: n or "tuner")
def test_each_command_help_exits_0_and_names_its_options(name: str | None) -> None:
    result = _invoke(*([name] if name else []), "--help")
    assert result.exit_code == 0, result.output
    for option in CLI[name][0] | {"--help"}:
        if option.startswith("--"):  # a short one is printed beside its long one
            assert option in result.output, (name, option)


def test_python_m_tuner_cli_is_the_command_line(tmp_path: Path) -> None:
    # The process itself, not CliRunner: the exit code a shell sees.
    done = _tuner("study", "no-such-spec.toml", "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no-such-spec.toml" in done.stderr and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def _stored_copy(db: Path, copy: Path) -> str:
    """The URL of ``copy``, a copy of a committed stored study: a test must never write to the committed file."""
    shutil.copyfile(db, copy)
    return f"sqlite:///{copy}"


@pytest.fixture
def v0_copy(tmp_path: Path) -> str:
    """A copy of the stored old study (a test must never write to the committed file)."""
    return _stored_copy(V0_DB, tmp_path / "v0.db")


BAD_SPEC = """
name = "bad"
[data]
name = "wine"
[train]
epochs = 1
batchsize = 8
"""


@pytest.mark.parametrize("args", [
    pytest.param(["study", "{tmp}/missing.toml", "-s", "sqlite:///{tmp}/absent.db"], id="study-missing-spec"),
    pytest.param(["study", "{tmp}/bad.toml", "-s", "sqlite:///{tmp}/absent.db"], id="study-unknown-key"),
    pytest.param(["study", str(V0_SPEC), "-s", "sqlite:///{tmp}/absent.db", "--device", "tpu"], id="study-bad-device"),
    pytest.param(["study", str(V0_SPEC), "-s", "sqlite:///{tmp}/absent.db", "--name", "a/b"], id="study-bad-name"),
    pytest.param(["study", str(V0_SPEC), "-s", "sqlite:///{tmp}/absent.db", "--no-such-option"], id="study-unknown-option"),
    pytest.param(["no-such-command"], id="unknown-command"),
    pytest.param(["lr-find", "{tmp}/missing.toml"], id="lr-find-missing-spec"),
    pytest.param(["lr-find", str(V0_SPEC), "--start-lr", "1", "--end-lr", "0.1"], id="lr-find-bad-range"),
    pytest.param(["lr-find", str(V0_SPEC), "--steps", "2"], id="lr-find-too-few-steps"),
    pytest.param(["dashboard", "--port", "0"], id="dashboard-bad-port"),
    pytest.param(["importance", "nobody", "--storage", "{v0}", "-o", "{tmp}/out"], id="importance-unknown-study"),
    pytest.param(["export", "nobody", "--storage", "{v0}", "-o", "{tmp}/out"], id="export-unknown-study"),
    pytest.param(["report", "nobody", "--storage", "{v0}", "-o", "{tmp}/out"], id="report-unknown-study"),
    pytest.param(["importance", "contract", "--storage", "sqlite:///{tmp}/absent.db", "-o", "{tmp}/out"],
                 id="importance-missing-database"),
    pytest.param(["export", "contract", "--storage", "sqlite:///{tmp}/absent.db", "-o", "{tmp}/out"],
                 id="export-missing-database"),
    pytest.param(["report", "contract", "--storage", "sqlite:///{tmp}/absent.db", "-o", "{tmp}/out"],
                 id="report-missing-database"),
])
def test_bad_input_exits_2(tmp_path: Path, v0_copy: str, args: list[str]) -> None:
    (tmp_path / "bad.toml").write_text(BAD_SPEC)
    result = _invoke(*(a.format(tmp=tmp_path, v0=v0_copy) for a in args), *(["--device", "cpu"] if args[0] == "study" and "--device" not in args else []))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "absent.db").exists()  # bad input writes nothing; reading commands never create a database


def test_ctrl_c_during_a_study_exits_130_and_names_the_command_that_resumes(tmp_path: Path) -> None:
    # No signal needed: a model family (registered through the public API) whose builder is
    # interrupted stands for a Ctrl-C in the middle of a trial.
    def interrupted(n_features: int, n_outputs: int, width: int, depth: int) -> torch.nn.Module:
        if torch.empty(0).is_meta:  # counted, not trained (the size check before a study starts)
            return torch.nn.Linear(n_features, n_outputs)
        raise KeyboardInterrupt

    tuner.register_model("contract_interrupted", interrupted)
    spec = tmp_path / "ctrl_c.toml"
    spec.write_text('name = "ctrl_c"\n[data]\nname = "wine"\n[model]\nfamily = "contract_interrupted"\n'
                    "[train]\nepochs = 1\n[stages.lr]\ntrials = 2\n[stages.shape]\ntrials = 1\n")
    url = f"sqlite:///{tmp_path / 'ctrl_c.db'}"
    try:
        result = _invoke("study", str(spec), "--storage", url, "--device", "cpu")
    finally:
        unregister_model("contract_interrupted")
    assert result.exit_code == 130, result.output
    assert "tuner study" in result.stderr
    trials = optuna.load_study(study_name="ctrl_c/lr", storage=url).trials
    assert trials and all(t.state == TrialState.FAIL for t in trials)  # none left RUNNING


# --- 2-3. A tiny study through the CLI: exit 0, stored names and attributes, CSV columns ---------------------

TINY = """
name = "contract_tiny"
seed = 0
[data]
name = "wine"
[model]
width = 8
depth = 1
[train]
epochs = 2
batch_size = 32
[stages.lr]
trials = 10          # MIN_COMPLETE_TRIALS: importance.csv gets rows, not only its header
lr_min = 1e-3
lr_max = 0.3
lr_range = "auto"    # stores the range test's record on <name>/lr
[stages.shape]
trials = 3
width = [4, 16]
depth = [1, 2]
[stages.audit]
trials = 2
"""


@dataclass(frozen=True)
class Tiny:
    spec: Path
    storage: str
    exit_code: int
    output: str


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tiny]:
    folder = tmp_path_factory.mktemp("contract_tiny")
    spec = folder / "tiny.toml"
    spec.write_text(TINY)
    storage = f"sqlite:///{folder / 'tiny.db'}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module scope: conftest's per-test setting is not in force yet
    try:
        result = _invoke("study", str(spec), "--storage", storage, "--device", "cpu")
    finally:
        torch.set_num_threads(threads)
    yield Tiny(spec, storage, result.exit_code, result.output)


STUDY_ATTRS = {"settings", "settings_hash", "search", "objective", "budget", "contract_version"}
LR_STUDY_ATTRS = STUDY_ATTRS | {"best_lr", "best_trial", "lr_find", "handoff"}  # handoff: since contract 3
SHAPE_STUDY_ATTRS = STUDY_ATTRS | {"lr", "lr_transfer"}  # lr_transfer: since contract 7 (the rule its shapes start by)
AUDIT_STUDY_ATTRS = STUDY_ATTRS | {
    "low_interaction_held", "lr_main_effect", "lr_largest_interaction", "lr_largest_interaction_with",
    "interaction_max_ratio", "verdict_n_trials", "verdict",
    "verdict_lr_basis",  # how lr was read: "", "as stage lr calibrates it: ..." (the rule) or "as trained: ..." (issue 21)
}
TRIAL_ATTRS = {
    "learning_curve", "train_loss_curve", "train_seconds", "device", "diverged", "n_params", "epochs_done",
    "batched_with", "worker", "worker_started",
}
# Each stage's fixed settings are stored on its trials too (the report reads the shape trials' lr).
# lr_move, trained_lr: a shape trial's start as a multiple of lr (contract 7), the rate it trained at.
STAGE_TRIAL_ATTRS = {"lr": TRIAL_ATTRS | {"width", "depth", "schedule"}, "shape": TRIAL_ATTRS | {"lr", "lr_move", "trained_lr"},
                     "audit": TRIAL_ATTRS}
STAGE_PARAMS = {
    "lr": {"lr"},
    "shape": {"width", "depth", "schedule", "decay", "lr_scale"},  # lr_scale: since issue 13 (stages.shape.lr_scale)
    "audit": {"lr", "width", "depth", "schedule", "decay", "one_minus_momentum"},  # sgd: momentum too
}


def test_a_tiny_study_exits_0_and_prints_its_stages(tiny: Tiny) -> None:
    assert tiny.exit_code == 0, tiny.output
    for stage in STAGES:
        assert stage in tiny.output


def test_each_stage_is_the_optuna_study_name_slash_stage(tiny: Tiny) -> None:
    assert set(optuna.get_all_study_names(tiny.storage)) == {f"contract_tiny/{s}" for s in STAGES}
    for stage, budget in (("lr", 10), ("shape", 3), ("audit", 2)):
        study = optuna.load_study(study_name=f"contract_tiny/{stage}", storage=tiny.storage)
        assert study.direction == optuna.study.StudyDirection.MINIMIZE
        assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials) == budget


@pytest.mark.parametrize(("stage", "keys"), [("lr", LR_STUDY_ATTRS), ("shape", SHAPE_STUDY_ATTRS), ("audit", AUDIT_STUDY_ATTRS)])
def test_stage_studies_keep_their_attribute_keys(tiny: Tiny, stage: str, keys: set[str]) -> None:
    attrs = optuna.load_study(study_name=f"contract_tiny/{stage}", storage=tiny.storage).user_attrs
    assert keys <= set(attrs), f"gone: {sorted(keys - set(attrs))}"
    assert attrs["settings_hash"] == settings_hash(attrs["settings"])
    # As stored (JSON: tuples come back as lists) and as this code computes them for the same spec.
    assert attrs["settings"] == json.loads(json.dumps(_stage_settings()(load_spec(tiny.spec), stage)))
    assert {"sampler", "pruner", "optuna_version"} <= set(attrs["search"])
    assert attrs["objective"] == "val_error"
    if stage == "lr":
        assert {"lrs", "losses", "suggestion", "problem", "bounds"} <= set(attrs["lr_find"])  # read back on resume
    if stage == "shape":
        lr = optuna.load_study(study_name="contract_tiny/lr", storage=tiny.storage).user_attrs["best_lr"]
        assert attrs["lr"] == lr


@pytest.mark.parametrize("stage", STAGES)
def test_trials_keep_their_attribute_keys_and_params(tiny: Tiny, stage: str) -> None:
    trials = optuna.load_study(study_name=f"contract_tiny/{stage}", storage=tiny.storage).trials
    assert trials
    for trial in trials:
        assert STAGE_TRIAL_ATTRS[stage] <= set(trial.user_attrs), f"trial {trial.number}: gone: {sorted(STAGE_TRIAL_ATTRS[stage] - set(trial.user_attrs))}"
        # decay only where the schedule decays (stages.shape.conditional, since contract version 4)
        expected = STAGE_PARAMS[stage] - ({"decay"} if trial.params.get("schedule") == "constant" else set())
        assert set(trial.params) == expected
        assert len(trial.user_attrs["learning_curve"]) == trial.user_attrs["epochs_done"]


IMPORTANCE_COLUMNS = ["stage", "evaluator", "param", "param_b", "importance", "std"]  # its first six, in this order
IMPORTANCE_APPENDED = ["basis", "trials"]  # appended after them (issue 21): "complete" or "epoch N", and a count


def _importance_header_holds(header: list[str]) -> bool:
    """importance.csv keeps its first six columns in order; later columns are appended after them."""
    return header[:6] == IMPORTANCE_COLUMNS and header[6:8] == IMPORTANCE_APPENDED
TRIAL_COLUMNS = ["stage", "number", "state", "value", "datetime_start", "datetime_complete", "duration_s"]
CURVE_COLUMNS = ["stage", "trial", "epoch", "value"]


def test_importance_csv_columns(tiny: Tiny, tmp_path: Path) -> None:
    result = _invoke("importance", "contract_tiny", "--storage", tiny.storage, "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    with (tmp_path / "importance.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert _importance_header_holds(_header(tmp_path / "importance.csv"))
    assert {row["stage"] for row in rows} == {"lr"}  # the only stage with enough trials


def test_export_csv_columns(tiny: Tiny, tmp_path: Path) -> None:
    result = _invoke("export", "contract_tiny", "-s", tiny.storage, "-o", str(tmp_path))
    assert result.exit_code == 0, result.output
    header = _header(tmp_path / "trials.csv")
    assert header[:len(TRIAL_COLUMNS)] == TRIAL_COLUMNS
    params = [c for c in header if c.startswith("params_")]
    attrs = [c for c in header if c.startswith("user_attrs_")]
    assert header == TRIAL_COLUMNS + params + attrs  # fixed columns, then params, then attributes
    assert params == sorted(f"params_{p}" for p in set().union(*STAGE_PARAMS.values()))
    assert attrs == sorted(attrs)
    assert {f"user_attrs_{key}" for key in TRIAL_ATTRS - {"learning_curve"}} <= set(attrs)
    assert "user_attrs_learning_curve" not in attrs  # it is curves.csv
    assert _header(tmp_path / "curves.csv") == CURVE_COLUMNS


def test_lr_find_csv_columns(tiny: Tiny, tmp_path: Path) -> None:
    result = _invoke("lr-find", str(tiny.spec), "--out", str(tmp_path), "--device", "cpu", "--steps", "60")
    assert result.exit_code == 0, result.output
    assert _header(tmp_path / "lr_find.csv") == ["lr", "loss", "smoothed"]
    assert (tmp_path / "lr_find.png").exists()


# --- 4. settings_hash of every bundled spec: stored studies must keep matching them ------------------------

SETTINGS_HASHES = {
    "adding_lstm": {"lr": "eedc37cd828f4632", "shape": "cf49cbdc86cc62b4", "audit": "a63238b24c218f6d"},
    "breast_cancer": {"lr": "f0d46e1f5be0b14b", "shape": "a3f7970fa0ecb0c0", "audit": "895fd208b1e55292"},
    "diabetes": {"lr": "20928d456abafc1b", "shape": "990ca8ab4f8f721d", "audit": "ad12583c61d37813"},
    "digits_lstm": {"lr": "1b57e411254530a5", "shape": "a05edfad7e87b954", "audit": "ad9d29295c3238e1"},
    "digits_cnn": {"lr": "011ba054c688ab08", "shape": "6c3eda5e7d626dcb", "audit": "1e3b25f7437e43d0"},
    "digits_optimizers": {"lr[optimizer=adam]": "48484080aff43bcc", "lr[optimizer=sgd]": "ba218460b83af5e1", "shape": "5f5e6fb0253a041a",
                          "audit": "29bccd2b8cb81bbf"},
    "digits_params": {"lr": "d7624ccf1564856f", "shape": "af05ff0c3a8e995d", "audit": "67d9657b747f62c9"},
    "quickstart": {"lr": "34bd8a240539a656", "shape": "9768dd9746091ebe", "audit": "d7e948d8e6439b14"},
    "wine": {"lr": "ffd8d53c04eb8f4b", "shape": "0f4445b8b33403de", "audit": "6989b3613cdf04b7"},
    "contract_v0": {"lr": "1f9870cea7685a7e", "shape": "d27b107b7162a3b9", "audit": "eeda5f41a8b9a330"},
}


def test_every_bundled_spec_is_pinned() -> None:
    # A new studies/*.toml gets its hashes added here; one that disappears is a user's study gone.
    assert {p.stem for p in (REPO / "studies").glob("*.toml")} == set(SETTINGS_HASHES) - {"contract_v0"}


@pytest.mark.parametrize("spec_name", sorted(SETTINGS_HASHES))
def test_settings_hash_of_each_stage_is_unchanged(spec_name: str) -> None:
    # With the defaults changed since (issue 13) put back, as a stored study resumes with them: the
    # settings these specs stored then are computed exactly again.
    path = V0_SPEC if spec_name == "contract_v0" else REPO / "studies" / f"{spec_name}.toml"
    spec = before_the_changed_defaults(load_spec(path))
    stage_settings = _stage_settings()
    # A stage lr per listed choice (digits_optimizers: lr[optimizer=adam], ...), each with its variant's settings.
    hashes = {variant.label: settings_hash(stage_settings(variant.spec, "lr")) for variant in variants(spec)}
    hashes |= {stage: settings_hash(stage_settings(spec, stage)) for stage in ("shape", "audit")}
    assert hashes == SETTINGS_HASHES[spec_name]


# --- 5. The names tuner exports -----------------------------------------------------------------------------

ALL = {
    "Reporter", "SpecError", "StageSummary", "StorageError", "StudyMismatchError", "StudyResult", "StudySpec",
    "TunerError", "audit_verdict", "importance_table", "load_spec", "load_stage_studies", "load_stage_trials",
    "lr_find", "open_storage", "register_model", "run_study", "spec_from_dict", "write_export", "write_importance",
    "write_lr_find", "write_report",
}


def test_every_public_name_still_imports() -> None:
    assert ALL <= set(tuner.__all__), f"gone from tuner.__all__: {sorted(ALL - set(tuner.__all__))}"
    for name in tuner.__all__:
        assert getattr(tuner, name) is not None, name
    assert issubclass(tuner.StudyMismatchError, tuner.TunerError)
    assert issubclass(tuner.SpecError, ValueError)
    # What a user's tab completion lists: each public name once (SpecError, loaded above, was listed twice), and
    # none of __init__'s own imports.
    assert [name for name in dir(tuner) if not name.startswith("__")] == sorted(tuner.__all__)


# Parameters in today's order (a caller may pass them by position); new ones may follow.
SIGNATURES = {
    "audit_verdict": ["name", "storage"],
    "importance_table": ["name", "storage"],
    "load_model": ["folder", "model"],
    "load_spec": ["path"],
    "load_stage_studies": ["name", "storage"],
    "load_stage_trials": ["name", "storage"],
    "lr_find": ["spec", "start_lr", "end_lr", "steps", "device", "data"],
    "open_storage": ["url"],
    "register_model": ["name", "factory", "sequence"],
    "run_study": ["spec", "storage", "device", "reporter"],
    "spec_from_dict": ["table", "source"],
    # Issue 15 gave these one keyword order (out=, storage=); the old positional calls still work,
    # with a DeprecationWarning (tests/test_report.py pins both ways).
    "write_export": ["name", "out", "storage"],
    "write_importance": ["name", "out", "storage"],
    "write_lr_find": ["result", "out", "title"],
    "write_report": ["name", "storage", "out"],
}
FIELDS = {
    "StageSummary": {"stage", "study_name", "budget", "n_complete", "n_pruned", "n_diverged", "n_failed", "best_value",
                     "best_params", "wall_seconds", "train_seconds"},
    "StudyResult": {"name", "storage", "best_lr", "stages", "audit", "best_value"},
    "StudySpec": {"name", "seed", "storage", "data", "model", "train", "stages", "source", "settings"},
    "Reporter": {"stage_started", "trial_finished", "waiting", "stage_finished", "message"},
}


def _public(name: str) -> Any:
    value = getattr(tuner, name)
    # Today `tuner.training.lr_find` is the submodule, not the function, once `tuner.training.lr_find` (the module)
    # was imported by name (the CLI's lr-find does): the import system overwrites the package's
    # attribute. Not pinned either way; the function is what `__all__` promises.
    return getattr(value, name) if inspect.ismodule(value) else value


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_public_functions_keep_their_parameters(name: str) -> None:
    parameters = list(inspect.signature(_public(name)).parameters)
    assert parameters[:len(SIGNATURES[name])] == SIGNATURES[name]


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_public_results_keep_their_fields(name: str) -> None:
    cls = _public(name)
    names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    names |= {n for n in dir(cls) if not n.startswith("_")}
    assert FIELDS[name] <= names, f"gone: {sorted(FIELDS[name] - names)}"


# --- 6. A study stored by the code of before resumes -------------------------------------------------------

def _finished_per_stage(url: str) -> dict[str, list[tuple[int, str, float | None]]]:
    return {
        name: [(t.number, t.state.name, t.value) for t in optuna.load_study(study_name=name, storage=url).trials]
        for name in optuna.get_all_study_names(url)
    }


def test_the_stored_v0_study_is_what_this_file_says() -> None:
    # The fixture itself: two stages, all trials finished, one self-contained SQLite file.
    assert V0_DB.stat().st_size < 1_000_000
    with closing(sqlite3.connect(f"file:{V0_DB}?mode=ro", uri=True)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        names = {row[0]: row[1] for row in db.execute(
            "SELECT study_name, COUNT(trial_id) FROM studies JOIN trials USING (study_id) "
            "WHERE trials.state = 'COMPLETE' GROUP BY study_name")}
    assert names == {"contract/lr": 4, "contract/shape": 3}


def test_a_study_stored_before_resumes_without_training(v0_copy: str, tmp_path: Path) -> None:
    before = _finished_per_stage(v0_copy)
    spec = with_stored_defaults(load_spec(V0_SPEC), tuner.open_storage(v0_copy))
    stage_settings = _stage_settings()
    for stage in ("lr", "shape"):
        stored = optuna.load_study(study_name=f"contract/{stage}", storage=v0_copy).user_attrs
        assert stored["settings_hash"] == settings_hash(stage_settings(spec, stage))
    # Its own process, from a folder that is not the repository's: nothing may hang on the cwd.
    done = _tuner("study", str(V0_SPEC), "--storage", v0_copy, "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _finished_per_stage(v0_copy) == before  # not one trial more, none changed
    for stage in ("lr", "shape"):
        assert stage in done.stdout  # the summary table
    # The calibrated rate stored at the hand-off, read back, not chosen anew.
    best_lr = optuna.load_study(study_name="contract/shape", storage=v0_copy).user_attrs["lr"]
    assert best_lr == pytest.approx(0.022881136684755242)
    assert f"{best_lr:.3g}" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("v0.db")) == []


def test_importance_export_and_report_read_a_study_stored_before(v0_copy: str, tmp_path: Path) -> None:
    for command in ("importance", "export", "report"):
        result = _invoke(command, "contract", "--storage", v0_copy, "--out", str(tmp_path / command))
        assert result.exit_code == 0, (command, result.output)
    assert _importance_header_holds(_header(tmp_path / "importance" / "importance.csv"))
    # The old database's columns exactly: what a user's notebook reading trials.csv relies on; and
    # trained_lr (issue 25), the rate each trial trained at, worked out for trials stored before it.
    assert _header(tmp_path / "export" / "trials.csv") == TRIAL_COLUMNS + [
        "params_decay", "params_depth", "params_lr", "params_schedule", "params_width",
        "user_attrs_batched_with", "user_attrs_depth", "user_attrs_device", "user_attrs_diverged",
        "user_attrs_epochs_done", "user_attrs_lr", "user_attrs_n_params", "user_attrs_schedule",
        "user_attrs_train_loss_curve", "user_attrs_train_seconds", "user_attrs_trained_lr", "user_attrs_width", "user_attrs_worker",
        "user_attrs_worker_started",
    ]
    with (tmp_path / "export" / "curves.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == CURVE_COLUMNS and len(rows) == 1 + 7 * 3  # 7 trials of 3 epochs
    assert (tmp_path / "report" / "index.html").exists()


# ---- the second stored fixture: the release before the contract had versions ----------------------

V1 = DATA / "contract_v1"
V1_SPEC = V1 / "contract_v1.toml"


@pytest.fixture
def v1_copy(tmp_path: Path) -> str:
    """A copy of contract_v1.db (stage 'shape' with Hyperband and lr_scale, the user's own model
    factory v1net:make, an lr_range = "auto" range test), made at commit 184d0ac."""
    return _stored_copy(V1 / "contract_v1.db", tmp_path / "v1.db")


def test_the_stored_v1_study_is_what_its_spec_says(v1_copy: str) -> None:
    url = v1_copy
    lr = optuna.load_study(study_name="contract1/lr", storage=url)
    shape = optuna.load_study(study_name="contract1/shape", storage=url)
    assert "contract_version" not in lr.user_attrs  # stored before versions
    assert {"lrs", "losses", "bounds"} <= set(lr.user_attrs["lr_find"])
    assert lr.user_attrs["settings"]["identity"]["model.family"]["function"] == "make"
    assert shape.user_attrs["settings"]["stages"]["shape"]["pruner"] == "hyperband"
    assert shape.user_attrs["settings"]["stages"]["shape"]["lr_scale"] == [0.5, 4.0]
    assert sum(t.state == TrialState.COMPLETE for t in shape.trials) == 4


def test_a_study_stored_by_the_release_before_versions_resumes_and_reports_unchanged(v1_copy: str, tmp_path: Path) -> None:
    before = _finished_per_stage(v1_copy)
    attrs_before = {name: optuna.load_study(study_name=name, storage=v1_copy).user_attrs
                    for name in optuna.get_all_study_names(v1_copy)}
    done = _tuner("study", str(V1_SPEC), "--storage", v1_copy, "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "LR range test" not in done.stdout  # its stored bounds are read back, not tested anew
    assert _finished_per_stage(v1_copy) == before  # not one trial more, none changed
    assert {name: optuna.load_study(study_name=name, storage=v1_copy).user_attrs
            for name in optuna.get_all_study_names(v1_copy)} == attrs_before  # nothing rewritten, no version added
    for command in ("importance", "export", "report"):
        result = _invoke(command, "contract1", "--storage", v1_copy, "--out", str(tmp_path / command))
        assert result.exit_code == 0, (command, result.output)
    assert _importance_header_holds(_header(tmp_path / "importance" / "importance.csv"))
    trials_csv = _header(tmp_path / "export" / "trials.csv")
    assert trials_csv[: len(TRIAL_COLUMNS)] == TRIAL_COLUMNS and "params_lr_scale" in trials_csv
    assert (tmp_path / "report" / "index.html").exists()


@pytest.mark.parametrize("command", ["study", "export", "importance", "report", "best"])
def test_a_study_stored_by_a_newer_tuner_is_refused_in_one_line(v1_copy: str, tmp_path: Path, command: str) -> None:
    from tuner.study.stored import CONTRACT_VERSION

    optuna.load_study(study_name="contract1/shape", storage=v1_copy).set_user_attr("contract_version", CONTRACT_VERSION + 1)
    before = _finished_per_stage(v1_copy)
    args = [str(V1_SPEC)] if command == "study" else ["contract1", "--out", str(tmp_path / "out")]
    done = _tuner(command, *args, "--storage", v1_copy, "--device", "cpu", cwd=tmp_path) if command in ("study", "best") \
        else _tuner(command, *args, "--storage", v1_copy, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "stored by a newer tuner" in lines[0] and "contract1/shape" in lines[0], done.stderr
    assert _finished_per_stage(v1_copy) == before
    assert not (tmp_path / "out").exists()


# ---- the third stored fixture: the release before the robust hand-off (contract version 2) ----------

V2 = DATA / "contract_v2"
V2_SPEC = V2 / "contract_v2.toml"


@pytest.fixture
def v2_copy(tmp_path: Path) -> str:
    """A copy of contract_v2.db: made at commit 0ce3b07 (contract version 2), its stage 'lr' handed on
    its best trial's rate, its stage 'shape' pruned by Hyperband from epoch 1 within lr_scale [0.5, 4]."""
    return _stored_copy(V2 / "contract_v2.db", tmp_path / "v2.db")


def test_the_stored_v2_study_is_what_its_spec_says(v2_copy: str) -> None:
    lr = optuna.load_study(study_name="contract2/lr", storage=v2_copy)
    shape = optuna.load_study(study_name="contract2/shape", storage=v2_copy)
    assert lr.user_attrs["contract_version"] == shape.user_attrs["contract_version"] == 2
    assert "handoff" not in lr.user_attrs and "first_rung" not in shape.user_attrs
    assert shape.user_attrs["search"]["pruner"] == {"name": "hyperband", "min_resource": 1, "max_resource": 4,
                                                    "reduction_factor": 3}
    assert shape.user_attrs["settings"]["stages"]["shape"]["lr_scale"] == [0.5, 4.0]


def test_a_study_stored_by_the_release_before_the_robust_hand_off_resumes_and_reports_unchanged(
        v2_copy: str, tmp_path: Path) -> None:
    before = _finished_per_stage(v2_copy)
    attrs_before = {name: optuna.load_study(study_name=name, storage=v2_copy).user_attrs
                    for name in optuna.get_all_study_names(v2_copy)}
    done = _tuner("study", str(V2_SPEC), "--storage", v2_copy, "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _finished_per_stage(v2_copy) == before  # not one trial more, none changed
    assert {name: optuna.load_study(study_name=name, storage=v2_copy).user_attrs
            for name in optuna.get_all_study_names(v2_copy)} == attrs_before  # nothing rewritten
    for command in ("importance", "export", "report"):
        result = _invoke(command, "contract2", "--storage", v2_copy, "--out", str(tmp_path / command))
        assert result.exit_code == 0, (command, result.output)
    assert (tmp_path / "report" / "index.html").exists()
    # Its trials were stored before they kept the rate they trained at: the export works it out.
    shape = optuna.load_study(study_name="contract2/shape", storage=v2_copy)
    assert all("trained_lr" not in t.user_attrs for t in shape.trials)
    table = pd.read_csv(tmp_path / "export" / "trials.csv")
    rows = table[table.stage == "shape"].set_index("number")
    for trial in shape.trials:
        assert rows.loc[trial.number, "user_attrs_trained_lr"] == pytest.approx(trial.user_attrs["lr"] * trial.params["lr_scale"])


def test_a_v2_study_given_more_shape_trials_trains_them_by_the_rules_it_was_made_with(v2_copy: str, tmp_path: Path) -> None:
    spec = V2_SPEC.read_text().replace("[stages.shape]\ntrials = 4", "[stages.shape]\ntrials = 7")
    (tmp_path / "more.toml").write_text(spec)
    lr_attrs = optuna.load_study(study_name="contract2/lr", storage=v2_copy).user_attrs
    calibrated = optuna.load_study(study_name="contract2/shape", storage=v2_copy).user_attrs["lr"]
    done = _tuner("study", str(tmp_path / "more.toml"), "--storage", v2_copy, "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    lr = optuna.load_study(study_name="contract2/lr", storage=v2_copy)
    shape = optuna.load_study(study_name="contract2/shape", storage=v2_copy)
    assert lr.user_attrs == lr_attrs  # no new hand-off, no 'handoff' record
    assert shape.user_attrs["lr"] == calibrated and "first_rung" not in shape.user_attrs
    assert shape.user_attrs["search"]["pruner"]["min_resource"] == 1  # Hyperband from epoch 1, as made
    finished = [t for t in shape.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 7
    assert all(0.5 <= t.params["lr_scale"] <= 4.0 for t in finished)  # the lr_scale range it was made with
    assert all(t.distributions["lr_scale"].low == 0.5 and t.distributions["lr_scale"].high == 4.0 for t in finished)
    # Made before parameters were sampled only where they act (version 4): decay in every trial, as made.
    assert all("decay" in t.params for t in finished)
    assert "group" not in shape.user_attrs["search"]["sampler"]


def test_a_v2_study_stopped_in_stage_lr_starts_its_shape_stage_by_the_rules_it_was_made_with(v2_copy: str,
                                                                                              tmp_path: Path) -> None:
    optuna.delete_study(study_name="contract2/shape", storage=v2_copy)  # as if stopped before the hand-off
    lr = optuna.load_study(study_name="contract2/lr", storage=v2_copy)
    for key in ("best_lr", "best_trial", "handoff_trials"):
        lr.set_user_attr(key, None)
    for run in range(2):  # made, then resumed: the same rules both times
        done = _tuner("study", str(V2_SPEC), "--storage", v2_copy, "--device", "cpu", cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
    shape = optuna.load_study(study_name="contract2/shape", storage=v2_copy)
    assert shape.user_attrs["contract_version"] == 2
    assert shape.user_attrs["settings"]["stages"]["shape"]["lr_scale"] == [0.5, 4.0]
    assert "first_rung" not in shape.user_attrs and "lr_scale_range" not in shape.user_attrs
    assert shape.user_attrs["search"]["pruner"]["min_resource"] == 1
    lr = optuna.load_study(study_name="contract2/lr", storage=v2_copy)
    assert lr.user_attrs["handoff"]["rule"] == "best trial"  # handed on as version 2 did: the best trial's rate
    assert lr.user_attrs["best_lr"] == lr.best_trial.params["lr"]


# ---- the fourth stored fixture: the release before parameters were sampled only where they act (v3) ---------

V3 = DATA / "contract_v3"
V3_SPEC = V3 / "contract_v3.toml"


@pytest.fixture
def v3_copy(tmp_path: Path) -> str:
    """A copy of contract_v3.db: made at commit 2eec79a (contract version 3), every shape trial with a
    decay (the 'constant' ones too), TPE without groups."""
    return _stored_copy(V3 / "contract_v3.db", tmp_path / "v3.db")


def test_a_study_stored_by_the_release_before_conditional_parameters_resumes_and_reports_unchanged(
        v3_copy: str, tmp_path: Path) -> None:
    shape = optuna.load_study(study_name="contract3/shape", storage=v3_copy)
    assert shape.user_attrs["contract_version"] == 3 and "group" not in shape.user_attrs["search"]["sampler"]
    assert any(t.params["schedule"] == "constant" and "decay" in t.params for t in shape.trials)  # as v3 made them
    _resumes_with_nothing_to_run_and_reads(v3_copy, V3_SPEC, "contract3", tmp_path)


def test_a_v3_study_given_more_shape_trials_samples_every_parameter_in_every_trial_as_it_was_made(
        v3_copy: str, tmp_path: Path) -> None:
    _with_more_shape_trials(v3_copy, V3_SPEC, 10, tmp_path)
    shape = optuna.load_study(study_name="contract3/shape", storage=v3_copy)
    finished = [t for t in shape.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 10
    assert all("decay" in t.params for t in finished)  # flat, as made: not conditional on the schedule
    assert "group" not in shape.user_attrs["search"]["sampler"] and shape.user_attrs["contract_version"] == 3


# ---- the fifth stored fixture: the release before a list of optimizers split stage lr (v4) --------------------

V4 = DATA / "contract_v4"
V4_SPEC = V4 / "contract_v4.toml"


@pytest.fixture
def v4_copy(tmp_path: Path) -> str:
    """A copy of contract_v4.db: made at commit e8f6b7b (contract version 4), one stage lr named ``contract4/lr``,
    SGD's declared momentum in every shape trial."""
    return _stored_copy(V4 / "contract_v4.db", tmp_path / "v4.db")


def test_a_study_stored_by_the_release_before_lists_of_optimizers_resumes_and_reports_unchanged(
        v4_copy: str, tmp_path: Path) -> None:
    assert sorted(optuna.get_all_study_names(v4_copy)) == ["contract4/lr", "contract4/shape"]
    _resumes_with_nothing_to_run_and_reads(v4_copy, V4_SPEC, "contract4", tmp_path)
    best = _invoke("best", "contract4", "--storage", v4_copy, "--out", str(tmp_path / "best"), "--device", "cpu")
    assert best.exit_code == 0, best.output


def _with_more_shape_trials(url: str, spec: Path, trials: int, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """A stored fixture's study run with its shape budget raised from 6 to ``trials``; it exits 0."""
    (tmp_path / "more.toml").write_text(spec.read_text().replace("[stages.shape]\ntrials = 6", f"[stages.shape]\ntrials = {trials}"))
    done = _tuner("study", str(tmp_path / "more.toml"), "--storage", url, "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _resumes_with_nothing_to_run_and_reads(url: str, spec: Path, name: str, tmp_path: Path) -> None:
    """A stored fixture's study run again as it is: nothing trained, no attribute changed; importance, export and
    report read it."""
    before = _finished_per_stage(url)
    attrs_before = {study: optuna.load_study(study_name=study, storage=url).user_attrs
                    for study in optuna.get_all_study_names(url)}
    done = _tuner("study", str(spec), "--storage", url, "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "nothing to run" in done.stdout + done.stderr
    assert _finished_per_stage(url) == before
    assert {study: optuna.load_study(study_name=study, storage=url).user_attrs
            for study in optuna.get_all_study_names(url)} == attrs_before
    for command in ("importance", "export", "report"):
        result = _invoke(command, name, "--storage", url, "--out", str(tmp_path / command))
        assert result.exit_code == 0, (command, result.output)


def test_a_v4_study_given_more_shape_trials_keeps_its_one_stage_lr_and_version(v4_copy: str, tmp_path: Path) -> None:
    _with_more_shape_trials(v4_copy, V4_SPEC, 8, tmp_path)
    assert sorted(optuna.get_all_study_names(v4_copy)) == ["contract4/lr", "contract4/shape"]
    shape = optuna.load_study(study_name="contract4/shape", storage=v4_copy)
    finished = [t for t in shape.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 8 and all("momentum" in t.params and "optimizer" not in t.params for t in finished)
    assert shape.user_attrs["contract_version"] == 4 and "lr_per_choice" not in shape.user_attrs


# ---- the sixth stored fixture: the release before stage shape carried the rate by a rule (v6) -------------

V6 = DATA / "contract_v6"
V6_SPEC = V6 / "contract_v6.toml"


@pytest.fixture
def v6_copy(tmp_path: Path) -> str:
    """A copy of contract_v6.db: made at commit a85d162 (contract version 6), Adam, ``lr_scale = "auto"``
    resolved to one range for every shape, each shape trial at the calibrated rate times its lr_scale."""
    return _stored_copy(V6 / "contract_v6.db", tmp_path / "v6.db")


def test_a_study_stored_by_the_release_before_the_rate_rule_resumes_and_reports_unchanged(
        v6_copy: str, tmp_path: Path) -> None:
    stored = optuna.load_study(study_name="contract6/shape", storage=v6_copy).user_attrs
    assert stored["contract_version"] == 6 and "lr_transfer" not in stored
    _resumes_with_nothing_to_run_and_reads(v6_copy, V6_SPEC, "contract6", tmp_path)
    best = _invoke("best", "contract6", "--storage", v6_copy, "--out", str(tmp_path / "best"), "--device", "cpu",
                   "--stage", "shape")
    assert best.exit_code == 0, best.output
    shape = optuna.load_study(study_name="contract6/shape", storage=v6_copy)
    metrics = json.loads((tmp_path / "best" / "metrics.json").read_text())
    winner = shape.trials[metrics["trial"]]  # trained again at its rate as stored: calibrated x lr_scale, no move
    assert metrics["params"]["lr"] == pytest.approx(winner.user_attrs["lr"] * winner.params["lr_scale"])
    assert metrics["params"]["lr"] == pytest.approx(winner.user_attrs["trained_lr"])
    assert metrics["validation"]["value"] == pytest.approx(winner.value, abs=1e-6)  # trained at that rate: the same value
    assert "lr_transfer = \"none\"" in (tmp_path / "best" / "best.toml").read_text()


def test_a_v6_study_given_more_shape_trials_keeps_one_range_for_every_shape_and_no_move(
        v6_copy: str, tmp_path: Path) -> None:
    done = _with_more_shape_trials(v6_copy, V6_SPEC, 8, tmp_path)
    assert "lr_transfer defaulted to 'none'" in done.stdout + done.stderr
    shape = optuna.load_study(study_name="contract6/shape", storage=v6_copy)
    assert shape.user_attrs["contract_version"] == 6 and "lr_transfer" not in shape.user_attrs
    assert shape.user_attrs["lr_scale_range"] == [0.086, 8.0]  # the union of before, as stored
    finished = [t for t in shape.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 8
    for trial in finished:  # the new trials too: the calibrated rate times lr_scale, whatever the width
        assert "lr_move" not in trial.user_attrs
        assert trial.user_attrs["trained_lr"] == pytest.approx(trial.user_attrs["lr"] * trial.params["lr_scale"])
        assert (trial.distributions["lr_scale"].low, trial.distributions["lr_scale"].high) == (0.086, 8.0)


# ---- the seventh stored fixture: the release before the backed curve (v7), stopped before its hand-off -----

V7 = DATA / "contract_v7"
V7_SPEC = V7 / "contract_v7.toml"


def test_a_v7_study_stopped_before_its_hand_off_hands_on_by_the_basin_rule_it_was_made_with(tmp_path: Path) -> None:
    from tuner.study.handoff import sweep_choice

    url = _stored_copy(V7 / "contract_v7.db", tmp_path / "v7.db")
    lr = optuna.load_study(study_name="contract7/lr", storage=url)
    assert lr.user_attrs["contract_version"] == 7 and "handoff" not in lr.user_attrs
    assert optuna.get_all_study_names(url) == ["contract7/lr"]
    # The two rules read these 12 trials differently: what "backed" would hand on is not what was made.
    backed = sweep_choice(lr.trials, counts_rows=True)
    basin = sweep_choice(lr.trials, counts_rows=True, backed=False)
    assert backed.rate != pytest.approx(basin.rate, rel=0.05)

    done = _invoke("study", str(V7_SPEC), "--storage", url, "--device", "cpu")
    assert done.exit_code == 0, done.output
    lr = optuna.load_study(study_name="contract7/lr", storage=url)
    assert "backed" not in lr.user_attrs["handoff"] and lr.user_attrs["best_lr"] == pytest.approx(basin.rate)
    shape = optuna.load_study(study_name="contract7/shape", storage=url)
    assert shape.user_attrs["lr"] == pytest.approx(basin.rate) and shape.user_attrs["contract_version"] == 7
    assert len([t for t in shape.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 2
