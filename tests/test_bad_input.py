"""A typo in a study file costs the user seconds: one line on stderr naming the file, the field and
the fix, exit code 2, no traceback, and nothing written to the storage."""

from __future__ import annotations

import gc
import hashlib
import os
import sqlite3
from contextlib import closing
import warnings
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from tuner.cli import app
from tuner.folders import default_folder

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
    pytest.param(GOOD + '[model]\nfamily = "mpl"\n', ["'model.family' = 'mpl'", "did you mean 'mlp'?", 'or your own factory as "module:function"'], id="unknown-model"),
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
    pytest.param(",".join(f"f{i}" for i in range(14)) + ",label\n" + ",".join(["1"] * 15) + "\n", "Lable", "auto",
                 ["'data.target' = 'Lable'", "did you mean 'label'?", "its 15 columns are", "(4 more), label"],
                 id="misspelt-target-among-many-columns"),
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
    # Query keys SQLite does not know were dropped with two raw SQLAlchemy warnings, and the file written.
    pytest.param("sqlite:///{tmp}/t.db?mode=ro&foo=bar", ["unknown query key 'foo'", "remove it"], id="query-junk"),
    pytest.param("sqlite:///{tmp}/t.db?timeout=5&Timeout=9", ["unknown query key 'Timeout'"], id="query-key-case"),
    pytest.param("sqlite:///file:{tmp}/t.db?uri=true&foo=bar", ["unknown query key 'foo'"], id="uri-query-junk"),
    # SQLite reads 'mode' from a file: URI only: without uri=true it was ignored (and the study written
    # into a file the user asked to be read-only); without file: it became part of the file's name.
    pytest.param("sqlite:///{tmp}/t.db?mode=ro", ["'mode' is a SQLite URI parameter", "ignored",
                                                 "sqlite:///file:{tmp}/t.db?mode=ro&uri=true"], id="uri-key-without-uri"),
    pytest.param("sqlite:///{tmp}/t.db?uri=true&mode=ro", ["'mode' is a SQLite URI parameter", "part of the file's name",
                                                          "sqlite:///file:{tmp}/t.db?mode=ro&uri=true"], id="uri-key-without-file"),
])
def test_a_bad_storage_url_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, storage: str, words: list[str]) -> None:
    url = storage.format(tmp=tmp_path)
    _assert_refused(*_study(tmp_path, GOOD, storage=url), "storage", *(word.format(tmp=tmp_path) for word in words))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.toml"]
    assert not Path("/proc/tuner-test.db").exists()


@pytest.mark.parametrize("url", [
    "sqlite:///{tmp}/t.db?timeout=30", "sqlite:///{tmp}/t.db?check_same_thread=false",
    "sqlite:///{tmp}/t.db?cached_statements=50", "sqlite:///{tmp}/t.db?detect_types=0",
    "sqlite:///{tmp}/t.db?isolation_level=DEFERRED", "sqlite:///{tmp}/t.db?uri=true",
    "sqlite:///file:{tmp}/t.db?uri=true", "sqlite:///file:{tmp}/t.db?mode=rwc&uri=true",
    "sqlite:///file:{tmp}/t.db?cache=private&uri=true&timeout=10", "sqlite:///file:{tmp}/t.db?psow=1&uri=true",
    "sqlite:///file:{tmp}/t.db?vfs=unix&uri=true",
])
def test_the_sqlite_query_keys_that_sqlite_reads_are_still_accepted(tmp_path: Path, url: str) -> None:
    from tuner.storage import open_existing_storage, open_storage

    url = url.format(tmp=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SQLAlchemy's "are being ignored" warning would be a key dropped
        study = optuna.create_study(study_name="q", storage=open_storage(url))
        study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
        assert len(optuna.load_study(study_name="q", storage=open_existing_storage(url)).trials) == 1
    assert (tmp_path / "t.db").is_file()


def test_an_existing_study_is_untouched_by_bad_input(tmp_path: Path) -> None:
    db = tmp_path / "study.db"
    code, stdout, stderr = _study(tmp_path, GOOD)
    assert code == 0, stdout + stderr
    url = f"sqlite:///{db}"

    def snapshot() -> list[tuple]:
        return [(s, t.number, t.state, t.params, t.values, t.user_attrs)
                for s in ("typo/lr", "typo/shape") for t in optuna.load_study(study_name=s, storage=url).trials]

    before = snapshot()
    # The finished run's last commits may still sit in the -wal file (a later reader's close would
    # move them into the database): move them now, so that the bytes compared are all there is.
    gc.collect()
    with closing(sqlite3.connect(db)) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    digest, files_before = hashlib.sha256(db.read_bytes()).hexdigest(), sorted(p.name for p in tmp_path.iterdir())
    for bad in (GOOD.replace("trials = 1", "trails = 1"), GOOD.replace('"wine"', '"wines"'), "name = 'typo'\n[data\n"):
        _assert_refused(*_study(tmp_path, bad))
    _assert_refused(*_study(tmp_path, GOOD, "--name", "a/b"), "--name", "must not contain '/'")
    gc.collect()  # our own reader's connection closes here, not in the middle of the comparison
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest  # not a byte written
    assert sorted(p.name for p in tmp_path.iterdir()) == files_before
    assert snapshot() == before


@pytest.mark.parametrize(("spec_text", "words"), [
    pytest.param(GOOD.replace('name = "typo"', 'name = "typo"\nseed = -1'), ["'seed' = -1", "0 to 4294967295"], id="seed-negative"),
    pytest.param(GOOD.replace('name = "typo"', f'name = "typo"\nseed = {2**40}'), [f"'seed' = {2**40}", "0 to 4294967295"],
                 id="seed-too-large"),
    pytest.param(GOOD.replace('name = "wine"', 'name = "wine"\nvalidation_fraction = 0.999'),
                 ["'data.validation_fraction' = 0.999", "leaves 0 training", "choose a fraction from"], id="validation-fraction-0.999"),
    pytest.param(GOOD.replace('name = "wine"', 'name = "wine"\nmax_rows = 1'),
                 ["'data.max_rows' = 1", "too few rows for a split", "at least 4"], id="max-rows-1"),
    pytest.param(GOOD.replace('name = "wine"', 'name = "wine"\nmax_rows = 3'),
                 ["'data.max_rows' = 3", "too few rows for a split"], id="max-rows-3"),
    pytest.param(GOOD.replace('name = "wine"', 'name = "adding"\nsequence_length = 1'),
                 ["'data.sequence_length' = 1", "at least 2"], id="adding-sequence-length-1"),
    pytest.param(GOOD.replace('name = "wine"', 'name = "adding"\nsamples = 1'),
                 ["'data.samples' = 1", "too few rows for a split"], id="adding-samples-1"),
    pytest.param("", ["study.toml", "the spec is empty"], id="empty-file"),
    pytest.param("# a study, some day\n\n# nothing yet\n", ["study.toml", "the spec is empty"], id="only-comments"),
    pytest.param(GOOD.replace('name = "typo"', 'name = "ty\\u0000po"'), ["'name'", "must not contain", "NUL"], id="name-with-nul"),
    pytest.param(GOOD.replace('name = "typo"', 'name = "ty\\npo"'), ["'name'", "line breaks"], id="name-with-newline"),
    pytest.param(GOOD.replace('name = "typo"', 'name = "typo"\nstorage = "sqlite:///:memory:"'),
                 ["study.toml: field 'storage'", "in-memory", "sqlite:///tuner.db"], id="spec-storage-in-memory"),
    pytest.param(GOOD + "[model]\nwidth = 1000000000\n",
                 ["'model.width' = 1000000000", "a model of 17,000,000,003 parameters", "cannot fit in", "bytes of memory"],
                 id="model-too-large"),
    pytest.param(GOOD.replace("trials = 1", "trials = 1\nwidth = [8, 1000000000]"),
                 ["'stages.shape.width' = [8, 1000000000]", "parameters", "cannot fit in", "bytes of memory"],
                 id="shape-stage-model-too-large"),
])
def test_an_input_that_cannot_work_is_refused_in_one_line_before_anything_is_written(
    tmp_path: Path, spec_text: str, words: list[str],
) -> None:
    storage = "" if "storage =" in spec_text else None
    _assert_refused(*_study(tmp_path, spec_text, storage=storage), *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.toml"]


ROWS = ["a,b,y"] + [f"{i},{i % 5},{i % 2}" for i in range(30)]


@pytest.mark.parametrize(("csv", "task", "extra", "words"), [
    pytest.param("\n".join(["a,b,y"] + [f"{i},{i % 5},1" for i in range(30)]), "auto", "",
                 ["'data.target' = 'y'", "one class only ('1')"], id="one-class"),
    pytest.param("\n".join(ROWS).replace("\n7,2,1", "\n7,inf,1"), "auto", "",
                 ["'data.path' = 'table.csv'", "non-finite values in column 'b'", "line 9"], id="inf-cell"),
    pytest.param("\n".join(ROWS).replace("\n7,2,1", "\n7,2,-inf"), "regression", "",
                 ["'data.target' = 'y'", "non-finite values in the target", "line 9"], id="inf-target"),
    pytest.param("\n".join(ROWS[:3]), "auto", "", ["'data.path' = 'table.csv'", "too few rows for a split: 2 rows"], id="two-rows"),
    pytest.param("\n".join(ROWS[:2]), "auto", "", ["'data.path' = 'table.csv'", "too few rows for a split: 1 rows"], id="one-row"),
    pytest.param("\n".join(ROWS), "auto", "max_rows = 4\n",
                 ["'data.max_rows' = 4", "too few rows for a split", "give at least 6 rows"], id="max-rows-4"),
    pytest.param("\n".join(["a,b,y"] + [f"{i},{i % 5},{i * 0.37}" for i in range(30)]), "classification", "",
                 ["'data.task' = 'classification'", "fractional numbers (e.g. 0.37)", 'task = "regression"'],
                 id="float-target-as-classes"),
    pytest.param("a,b,y\n1,2,0\n3,4,1\n\"x\n", "auto", "", ["'data.path' = 'table.csv'", "cannot be read as CSV"],
                 id="pandas-parse-error"),
    # Its square overflows: standardising gave an overflow warning, inputs of 0 and every trial 0.5.
    pytest.param("\n".join(ROWS).replace("\n7,2,1", "\n7,1e308,1"), "auto", "",
                 ["'data.path' = 'table.csv'", "column 'b'", "1e+308 on line 9", "too large to standardise", "rescale"],
                 id="huge-feature"),
    pytest.param("\n".join(ROWS).replace("\n7,2,1", "\n7,-1e200,1"), "auto", "",
                 ["'data.path' = 'table.csv'", "column 'b'", "-1e+200 on line 9"], id="huge-negative-feature"),
    pytest.param("\n".join(["a,b,y"] + [f"{i},{i % 5},{i * 0.37}" for i in range(30)]).replace("\n7,2,2.59", "\n7,2,1e308"),
                 "regression", "", ["'data.target' = 'y'", "1e+308 on line 9", "too large to standardise"], id="huge-target"),
    pytest.param("\n".join(["a,b,y"] + [f"{i},{i % 5},3.5" for i in range(30)]), "regression", "",
                 ["'data.target' = 'y'", "one value only (3.5)", "nothing to learn"], id="constant-target"),
    pytest.param("\n".join(["a,b,y"] + [f"1,2,{i % 2}" for i in range(30)]), "auto", "",
                 ["'data.path' = 'table.csv'", "every feature column holds one value only (a, b)"], id="constant-features"),
])
def test_bad_data_is_refused_in_one_line_before_anything_is_written(
    tmp_path: Path, csv: str, task: str, extra: str, words: list[str],
) -> None:
    spec_text = CSV_SPEC.format(target="y", task=task).replace('task = "', extra + 'task = "')
    _assert_refused(*_study(tmp_path, spec_text, csv=csv), "study.toml", *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.toml", "table.csv"]


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://"])
def test_an_in_memory_storage_is_refused_for_a_study_whose_results_it_would_lose(tmp_path: Path, url: str) -> None:
    _assert_refused(*_study(tmp_path, GOOD, storage=url), f"storage '{url}'", "in-memory", "give a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.toml"]


@pytest.mark.parametrize("name", ["a\nb", "a\x00b", "a\tb", " "])
def test_a_name_with_control_characters_is_refused(tmp_path: Path, name: str) -> None:
    _assert_refused(*_study(tmp_path, GOOD, "--name", name), "--name", "must not contain")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.toml"]


def test_a_spec_that_is_a_pipe_is_refused_instead_of_waiting_for_a_writer(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "study.toml")
    _assert_refused(*_study(tmp_path, None), "study.toml", "is a pipe or socket, not a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.toml"]


@pytest.mark.parametrize(("content", "words"), [
    pytest.param(b'name = "caf\xe9"\n', ["is not UTF-8 text"], id="latin-1"),
])
def test_a_spec_that_is_not_text_is_refused(tmp_path: Path, content: bytes, words: list[str]) -> None:
    (tmp_path / "study.toml").write_bytes(content)
    _assert_refused(*_study(tmp_path, None), "study.toml", *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.toml"]


def test_a_spec_that_cannot_be_read_is_refused(tmp_path: Path) -> None:
    # Reading /proc/self/mem from its start fails with EIO even for root, whom permissions do not stop.
    result = CliRunner().invoke(app, ["study", "/proc/self/mem", "--storage", f"sqlite:///{tmp_path / 's.db'}"])
    _assert_refused(result.exit_code, result.stdout, result.stderr, "/proc/self/mem", "cannot read it")
    assert list(tmp_path.iterdir()) == []


# ---- issue 24, item 3: default output folders from any study name ---------------------------------


@pytest.mark.parametrize("name", ["quickstart", "my study (v2)", "café", "a..b", "..", ".hidden", "n" * 200])
def test_a_name_that_makes_a_safe_folder_keeps_the_folder_it_always_had(name: str) -> None:
    assert default_folder(name, "-best") == f"{name}-best"
    assert default_folder(name, "-report") == f"{name}-report"


@pytest.mark.parametrize("name", ["../../esc", "/etc/cron.d/x", "a\\..\\b", "a\nb", "a\x00b", "tab\there", "n" * 300,
                                  "é" * 200, "bad\udcffbytes"])
def test_any_other_name_gets_one_folder_in_the_working_folder_that_no_other_name_shares(name: str) -> None:
    folder = default_folder(name, "-report")
    assert Path(folder).name == folder and folder not in (".", "..")  # one component: it stays where it is made
    assert "/" not in folder and "\\" not in folder and folder.isprintable()
    assert len(folder.encode("utf-8")) <= 255 and folder.endswith("-report")
    assert default_folder(name + "x", "-report") != folder  # a hash of the whole name: cut or replaced parts still count


def test_report_and_best_of_a_study_with_a_300_character_name_write_their_default_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "n" * 300  # `tuner study` takes it; a file name may have 255 bytes
    code, stdout, stderr = _study(tmp_path, GOOD, "--name", name)
    assert code == 0, stdout + stderr
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    for command, extra, folder, written in (("report", [], default_folder(name, "-report"), "index.html"),
                                            ("best", ["--device", "cpu"], default_folder(name, "-best"), "model.pt")):
        result = CliRunner().invoke(app, [command, name, "--storage", storage, *extra])
        assert result.exit_code == 0, result.stdout + result.stderr
        assert (tmp_path / folder / written).is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("study.db")) == sorted(
        ["study.toml", default_folder(name, "-report"), default_folder(name, "-best")])


def test_a_study_named_to_climb_out_of_the_working_folder_is_reported_inside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, stdout, stderr = _study(tmp_path, GOOD)
    assert code == 0, stdout + stderr
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    for stage in ("lr", "shape"):  # the same study under a name with separators, as another tool may store it
        optuna.copy_study(from_study_name=f"typo/{stage}", from_storage=storage, to_storage=storage,
                          to_study_name=f"../../esc/{stage}")
    here = tmp_path / "a" / "b"
    here.mkdir(parents=True)
    monkeypatch.chdir(here)
    result = CliRunner().invoke(app, ["report", "../../esc", "--storage", storage])
    assert result.exit_code == 0, result.stdout + result.stderr
    assert [p.name for p in here.iterdir()] == [default_folder("../../esc", "-report")]
    assert (here / default_folder("../../esc", "-report") / "index.html").is_file()
    # Nothing climbed out (the database keeps its -wal and -shm files beside it while open).
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("study.db")) == ["a", "study.toml"]


def test_constant_feature_columns_are_dropped_with_one_warning_line(tmp_path: Path) -> None:
    rows = "\n".join(["a,c,b,d,y"] + [f"{i},7,{i % 5},0,{i % 2}" for i in range(30)])
    code, stdout, stderr = _study(tmp_path, CSV_SPEC.format(target="y", task="auto") + "[stages.lr]\ntrials = 1\n"
                                  "[stages.shape]\ntrials = 1\n", csv=rows)
    assert code == 0, stdout + stderr
    warned = [line for line in (stdout + stderr).splitlines() if "warning" in line.lower()]
    assert len(warned) == 1, stdout + stderr
    assert warned[0].startswith("warning: ") and "'data.path' = 'table.csv'" in warned[0], warned[0]
    assert "columns 'c', 'd' hold one value only" in warned[0] and "dropped" in warned[0], warned[0]
    assert "Traceback" not in stdout + stderr


LOADER_SPEC = """
name = "mine"
[data]
name = "python"
loader = "{module}:load"
[train]
epochs = 1
[stages.lr]
trials = 2
[stages.shape]
trials = 1
"""

_PAIRS = """
import numpy as np

def _xy(n, width=4, task="classification", seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, width))
    return x, (np.arange(n) % 2 if task == "classification" else x.sum(axis=1))
"""

_DATASETS = """
import torch

class Rows(torch.utils.data.Dataset):
    def __init__(self, n, width=4):
        self.x, self.y = torch.randn(n, width, generator=torch.Generator().manual_seed(0)), torch.arange(n) % 2
    def __len__(self):
        return len(self.x)
    def __getitem__(self, i):
        return self.x[i], self.y[i]
"""


@pytest.mark.parametrize(("code", "words"), [
    # Today: "unexpected ValueError: operands could not be broadcast ... (a bug in tuner?)".
    pytest.param(_PAIRS + """
def load(seed):
    return {"train": _xy(30), "val": _xy(10), "test": _xy(10, width=5), "task": "classification"}
""", ["train inputs have shape (4,) per sample but test inputs (5,)", "make them match"], id="test-wider"),
    pytest.param(_DATASETS + """
def load(seed):
    return {"train": Rows(30), "val": Rows(10, width=5), "task": "classification"}
""", ["train inputs have shape (4,) per sample but val inputs (5,)", "make them match"], id="dataset-val-wider"),
    # Inputs were checked for NaN and inf, targets were not.
    pytest.param(_PAIRS + """
def load(seed):
    x, y = _xy(30, task="regression")
    y[3] = np.nan
    return {"train": (x, y), "val": _xy(10, task="regression", seed=1), "task": "regression"}
""", ["the targets of its 'train' part hold NaN or infinite values", "fill or drop"], id="nan-target"),
    pytest.param(_PAIRS + """
def load(seed):
    x, y = _xy(10, task="regression", seed=1)
    y[0] = -np.inf
    return {"train": _xy(30, task="regression"), "val": (x, y), "task": "regression"}
""", ["the targets of its 'val' part hold NaN or infinite values"], id="inf-target-val"),
    pytest.param(_PAIRS + """
def load(seed):
    x, y = _xy(10, task="regression", seed=2)
    y[9] = np.inf
    return {"train": _xy(30, task="regression"), "val": _xy(10, task="regression", seed=1), "test": (x, y),
            "task": "regression"}
""", ["the targets of its 'test' part hold NaN or infinite values"], id="inf-target-test"),
    # Fewer rows than the CSV path allows: with one validation row both trials were called diverged.
    pytest.param(_PAIRS + """
def load(seed):
    return {"train": _xy(30, task="regression"), "val": _xy(1, task="regression", seed=1), "task": "regression"}
""", ["its 'val' part has 1 row", "at least 2"], id="one-val-row"),
    pytest.param(_PAIRS + """
def load(seed):
    return (_xy(1, task="regression"), _xy(10, task="regression", seed=1), "regression")
""", ["its 'train' part has 1 row", "at least 2"], id="one-train-row"),
    pytest.param(_PAIRS + """
def load(seed):
    x, _ = _xy(2, seed=1)
    return {"train": _xy(30), "val": (x, [0, 7]), "task": "classification"}
""", ["its 'val' part holds 1 row of classes seen in training", "at least 2"], id="one-known-val-row"),
    pytest.param(_DATASETS + """
def load(seed):
    return {"train": Rows(30), "val": Rows(1), "task": "classification"}
""", ["its 'val' part has 1 row", "at least 2"], id="dataset-one-val-row"),
])
def test_a_users_loader_whose_parts_cannot_train_is_refused_in_one_line_before_anything_is_written(
    tmp_path: Path, request: pytest.FixtureRequest, code: str, words: list[str],
) -> None:
    module = "loader_" + request.node.callspec.id.replace("-", "_")  # one module per case: imports are cached
    (tmp_path / f"{module}.py").write_text(code)
    _assert_refused(*_study(tmp_path, LOADER_SPEC.format(module=module)), "study.toml", f"'data.loader' = '{module}:load'",
                    *words)
    assert not (tmp_path / "study.db").exists()


def test_a_loaders_test_dataset_of_another_shape_is_refused_by_tuner_best_before_anything_is_written(tmp_path: Path) -> None:
    # The stages never read a test Dataset, not even its first sample: `tuner best`, its one reader, checks it.
    (tmp_path / "loader_test_narrower.py").write_text(_DATASETS + """
def load(seed):
    return {"train": Rows(30), "val": Rows(10), "test": Rows(10, width=3), "task": "classification"}
""")
    code, stdout, stderr = _study(tmp_path, LOADER_SPEC.format(module="loader_test_narrower"))
    assert code == 0, stdout + stderr
    url = f"sqlite:///{tmp_path / 'study.db'}"
    result = CliRunner().invoke(app, ["best", "mine", "--storage", url, "--out", str(tmp_path / "out"), "--device", "cpu"])
    _assert_refused(result.exit_code, result.stdout, result.stderr, "'data.loader' = 'loader_test_narrower:load'",
                    "train inputs have shape (4,) per sample but test inputs (3,)", "make them match")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("code", "words"), [
    # Today: five failed trials, and a message that does not name train.loss.
    pytest.param("""
import torch.nn.functional as F

def loss(outputs, targets):
    return F.cross_entropy(outputs, targets, reduction="none")
""", ["returns a tensor of shape (64,) for a batch of 64", "one number", ".mean()"], id="vector"),
    pytest.param("""
def loss(outputs, targets):
    return 0.5
""", ["returns a float", "a 0-dim tensor"], id="float"),
    pytest.param("""
def loss(outputs, targets):
    raise KeyError("labels")
""", ["calling it on the first batch raised KeyError: 'labels'", "fix the loss"], id="raises"),
    pytest.param("""
import torch

def loss(outputs, targets):
    return torch.tensor(float((outputs.argmax(-1) != targets).float().mean()))
""", ["does not depend on the outputs", "no gradient"], id="detached"),
])
def test_a_loss_that_cannot_train_is_named_in_one_line_before_anything_is_written(
    tmp_path: Path, request: pytest.FixtureRequest, code: str, words: list[str],
) -> None:
    module = "loss_" + request.node.callspec.id
    (tmp_path / f"{module}.py").write_text(code)
    spec_text = GOOD.replace("epochs = 1", f'epochs = 1\nloss = "{module}:loss"')
    _assert_refused(*_study(tmp_path, spec_text), "study.toml", f"'train.loss' = '{module}:loss'", *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{module}.py", "study.toml"]
