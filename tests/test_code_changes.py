"""A study whose own code changed is refused, and the refusal names what changed.

The gate is the hash of each module file the spec's functions come from (a helper or a constant
edited beside a function changes its results too); the message says, per changed file, which spec
fields it holds. A function without a source file (``python -``, a notebook cell) is known by its
compiled code, defaults, closure and the globals it reads, not by its name; a study stored before
that is compared the way it was stored.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tuner.inputs.code_hash import code_sha256

ROOT = Path(__file__).resolve().parent.parent

BOTH = '''from sklearn.datasets import load_wine
from sklearn.model_selection import train_test_split
from torch import nn

WIDTH_FACTOR = 1


def load(seed):
    x, y = load_wine(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    return {"train": (x_train, y_train), "val": (x_val, y_val), "task": "classification"}


def make(input_shape, n_outputs, width, depth):
    return nn.Sequential(nn.Linear(input_shape[-1], width * WIDTH_FACTOR), nn.ReLU(), nn.Linear(width * WIDTH_FACTOR, n_outputs))
'''

SCORE = '''def error(outputs, targets):
    return float((outputs.argmax(-1) != targets).float().mean())
'''

SPEC = '''name = "twofiles"
[data]
name = "python"
loader = "both:load"
[model]
family = "both:make"
width = 4
[train]
metric = "score:error"
epochs = 1
[stages.lr]
trials = 2
[stages.shape]
trials = 1
width = [4, 8]
'''


def _tuner(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TUNER_")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "tuner.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_an_edited_module_names_the_fields_it_holds_one_clause_per_changed_file(tmp_path: Path) -> None:
    (tmp_path / "both.py").write_text(BOTH)
    (tmp_path / "score.py").write_text(SCORE)
    (tmp_path / "spec.toml").write_text(SPEC)
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert (first := _tuner("study", "spec.toml", "--storage", url, "--device", "cpu", cwd=tmp_path)).returncode == 0, first.stderr

    # A constant beside the factory: the file changed, so both fields it holds are named, once.
    (tmp_path / "both.py").write_text(BOTH.replace("WIDTH_FACTOR = 1", "WIDTH_FACTOR = 2"))
    edited = _tuner("study", "spec.toml", "--storage", url, "--device", "cpu", cwd=tmp_path)
    assert edited.returncode == 2 and "Traceback" not in edited.stderr
    assert len(edited.stderr.strip().splitlines()) == 1
    assert "both.py changed since its trials ran; it holds model.family (both:make) and data.loader (both:load)" in edited.stderr
    assert edited.stderr.count("both.py") == 1 and "score" not in edited.stderr  # the unchanged metric is not named

    (tmp_path / "score.py").write_text(SCORE + "# edited\n")
    two = _tuner("study", "spec.toml", "--storage", url, "--device", "cpu", cwd=tmp_path)
    assert two.returncode == 2
    assert "score.py changed since its trials ran; it holds train.metric (score:error)" in two.stderr
    assert "both.py changed since its trials ran; it holds model.family (both:make) and data.loader (both:load)" in two.stderr

    (tmp_path / "both.py").write_text(BOTH)
    (tmp_path / "score.py").write_text(SCORE)  # put back: it resumes
    assert (back := _tuner("study", "spec.toml", "--storage", url, "--device", "cpu", cwd=tmp_path)).returncode == 0, back.stderr


# A study from `python -`: its factory has no source file. DROPOUT is edited between runs.
STDIN_SCRIPT = '''
import sys, tuner
from torch import nn
HIDDEN = 2
def hidden(width):
    return width * HIDDEN
def factory(input_shape, n_outputs, width, depth, dropout=DROPOUT):
    return nn.Sequential(nn.Linear(input_shape[-1], hidden(width)), nn.Dropout(dropout), nn.ReLU(), nn.Linear(hidden(width), n_outputs))
spec = tuner.spec_from_dict({"name": "fileless", "data": {"name": "wine"}, "model": {"width": 4}, "train": {"epochs": 1},
                             "stages": {"lr": {"trials": 2}, "shape": {"trials": 1, "width": [4, 8]}}})
url = "sqlite:///fileless.db"
try:
    result = tuner.run_study(spec, storage=url, device="cpu", model=factory)
    print("ran", len(tuner.load_stage_trials("fileless", url)["lr"]))
except tuner.StudyMismatchError as error:
    print("refused", error)
try:
    tuner.write_best("fileless", url, "best", device="cpu", model=factory)
    print("best written")
except ValueError as error:
    print("best refused", error)
'''


def _python_stdin(dropout: float, cwd: Path) -> list[str]:
    done = subprocess.run([sys.executable, "-"], input=STDIN_SCRIPT.replace("DROPOUT", repr(dropout)), capture_output=True,
                          text=True, cwd=cwd, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()


def test_a_function_without_a_source_file_is_known_by_its_code_edited_refused_unchanged_resumed(tmp_path: Path) -> None:
    assert _python_stdin(0.0, tmp_path) == ["ran 2", "best written"]
    stored = optuna.load_study(study_name="fileless/lr", storage=f"sqlite:///{tmp_path / 'fileless.db'}")
    assert stored.user_attrs["settings"]["identity"]["model.family"]["scheme"] == "code/1"
    # best.toml cannot hold a copy of such a function: its header says how to run it all the same.
    assert "Not copied (not a file beside the study's spec): model.family = '__main__:factory'" in (tmp_path / "best" / "best.toml").read_text()
    assert _python_stdin(0.0, tmp_path) == ["ran 2", "best written"]  # the same code in a new process: it resumes
    refused, best = _python_stdin(0.5, tmp_path)  # only a default changed: once, it resumed silently
    assert refused.startswith("refused") and "model.family (__main__:factory, which has no source file)" in refused
    assert best.startswith("best refused") and "model.family" in best  # no other model trained as the winner


def test_a_fileless_function_stored_by_name_before_code_hashes_resumes_as_it_was_stored(tmp_path: Path) -> None:
    assert _python_stdin(0.0, tmp_path) == ["ran 2", "best written"]
    url = f"sqlite:///{tmp_path / 'fileless.db'}"
    for name in ("fileless/lr", "fileless/shape"):  # as tuner stored it before: the name's hash, no scheme
        study = optuna.load_study(study_name=name, storage=url)
        settings = study.user_attrs["settings"]
        settings["identity"]["model.family"] = {"module": "__main__", "function": "factory",
                                                "sha256": hashlib.sha256(b"__main__:factory").hexdigest()}
        study.set_user_attr("settings", settings)
    assert _python_stdin(0.0, tmp_path) == ["ran 2", "best written"]  # compared by name, as stored: not refused


def _cell(source: str, module: str = "__main__", filename: str = "<cell 1>") -> object:
    """The function ``f`` a notebook cell defines (no file behind it)."""
    namespace: dict = {"__name__": module}
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 -- the test's own code
    return namespace["f"]


@pytest.mark.parametrize(("before", "after"), [
    ("def f(x, rate=0.1):\n    return x * rate\n", "def f(x, rate=0.2):\n    return x * rate\n"),  # a default
    ("def f(x, *, rate=0.1):\n    return x * rate\n", "def f(x, *, rate=0.2):\n    return x * rate\n"),  # a keyword-only one
    ("def f(x):\n    return x * 0.1\n", "def f(x):\n    return x * 0.2\n"),  # a constant in the code
    ("def f(x):\n    return list(map(lambda v: v + 1, x))\n", "def f(x):\n    return list(map(lambda v: v + 2, x))\n"),  # a nested lambda
    ("K = 3\ndef g(x):\n    return x * K\ndef f(x):\n    return g(x)\n",
     "K = 4\ndef g(x):\n    return x * K\ndef f(x):\n    return g(x)\n"),  # a constant a helper beside it reads
    ("def outer(k=3):\n    def f(x):\n        return x * k\n    return f\nf = outer()\n",
     "def outer(k=3):\n    def f(x):\n        return x * k\n    return f\nf = outer(4)\n"),  # a closure's value
    ("class Net:\n    def forward(self, x):\n        return x\ndef f(x):\n    return Net()\n",
     "class Net:\n    def forward(self, x):\n        return -x\ndef f(x):\n    return Net()\n"),  # a class beside it
])
def test_a_code_hash_sees_each_kind_of_edit(before: str, after: str) -> None:
    assert code_sha256(_cell(before)) != code_sha256(_cell(after))


def test_a_code_hash_is_the_same_for_the_same_code_run_again_elsewhere() -> None:
    source = "S = {'a', 'b'}\ndef f(x, rate=0.1):\n    return [v * rate for v in x if v not in S]\n"
    first = _cell(source)
    again = _cell("\n\n# the cell moved\n" + source, filename="<cell 7>")
    for _ in range(100):  # run enough for Python to specialise its bytecode in place
        first([1.0, 2.0])
    assert code_sha256(first) == code_sha256(again)
