"""Start-up: `tuner --help` and the resume of a finished study answer without torch or scikit-learn.

Each command runs in a process of its own, as a user runs it, and says at exit which of the heavy
libraries it imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

import tuner

REPO = Path(tuner.__file__).resolve().parents[1]
HEAVY = ("torch", "sklearn")

# Runs the CLI as `python -m tuner.cli` does and, at exit, prints which heavy libraries it imported.
PROBE = """
import atexit, runpy, sys
atexit.register(lambda: print("IMPORTED:", " ".join(m for m in {heavy!r} if m in sys.modules) or "none"))
sys.argv = ["tuner", *{args!r}]
runpy.run_module("tuner.cli", run_name="__main__")
"""


def _tuner(*args: str, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``tuner ARGS`` in a new process: (the process, the heavy libraries it imported)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "PYTHONWARNINGS": "ignore", "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY, args=list(args))], capture_output=True,
                          text=True, timeout=300, cwd=cwd, env=env)
    said = [line for line in done.stdout.splitlines() if line.startswith("IMPORTED:")]
    assert said, done.stdout + done.stderr
    imported = set(said[-1].removeprefix("IMPORTED:").split()) - {"none"}
    return done, imported


def _counts(storage: str, name: str) -> dict[str, int]:
    return {s: len(optuna.load_study(study_name=f"{name}/{s}", storage=storage).trials) for s in ("lr", "shape")}


@pytest.mark.parametrize("args", [["--help"], ["study", "--help"], ["best", "--help"]])
def test_help_imports_neither_torch_nor_sklearn(args: list[str]) -> None:
    done, imported = _tuner(*args)
    assert done.returncode == 0, done.stderr
    assert "Usage" in done.stdout
    assert imported == set()


def test_resuming_a_finished_study_reads_it_back_without_torch_or_sklearn(tiny_spec: Path, storage_url: str) -> None:
    trained = tuner.run_study(tiny_spec, storage=storage_url, device="cpu")
    before = _counts(storage_url, "tiny")

    done, imported = _tuner("study", str(tiny_spec), "--storage", storage_url, "--device", "cpu")

    assert done.returncode == 0, done.stdout + done.stderr
    assert imported == set()
    assert "study 'tiny' is finished (stage lr 4/4, stage shape 3/3 trials): nothing to run" in done.stdout
    assert f"{trained.stages['shape'].best_value:.4g}" in done.stdout  # the summary table, from the storage
    assert _counts(storage_url, "tiny") == before  # nothing trained, nothing written


def test_the_stored_result_of_a_finished_study_is_the_one_the_run_returned(tiny_spec: Path, storage_url: str) -> None:
    trained = tuner.run_study(tiny_spec, storage=storage_url, device="cpu")
    messages: list[str] = []

    class Said(tuner.Reporter):
        def message(self, text: str) -> None:
            messages.append(text)

    read_back = tuner.run_study(tiny_spec, storage=storage_url, device="cpu", reporter=Said())

    assert read_back == trained  # every stage's summary, the handed-on rate and the storage, field for field
    assert any("nothing to run" in m for m in messages)


def test_a_finished_study_whose_spec_changed_is_still_refused(tiny_spec: Path, storage_url: str) -> None:
    tuner.run_study(tiny_spec, storage=storage_url, device="cpu")
    tiny_spec.write_text(tiny_spec.read_text().replace("width = [4, 16]", "width = [4, 32]"))

    done, _ = _tuner("study", str(tiny_spec), "--storage", storage_url, "--device", "cpu")

    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "other search settings" in done.stderr and "stages.shape.width" in done.stderr
    assert "nothing to run" not in done.stdout


MODEL_MODULE = '''
from torch import nn


def make_net(input_shape, n_outputs, width, depth):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[-1], width), nn.ReLU(), nn.Linear(width, n_outputs))
'''


def test_a_finished_study_of_your_own_model_resumes_without_importing_it_and_refuses_it_edited(tmp_path: Path) -> None:
    (tmp_path / "startup_net.py").write_text(MODEL_MODULE)
    spec = tmp_path / "own.toml"
    spec.write_text('name = "own"\n[data]\nname = "wine"\n[model]\nfamily = "startup_net:make_net"\nwidth = 4\n'
                    '[train]\nepochs = 2\n[stages.lr]\ntrials = 2\n[stages.shape]\ntrials = 2\nwidth = [4, 8]\n')
    storage = f"sqlite:///{tmp_path / 'own.db'}"
    first, _ = _tuner("study", str(spec), "--storage", storage, "--device", "cpu", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr

    again, imported = _tuner("study", str(spec), "--storage", storage, "--device", "cpu", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to run" in again.stdout
    assert imported == set()  # the module's identity is its file's hash: read, not imported (it imports torch)

    (tmp_path / "startup_net.py").write_text(MODEL_MODULE + "\n# a comment: the file changed\n")
    edited, _ = _tuner("study", str(spec), "--storage", storage, "--device", "cpu", cwd=tmp_path)
    assert edited.returncode == 2, edited.stdout + edited.stderr
    assert "other code or data" in edited.stderr and "model.family" in edited.stderr
    assert "nothing to run" not in edited.stdout
