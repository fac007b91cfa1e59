"""`tuner best`'s folder runs as its header says: `tuner study best/best.toml` from any folder.

A study whose model factory is the user's own ``module:function`` beside its spec: the best folder
holds a copy of that module, so its ``best.toml`` trains the winner again to the stored value from
another folder, with the original module gone; and it says only settings that act.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

import tuner
from tuner.best.folder import FolderError

ROOT = Path(__file__).resolve().parent.parent

FACTORY = '''from torch import nn

HIDDEN_ACTIVATION = nn.ReLU  # a constant beside the factory: part of what the study ran


def make_mlp(input_shape, n_outputs, width, depth):
    layers, size = [nn.Flatten()], input_shape[-1]
    for _ in range(depth):
        layers += [nn.Linear(size, width), HIDDEN_ACTIVATION()]
        size = width
    return nn.Sequential(*layers, nn.Linear(size, n_outputs))
'''

SPEC = '''name = "rerun"
[data]
name = "wine"
[model]
family = "rerunnet:make_mlp"
width = 4
[train]
optimizer = "adam"
epochs = 2
batch_size = 32
[stages.lr]
trials = 3
lr_min = 1e-3
lr_max = 0.1
[stages.shape]
trials = 2
width = [4, 8]
depth = [1, 2]
'''


def _tuner(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``tuner ARGS`` as its own process, from ``cwd``, the way a user runs it."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TUNER_")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "tuner.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def best_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, dict]]:
    """(project folder, best folder, metrics) of a tiny study with the user's own factory, run as a user would."""
    base = tmp_path_factory.mktemp("rerun")
    project = base / "project"
    project.mkdir()
    (project / "rerunnet.py").write_text(FACTORY)
    (project / "spec.toml").write_text(SPEC)
    storage = f"sqlite:///{project / 'tuner.db'}"
    study = _tuner("study", "spec.toml", "--storage", storage, "--device", "cpu", cwd=project)
    assert study.returncode == 0, study.stderr
    best = _tuner("best", "rerun", "--storage", storage, "--out", str(base / "best"), "--device", "cpu", cwd=project)
    assert best.returncode == 0, best.stderr
    assert "rerunnet.py" in best.stdout  # said where the modules went
    yield project, base / "best", json.loads((base / "best" / "metrics.json").read_text())


def test_best_toml_from_another_folder_reproduces_the_stored_value_with_the_users_module_copied(
        best_folder: tuple[Path, Path, dict], tmp_path: Path) -> None:
    project, best, metrics = best_folder
    assert (best / "rerunnet.py").read_text() == FACTORY
    assert "rerunnet.py" in metrics["manifest"]["files"]  # written and checked with the rest of the folder
    assert f"tuner study {best / 'best.toml'}" in (best / "best.toml").read_text()  # the folder as `--out` gave it
    assert "Not copied" not in (best / "best.toml").read_text()
    original = project / "rerunnet.py"
    original.rename(project / "rerunnet.py.away")  # only the copy is left to import
    try:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        again_url = f"sqlite:///{elsewhere / 'again.db'}"
        again = _tuner("study", str(best / "best.toml"), "--storage", again_url, "--device", "cpu", cwd=elsewhere)
        assert again.returncode == 0, again.stderr
        shape = optuna.load_study(study_name="rerun-best/shape", storage=again_url)
        assert shape.best_value == pytest.approx(metrics["stored_value"], abs=1e-9)
        assert shape.best_value == pytest.approx(metrics["validation"]["value"], abs=1e-9)
        try:
            model = tuner.load_model(best)  # the factory from the copy beside model.pt
            assert model.model[1].out_features == metrics["params"]["width"]
        finally:
            sys.modules.pop("rerunnet", None)
    finally:
        (project / "rerunnet.py.away").rename(original)


def test_best_toml_leaves_out_settings_that_do_not_act(best_folder: tuple[Path, Path, dict]) -> None:
    _, best, metrics = best_folder
    table = tomllib.loads((best / "best.toml").read_text())
    # wine is bundled: nothing of the adding problem, a CSV or a loader; adam has no momentum.
    assert set(table["data"]) == {"name", "validation_fraction", "test_fraction"}
    assert "momentum" not in table["train"] and table["train"]["optimizer"] == "adam"
    assert table["stages"]["audit"] == {"trials": 0}
    assert "step_every" not in table["stages"]["shape"] or metrics["params"]["schedule"] == "step"
    assert tuner.load_spec(best / "best.toml").train.optimizer == "adam"  # still a valid spec


def test_an_edited_copy_of_a_module_makes_the_folder_mixed(best_folder: tuple[Path, Path, dict], tmp_path: Path) -> None:
    import shutil

    _, best, _ = best_folder
    copy = tmp_path / "best"
    shutil.copytree(best, copy)
    (copy / "rerunnet.py").write_text(FACTORY.replace("nn.ReLU", "nn.Tanh"))
    with pytest.raises(FolderError, match="mixed.*rerunnet.py"):
        tuner.load_model(copy)
