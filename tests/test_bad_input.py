"""A typo in a study file costs the user seconds: one line on stderr naming the file, the field and
the fix, exit code 2, no traceback, and nothing written to the storage."""

from __future__ import annotations

import hashlib
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from tuner.cli import app

GOOD = """
name = "typo"
[data]
name = "wine"
[train]
epochs = 1
[stages.lr]
trials = 2
[stages.shape]
trials = 1
"""

CSV_SPEC = """
name = "table"
[data]
name = "csv"
path = "table.csv"
target = "{target}"
task = "{task}"
[train]
epochs = 1
"""

GOOD_ROWS = "\n".join(["a,b,y"] + [f"{i},{i % 5},{i % 2}" for i in range(30)])


def _study(tmp_path: Path, spec_text: str | None, *extra: str, csv: str | None = None,
           storage: str | None = None) -> tuple[int, str, str]:
    """Run ``tuner study`` on ``spec_text`` (None: no file at all) and return (exit code, stdout, stderr)."""
    spec = tmp_path / "study.toml"
    if spec_text is not None:
        spec.write_text(spec_text)
    if csv is not None:
        (tmp_path / "table.csv").write_text(csv)
    storage = f"sqlite:///{tmp_path / 'study.db'}" if storage is None else storage
    flags = ["--storage", storage] if storage else []  # "": the spec's own storage
    result = CliRunner().invoke(app, ["study", str(spec), *flags, "--device", "cpu", *extra])
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def _assert_refused(code: int, stdout: str, stderr: str, *words: str) -> None:
    assert code == 2, stdout + stderr
    assert "Traceback" not in stdout + stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr  # one line, whatever the terminal width
    assert lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize(("spec_text", "words"), [
    pytest.param("name = \n", ["study.toml", "malformed TOML", "fix the syntax"], id="malformed-toml"),
    pytest.param(GOOD.replace("epochs = 1", "epochs = 1\nbatchsize = 8"),
                 ["study.toml", "'train.batchsize'", "did you mean 'batch_size'?"], id="unknown-key"),
    pytest.param(GOOD.replace("trials = 2", "trials = 2\nlr_min = 0.0"),
                 ["'stages.lr.lr_min' = 0.0", "must be > 0"], id="lr-bound-zero"),
    pytest.param(GOOD.replace("trials = 2", "trials = 2\nlr_max = -1.0"),
                 ["'stages.lr.lr_max' = -1.0", "must be > 0"], id="lr-bound-negative"),
    pytest.param(GOOD.replace("trials = 2", "trials = 2\nlr_min = 0.5\nlr_max = 0.1"),
                 ["'stages.lr.lr_min' = 0.5", "below lr_max"], id="lr-min-above-max"),
    pytest.param(GOOD.replace("trials = 2", "trials = 2\nlr_min = 0.1\nlr_max = 0.1"),
                 ["'stages.lr.lr_min' = 0.1", "below lr_max"], id="lr-min-equals-max"),
    pytest.param(GOOD.replace("epochs = 1", "epochs = 0"), ["'train.epochs' = 0", "greater than 0"], id="epochs-zero"),
    pytest.param(GOOD.replace("trials = 1", "trials = 1\nepochs = -3"),
                 ["'stages.shape.epochs' = -3", "greater than 0"], id="stage-epochs-negative"),
    pytest.param(GOOD.replace("trials = 2", "trials = 0"), ["'stages.lr.trials' = 0", "greater than 0"], id="trials-zero"),
    pytest.param(GOOD.replace("trials = 1", "trials = -1"), ["'stages.shape.trials' = -1", "greater than 0"], id="trials-negative"),
    pytest.param(GOOD.replace('name = "wine"', 'name = "mnist"'),
                 ["'data.name' = 'mnist'", "choose one of: digits"], id="unknown-data-set"),
    pytest.param(GOOD + '[model]\nfamily = "mpl"\n', ["'model.family' = 'mpl'", "did you mean 'mlp'?"], id="unknown-model"),
    pytest.param(GOOD.replace("epochs = 1", 'epochs = 1\noptimizer = "adamm"'),
                 ["'train.optimizer' = 'adamm'", "did you mean 'adam'?"], id="unknown-optimizer"),
    pytest.param(GOOD.replace("trials = 1", 'trials = 1\nschedules = ["step", "cosin"]'),
                 ["'stages.shape.schedules' = 'cosin'", "did you mean 'cosine'?"], id="unknown-schedule"),
    pytest.param(GOOD.replace('name = "typo"', 'name = "typo"\nstorage = "tuner.db"'),
                 ["study.toml: field 'storage'", "not a URL", "sqlite:///tuner.db"], id="storage-in-spec-not-a-url"),
])
def test_a_bad_spec_is_one_line_exit_2_and_creates_no_storage(tmp_path: Path, spec_text: str, words: list[str]) -> None:
    storage = "" if "storage =" in spec_text else None
    _assert_refused(*_study(tmp_path, spec_text, storage=storage), *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.toml"]  # no database, no -wal, nothing


def test_a_spec_path_that_does_not_exist_is_named(tmp_path: Path) -> None:
    _assert_refused(*_study(tmp_path, None), "study.toml", "no such file", "check the path")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("csv", "target", "task", "words"), [
    pytest.param(None, "y", "auto", ["'data.path' = 'table.csv'", "no such file"], id="missing"),
    pytest.param("", "y", "auto", ["'data.path' = 'table.csv'", "empty", "header row"], id="empty"),
    pytest.param("a,b,y\n", "y", "auto", ["'data.path' = 'table.csv'", "no data rows"], id="header-only"),
    pytest.param(GOOD_ROWS, "label", "auto", ["'data.target' = 'label'", "no such column", "a, b, y"], id="no-target-column"),
    pytest.param(GOOD_ROWS.replace("\n3,3,1", "\n3,three,1"), "y", "auto",
                 ["'data.path' = 'table.csv'", "feature column 'b' is not numeric", "encode it"], id="non-numeric-feature"),
    pytest.param(GOOD_ROWS.replace("\n3,3,1", "\n3,,1"), "y", "auto",
                 ["feature column 'b' has a missing value (line 5)", "fill or drop"], id="missing-feature"),
    pytest.param(GOOD_ROWS.replace("\n3,3,1", "\n3,3,"), "y", "auto",
                 ["'data.target' = 'y'", "missing value (line 5)", "fill or drop"], id="missing-target"),
    pytest.param(GOOD_ROWS.replace("\n3,3,1", "\n3,3,one"), "y", "regression",
                 ["'data.target' = 'y'", "is not numeric", 'task = "classification"'], id="non-numeric-target"),
])
def test_a_bad_csv_file_is_one_line_exit_2_and_creates_no_storage(
    tmp_path: Path, csv: str | None, target: str, task: str, words: list[str],
) -> None:
    _assert_refused(*_study(tmp_path, CSV_SPEC.format(target=target, task=task), csv=csv), "study.toml", *words)
    assert not (tmp_path / "study.db").exists()


def test_the_same_csv_without_the_typo_is_accepted(tmp_path: Path) -> None:
    # The cases above fail for the reason they name, not because the CSV spec is broken.
    code, stdout, stderr = _study(tmp_path, CSV_SPEC.format(target="y", task="auto") + "[stages.lr]\ntrials = 1\n"
                                  "[stages.shape]\ntrials = 1\n", csv=GOOD_ROWS)
    assert code == 0, stdout + stderr
    assert (tmp_path / "study.db").exists()


@pytest.mark.parametrize(("storage", "words"), [
    pytest.param("tuner.db", ["'tuner.db'", "not a URL", "sqlite:///tuner.db"], id="not-a-url"),
    pytest.param("sqlite:/tuner.db", ["not a URL", "write e.g."], id="one-slash"),
    pytest.param("postgresql://user@host:notaport/db", ["malformed URL", "write e.g."], id="bad-port"),
    pytest.param("sqlit:///tuner.db", ["unknown database kind 'sqlit'", "sqlite:///tuner.db"], id="unknown-kind"),
    pytest.param("sqlite:///{tmp}/absent/tuner.db", ["folder", "does not exist", "create it"], id="no-folder"),
    pytest.param("sqlite:///{tmp}/study.toml/tuner.db", ["is a file, not a folder"], id="folder-is-a-file"),
    pytest.param("sqlite:///{tmp}", ["is a folder", "name a file in it"], id="path-is-a-folder"),
    # Creating files in /proc fails even for root, who passes every permission check.
    pytest.param("sqlite:////proc/tuner-test.db", ["'/proc/tuner-test.db' is not writable", "choose a path"], id="unwritable"),
])
def test_a_bad_storage_url_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, storage: str, words: list[str]) -> None:
    url = storage.format(tmp=tmp_path)
    _assert_refused(*_study(tmp_path, GOOD, storage=url), "storage", *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.toml"]
    assert not Path("/proc/tuner-test.db").exists()


def test_an_existing_study_is_untouched_by_bad_input(tmp_path: Path) -> None:
    db = tmp_path / "study.db"
    code, stdout, stderr = _study(tmp_path, GOOD)
    assert code == 0, stdout + stderr
    url = f"sqlite:///{db}"

    def snapshot() -> list[tuple]:
        return [(s, t.number, t.state, t.params, t.values, t.user_attrs)
                for s in ("typo/lr", "typo/shape") for t in optuna.load_study(study_name=s, storage=url).trials]

    before, files_before = snapshot(), sorted(p.name for p in tmp_path.iterdir())
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    for bad in (GOOD.replace("trials = 1", "trails = 1"), GOOD.replace('"wine"', '"wines"'), "name = 'typo'\n[data\n"):
        _assert_refused(*_study(tmp_path, bad))
    _assert_refused(*_study(tmp_path, GOOD, "--name", "a/b"), "--name", "must not contain '/'")
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest  # not a byte written
    assert sorted(p.name for p in tmp_path.iterdir()) == files_before
    assert snapshot() == before
