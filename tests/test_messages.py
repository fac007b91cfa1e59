"""What a user reads when something is wrong: one plain line, ``error: ...``, exit 2, the text as
typed (no rich markup or emoji codes eating it), the storage named by its URL, nothing written."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tuner.storage import open_storage
from tuner.training.lr_find import LRFindInputError, lr_find
from tuner.training.train import DeviceError


def _tuner(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    env.pop("TUNER_STORAGE", None)
    return subprocess.run([sys.executable, "-m", "tuner.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _one_error_line(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize(("args", "words"), [
    pytest.param(["dashboard", "--port", "0"], ["'--port'", "greater than or equal to 1", "dashboard --help"], id="port-0"),
    pytest.param(["dashboard", "--port", "http"], ["'--port'", "valid integer"], id="port-not-a-number"),
    pytest.param(["study"], ["Missing argument", "study --help"], id="missing-spec"),
    pytest.param(["studdy", "x.toml"], ["No such command 'studdy'"], id="unknown-command"),
    pytest.param(["export", "x", "--outt", "y"], ["--outt"], id="unknown-option"),
])
def test_a_usage_error_is_one_plain_line_not_a_box(tmp_path: Path, args: list[str], words: list[str]) -> None:
    line = _one_error_line(_tuner(*args, cwd=tmp_path))
    for word in words:
        assert word in line, line
    assert not any(char in line for char in "╭╮│─"), line
    assert list(tmp_path.iterdir()) == []


def test_a_path_that_looks_like_an_emoji_code_is_printed_as_typed(tmp_path: Path) -> None:
    line = _one_error_line(_tuner("study", ":x:[bold]y[/bold].toml", "--storage", f"sqlite:///{tmp_path / 's.db'}", cwd=tmp_path))
    assert ":x:[bold]y[/bold].toml: no such file; check the path" in line, line
    assert "\N{CROSS MARK}" not in line
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def other_study(tmp_path: Path) -> tuple[str, Path]:
    """A storage holding one tuner study, 'other', and nothing else."""
    database = tmp_path / "s.db"
    url = f"sqlite:///{database}"
    optuna.create_study(study_name="other/lr", storage=open_storage(url))
    with sqlite3.connect(database) as connection:  # into the file itself, so that its bytes tell any later write
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return url, database


@pytest.mark.parametrize("command", ["report", "export", "importance"])
def test_an_unknown_study_is_named_with_the_storage_url_and_the_studies_there(
    tmp_path: Path, other_study: tuple[str, Path], command: str,
) -> None:
    url, database = other_study
    digest = hashlib.sha256(database.read_bytes()).hexdigest()
    out = tmp_path / "out"
    line = _one_error_line(_tuner(command, "nosuch", "--storage", url, "--out", str(out), cwd=tmp_path))
    assert f"study 'nosuch': not found in {url}; studies there: other" in line, line
    assert "Storage" not in line  # not a class name such as FastSQLiteStorage
    assert hashlib.sha256(database.read_bytes()).hexdigest() == digest
    assert not out.exists()


@pytest.mark.parametrize(("args", "words"), [
    pytest.param(["--end-lr", "inf"], ["--end-lr inf", "need 0 < start-lr < end-lr"], id="end-inf"),
    pytest.param(["--start-lr", "1e300", "--end-lr", "1e308"], ["--start-lr 1e+300", "end-lr <= 1e+10"], id="huge"),
    pytest.param(["--start-lr", "1e-320", "--end-lr", "1e10"], ["--start-lr", "finite"], id="ratio-overflows"),
    pytest.param(["--start-lr", "nan"], ["--start-lr nan"], id="start-nan"),
    pytest.param(["--start-lr", "1", "--end-lr", "0.1"], ["--start-lr 1 / --end-lr 0.1"], id="reversed"),
    pytest.param(["--device", "gpu"], ["--device 'gpu'", "choose auto, cpu or cuda"], id="device"),
])
def test_lr_find_with_a_ramp_that_cannot_run_is_one_line_exit_2(tmp_path: Path, args: list[str], words: list[str]) -> None:
    spec = tmp_path / "s.toml"
    spec.write_text('name = "s"\n[data]\nname = "wine"\n')
    line = _one_error_line(_tuner("lr-find", str(spec), "--out", str(tmp_path / "out"), *args, cwd=tmp_path))
    for word in words:
        assert word in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]


@pytest.mark.parametrize(("start_lr", "end_lr"), [(1e-7, float("inf")), (1e300, 1e308), (0.0, 1.0), (1.0, 1.0)])
def test_the_library_refuses_a_ramp_that_cannot_run(start_lr: float, end_lr: float) -> None:
    # Checked before the spec is even read: a path that does not exist is never looked at.
    with pytest.raises(LRFindInputError, match="need 0 < start-lr < end-lr"):
        lr_find("no/such/spec.toml", start_lr=start_lr, end_lr=end_lr)


def test_the_library_refuses_an_unknown_device() -> None:
    with pytest.raises(DeviceError, match="choose auto, cpu or cuda"):
        lr_find("no/such/spec.toml", device="gpu")


def test_a_study_name_with_markup_and_emoji_codes_is_printed_as_typed(tmp_path: Path) -> None:
    name = "[bold]x[red] :x:"
    spec = tmp_path / "s.toml"
    spec.write_text(f'name = "{name}"\n[data]\nname = "wine"\n[model]\nwidth = 4\n[train]\nepochs = 1\n'
                    "[stages.lr]\ntrials = 1\n[stages.shape]\ntrials = 1\nwidth = [4, 4]\ndepth = [1, 1]\n")
    result = _tuner("study", str(spec), "--storage", f"sqlite:///{tmp_path / 's.db'}", "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"study {name} " in result.stdout  # the summary's title, as typed
    assert f"stage '{name}" not in result.stdout and "\N{CROSS MARK}" not in result.stdout
    assert optuna.get_all_study_names(f"sqlite:///{tmp_path / 's.db'}") == [f"{name}/lr", f"{name}/shape"]
