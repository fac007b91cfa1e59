"""The Python API as a notebook uses it: a progress bar by default, a dict spec with callables, and a study
run from a script's or notebook's ``__main__`` refused, with what to do, where its functions cannot be found."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from sklearn.datasets import load_wine
from torch import nn

import tuner
from tuner.inputs.usercode import spec_with_callables

REPO = Path(tuner.__file__).resolve().parents[1]
TINY = {"train": {"epochs": 2, "batch_size": 32}, "model": {"width": 4},
        "stages": {"lr": {"trials": 3, "lr_min": 1e-3, "lr_max": 0.5}, "shape": {"trials": 2, "width": [4, 8]}}}


def load(seed: int) -> dict[str, object]:
    x, y = load_wine(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    return {"train": (x[:130], y[:130]), "val": (x[130:], y[130:]), "task": "classification"}


def make_net(input_shape: tuple[int, ...], n_outputs: int, width: int, depth: int) -> nn.Module:
    return nn.Sequential(nn.Linear(input_shape[-1], width), nn.ReLU(), nn.Linear(width, n_outputs))


def test_run_study_shows_a_bar_per_stage_by_default_and_a_reporter_or_progress_false_replaces_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = f"sqlite:///{tmp_path / 'bar.db'}"
    result = tuner.run_study({"name": "bar", "data": {"name": "wine"}, **TINY}, storage=storage, device="cpu")
    shown = capsys.readouterr()
    assert "stage lr: 100%" in shown.err and "3/3" in shown.err and "stage shape: 100%" in shown.err  # tqdm's bars
    assert f"best {result.stages['lr'].best_value:.4g}" in shown.err
    assert "stage lr done: " in shown.err and "stage shape done: " in shown.err  # the messages, above the bars
    assert shown.out == ""  # standard output stays the caller's own

    tuner.run_study({"name": "bar2", "data": {"name": "wine"}, **TINY}, storage=storage, device="cpu", progress=False)
    assert capsys.readouterr() == ("", "")

    tuner.run_study({"name": "bar3", "data": {"name": "wine"}, **TINY}, storage=storage, device="cpu",
                    reporter=tuner.ConsoleReporter())  # no arguments: rich's console on standard output
    shown = capsys.readouterr()
    assert "stage lr done: " in shown.out and "stage shape done: " in shown.out
    assert "stage lr: 100%" not in shown.err  # the reporter given replaces the bar


def test_a_dict_spec_with_a_loader_and_a_model_needs_no_data_table_or_family(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'dict.db'}"
    result = tuner.run_study({"name": "dict", **TINY}, storage=storage, device="cpu", loader=load, model=make_net,
                             progress=False)
    assert result.best_value is not None
    spec = spec_with_callables({"name": "dict", **TINY}, loader=load, model=make_net)
    assert (spec.data.name, spec.data.loader) == ("python", f"{__name__}:load")
    assert spec.model.family == f"{__name__}:make_net" and spec.model.width == 4
    assert spec_with_callables({"name": "dict", "data": {"name": "python"}}, loader=load).data.loader == f"{__name__}:load"
    # The callables' study, written the way it was run, is the same study: it resumes (nothing to run).
    again = tuner.run_study({"name": "dict", **TINY}, storage=storage, device="cpu", loader=load, model=make_net,
                            progress=False)
    assert again == result


@pytest.mark.parametrize(("table", "field"), [({"data": {"name": "digits"}}, "data.name"),
                                              ({"model": {"family": "lstm"}}, "model.family")])
def test_a_dict_that_names_other_data_or_model_than_the_callables_is_refused_naming_the_field(
    table: dict[str, dict[str, str]], field: str
) -> None:
    with pytest.raises(tuner.SpecError, match=f"field '{field}'.*leave {field} out of the dict"):
        spec_with_callables({"name": "clash", **table}, loader=load, model=make_net)


SCRIPT = """
import sys
import numpy as np
import tuner
from sklearn.datasets import load_wine
from torch import nn


def load(seed):
    x, y = load_wine(return_X_y=True)  # sorted by class: every fourth row to validation
    val = np.arange(len(y)) % 4 == 0
    return {"train": (x[~val], y[~val]), "val": (x[val], y[val]), "task": "classification"}


def make_net(input_shape, n_outputs, width, depth):
    return nn.Sequential(nn.Linear(input_shape[-1], width), nn.ReLU(), nn.Linear(width, n_outputs))


storage, spec, out = sys.argv[1:]
tuner.run_study(spec, storage=storage, device="cpu", model=make_net, loader=load, progress=False)
best = tuner.write_best("frommain", storage, out, device="cpu", model=make_net, loader=load)
print("REFIT", best.metrics["validation"]["value"], best.metrics["stored_value"])
"""


def test_a_study_run_from_a_scripts_main_is_refused_from_the_command_line_saying_why_and_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "run.py").write_text(SCRIPT)
    spec = tmp_path / "frommain.toml"
    spec.write_text('name = "frommain"\n[model]\nwidth = 4\n[train]\nepochs = 2\n'
                    '[stages.lr]\ntrials = 3\n[stages.shape]\ntrials = 2\nwidth = [4, 8]\n')
    storage = f"sqlite:///{tmp_path / 'main.db'}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "PYTHONWARNINGS": "ignore"}

    def run(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *command], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)

    script = run("run.py", storage, str(spec), str(tmp_path / "best"))
    assert script.returncode == 0, script.stderr
    refit, stored = (float(v) for v in script.stdout.split("REFIT")[1].split())
    assert refit == pytest.approx(stored)  # write_best took the script's callables, as run_study did

    for args in (["best", "frommain", "--storage", storage, "--out", str(tmp_path / "again")],
                 ["study", str(spec), "--storage", storage, "--device", "cpu"]):
        done = run("-m", "tuner.cli", *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr, done.stderr
        assert "'__main__:" in lines[0] and "defined in the script or notebook that ran the study" in lines[0]
        assert "tuner.run_study(..., " in lines[0] and "move " in lines[0]  # what to do
    assert not (tmp_path / "again").exists()

    # The winner, loaded in another process: the factory it was built by is given again (a new user's try; it
    # was only found by reading the source), and without it the error says how.
    load = ("import sys, numpy as np, tuner\nfrom torch import nn\n"
            "def build(input_shape, n_outputs, width, depth):  # another name: this __main__ has no make_net\n"
            "    return nn.Sequential(nn.Linear(input_shape[-1], width), nn.ReLU(), nn.Linear(width, n_outputs))\n"
            "from sklearn.datasets import load_wine\n"
            "model = tuner.load_model(sys.argv[1], **({'model': build} if sys.argv[2] == 'given' else {}))\n"
            "print('PREDICTED', len(model.predict(load_wine(return_X_y=True)[0][:5])))\n")
    (tmp_path / "use.py").write_text(load)
    given = run("use.py", str(tmp_path / "best"), "given")
    assert given.returncode == 0 and "PREDICTED 5" in given.stdout, given.stderr
    missing = run("use.py", str(tmp_path / "best"), "not given")
    assert missing.returncode != 0 and "tuner.load_model(folder, model=make_net)" in missing.stderr, missing.stderr


def test_run_study_takes_a_name_as_the_command_lines_name_option_does(tmp_path: Path) -> None:
    spec = {"name": "spec-name", "data": {"name": "wine"}, "model": {"width": 4}, "train": {"epochs": 1, "batch_size": 32},
            "stages": {"lr": {"trials": 2}, "shape": {"trials": 1, "width": [4, 4], "depth": [1, 1]}}}
    storage = f"sqlite:///{tmp_path / 'n.db'}"
    result = tuner.run_study(spec, storage=storage, device="cpu", progress=False, name="second")
    assert result.name == "second"
    assert sorted(s.study_name for s in optuna.get_all_study_summaries(storage)) == ["second/lr", "second/shape"]
    with pytest.raises(ValueError, match=r"name='a/b': must be non-empty and must not contain '/'"):
        tuner.run_study(spec, storage=storage, device="cpu", progress=False, name="a/b")
