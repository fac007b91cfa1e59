"""Your own model, data and loop from the CLI, resumed, refused when changed, and the winner out.

The modules are the README's example in ``examples/``, copied to a temporary folder so that a test
can edit them; every run goes through ``python -m tuner.cli`` as a user's would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

import tuner

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ROOT = EXAMPLES.parent

SMALL = {"trials = 12": "trials = 4", "trials = 10": "trials = 3", "epochs = 6": "epochs = 2"}


def _example(tmp_path: Path, spec_text: str | None = None) -> Path:
    folder = tmp_path / "mine"
    shutil.copytree(EXAMPLES, folder, ignore=shutil.ignore_patterns("__pycache__"))
    spec = folder / "my.toml"
    text = spec_text or spec.read_text()
    for old, new in SMALL.items():
        text = text.replace(old, new)
    spec.write_text(text)
    return spec


def _tuner(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TUNER_")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "tuner.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_a_custom_cnn_and_loader_run_both_stages_resume_and_an_edited_module_is_refused(tmp_path: Path) -> None:
    spec = _example(tmp_path)
    text = spec.read_text().replace('loop = "mytrain:fit"', "")  # tuner's own loop on the user's model
    spec.write_text(text)
    url = f"sqlite:///{tmp_path / 'mine.db'}"
    first = _tuner("study", str(spec), "--storage", url, "--device", "cpu", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    counts = {stage: len(optuna.load_study(study_name=f"my-study/{stage}", storage=url).trials) for stage in ("lr", "shape")}
    assert counts == {"lr": 4, "shape": 3}
    shape = optuna.load_study(study_name="my-study/shape", storage=url)
    # Every shape trial trained to its end or was stopped by the stage's Hyperband pruner; none failed.
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in shape.trials)
    assert any(t.state == TrialState.COMPLETE for t in shape.trials)
    assert shape.user_attrs["settings"]["identity"]["model.family"]["module"] == "mynet"
    # The rate rule is for the built-in families: the user's shapes start at the calibrated rate, and the
    # hand-off says no rule (its width is what mynet makes of it).
    assert "lr_transfer" not in shape.user_attrs and all("lr_move" not in t.user_attrs for t in shape.trials)
    assert "moves it to each shape" not in first.stdout + first.stderr
    assert all(t.user_attrs["trained_lr"] == pytest.approx(t.user_attrs["lr"] * t.params.get("lr_scale", 1.0))
               for t in shape.trials)

    again = _tuner("study", str(spec), "--storage", url, "--device", "cpu", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert {stage: len(optuna.load_study(study_name=f"my-study/{stage}", storage=url).trials) for stage in counts} == counts

    net = spec.parent / "mynet.py"
    net.write_text(net.read_text().replace("kernel_size=3, padding=1", "kernel_size=3, padding=1, bias=False"))
    edited = _tuner("study", str(spec), "--storage", url, "--device", "cpu", cwd=tmp_path)
    assert edited.returncode == 2, edited.stderr
    assert len(edited.stderr.strip().splitlines()) == 1
    assert "model.family" in edited.stderr and "mynet" in edited.stderr
    assert {stage: len(optuna.load_study(study_name=f"my-study/{stage}", storage=url).trials) for stage in counts} == counts


def test_a_custom_loop_gets_the_trials_learning_rate_and_its_reports_reach_the_storage(tmp_path: Path) -> None:
    spec = _example(tmp_path)
    spy = spec.parent / "mytrain.py"
    spy.write_text(spy.read_text() + '''

def spying_fit(model, train, val, optimizer, epochs, device, report, loss, params):
    import json, os
    with open(os.environ["SPY_FILE"], "a") as out:
        out.write(json.dumps({"optimizer_lr": optimizer.param_groups[0]["lr"], "params": params}) + "\\n")
    for epoch in range(1, epochs + 1):
        report(epoch, 1.0 / (epoch + optimizer.param_groups[0]["lr"]))
''')
    spec.write_text(spec.read_text().replace('"mytrain:fit"', '"mytrain:spying_fit"'))
    url = f"sqlite:///{tmp_path / 'loop.db'}"
    os.environ["SPY_FILE"] = str(tmp_path / "spy.jsonl")
    try:
        run = _tuner("study", str(spec), "--storage", url, "--device", "cpu", cwd=tmp_path)
    finally:
        del os.environ["SPY_FILE"]
    assert run.returncode == 0, run.stderr
    calls = [json.loads(line) for line in (tmp_path / "spy.jsonl").read_text().splitlines()]
    lr_trials = optuna.load_study(study_name="my-study/lr", storage=url).trials
    assert len(calls) == 4 + 3
    # The lr stage: each call's optimizer starts at its trial's sampled rate (constant schedule).
    assert sorted(c["optimizer_lr"] for c in calls if "lr" in c["params"]) == pytest.approx(sorted(t.params["lr"] for t in lr_trials))
    for trial in lr_trials:
        lr = trial.params["lr"]
        assert trial.intermediate_values == pytest.approx({1: 1 / (1 + lr), 2: 1 / (2 + lr)})
        assert trial.user_attrs["learning_curve"] == pytest.approx([1 / (1 + lr), 1 / (2 + lr)])
        assert trial.value == pytest.approx(1 / (2 + lr))


def test_tuner_best_writes_three_files_and_load_model_predicts_raw_inputs_as_scored(tmp_path: Path) -> None:
    spec = _example(tmp_path)
    url = f"sqlite:///{tmp_path / 'best.db'}"
    assert _tuner("study", str(spec), "--storage", url, "--device", "cpu", cwd=tmp_path).returncode == 0
    out = tmp_path / "winner"
    best = _tuner("best", "my-study", "--storage", url, "--out", str(out), "--device", "cpu", cwd=tmp_path)
    assert best.returncode == 0, best.stderr
    # The three files, and the modules the spec names, copied for best.toml to import from beside it.
    assert sorted(p.name for p in out.iterdir()) == ["best.toml", "metrics.json", "model.pt", "mydata.py", "mynet.py", "mytrain.py"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["validation"]["value"] == pytest.approx(metrics["stored_value"])
    # The trials were compared by the loop's reports: the line says which number is which (a new user's loop
    # reported accuracy, a metric scored it in percent, and both read "your metric").
    assert metrics["value_is"] == "your loop's last report"
    validation = metrics["validation"]
    assert (f"validation your loop's value {validation['value']:.4g}, error {validation['error']:.4g}, "
            f"loss {validation['loss']:.4g} (stored your loop's value: {metrics['stored_value']:.4g})") in best.stdout

    sys.path.insert(0, str(spec.parent))
    try:
        import mydata  # the user's own loader: raw inputs, as the user has them

        parts = mydata.load(seed=0)
    finally:
        sys.path.remove(str(spec.parent))
        sys.modules.pop("mydata", None)
    model = tuner.load_model(out)
    x_val, y_val = parts["val"]
    assert np.mean(model.predict(x_val) != y_val) == pytest.approx(metrics["validation"]["error"], abs=1e-6)
    x_test, y_test = parts["test"]
    assert np.mean(model.predict(torch.as_tensor(x_test)) != y_test) == pytest.approx(metrics["test"]["error"], abs=1e-6)


def test_test_rows_of_a_loader_never_reach_a_stage(tmp_path: Path) -> None:
    seen: set[bytes] = set()

    def spy_model(input_shape: tuple[int, ...], n_outputs: int, width: int, depth: int) -> torch.nn.Module:
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(input_shape)), n_outputs))
        net.register_forward_pre_hook(lambda _m, args: seen.update(row.numpy().tobytes() for row in args[0].detach()))
        return net

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 5))
    y = (x[:, 0] > 0).astype(int)

    def loader(seed: int) -> dict[str, object]:
        return {"train": (x[:60], y[:60]), "val": (x[60:90], y[60:90]), "test": (x[90:], y[90:]), "task": "classification"}

    spec = tuner.spec_from_dict({"name": "spy", "train": {"epochs": 2},
                                 "stages": {"lr": {"trials": 3}, "shape": {"trials": 2, "width": [4, 8], "depth": [1, 1]}}})
    result = tuner.run_study(spec, storage=f"sqlite:///{tmp_path / 'spy.db'}", device="cpu", model=spy_model, loader=loader)
    assert result.stages["shape"].n_complete == 2
    data = tuner.run_study.__globals__["load_dataset"]  # the same preprocessing the stages saw
    standardised = data(tuner.study.runner.with_callables(spec, loader=loader).data, 0, "", loader)
    rows = lambda t: {r.numpy().tobytes() for r in t}  # noqa: E731
    assert rows(standardised.x_test).isdisjoint(seen)
    assert seen <= rows(standardised.x_train) | rows(standardised.x_val)
    assert len(seen & rows(standardised.x_train)) == 60


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("family", '"nosuch:make"', "no module 'nosuch'"),
    ("family", '"pkg.sub.nosuch:make"', "put pkg/sub/nosuch.py there"),  # a file's path, not its module's dotted name
    ("family", '"mynet:nosuch"', "module 'mynet' has no 'nosuch'"),
    ("family", '"mynet:nn"', "is not callable"),
    ("family", '"broken:make"', "returned an int"),
    ("family", '"broken:wrong_outputs"', "return (batch, n_outputs) = (2, 10)"),
    ("family", '"broken:raises"', "raised RuntimeError: no GPU here"),
    # Models that pass two samples in evaluation mode and fail only once they train (a new user's tries):
    ("family", '"broken:detached"', "in training its outputs carry no gradient"),
    ("family", '"broken:only_in_training"', "fails a training step (training mode, a batch of"),
    ("family", '"broken:small_batches_only"', "RuntimeError: batches of at most 8 rows"),
    ("family", '"broken:no_weights"', "has no parameters to train"),
    ("loader", '"broken:one_class"', "one class only"),
    ("loader", '"broken:empty"', "'train' part is empty"),
    ("loader", '"broken:a_list"', "returned a list"),
    ("loader", '"broken:fractional"', "fractional targets"),
])
def test_bad_user_code_is_one_line_naming_the_field_and_nothing_is_written(
    tmp_path: Path, field: str, value: str, expected: str
) -> None:
    spec = _example(tmp_path)
    (spec.parent / "broken.py").write_text('''
import numpy as np
from torch import nn

def make(input_shape, n_outputs, width, depth):
    return 3

def wrong_outputs(input_shape, n_outputs, width, depth):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))

def raises(input_shape, n_outputs, width, depth):
    raise RuntimeError("no GPU here")

class Detached(nn.Module):
    def __init__(self):
        super().__init__()
        self.read = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x):
        return self.read(x).detach()

def detached(input_shape, n_outputs, width, depth):
    return Detached()

class OnlyInTraining(Detached):
    def forward(self, x):
        if self.training:
            raise ValueError("a branch for training that was never run")
        return self.read(x)

def only_in_training(input_shape, n_outputs, width, depth):
    return OnlyInTraining()

class SmallBatchesOnly(Detached):
    def forward(self, x):
        if len(x) > 8:
            raise RuntimeError("batches of at most 8 rows")
        return self.read(x)

def small_batches_only(input_shape, n_outputs, width, depth):
    return SmallBatchesOnly()

class NoWeights(nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :10]

def no_weights(input_shape, n_outputs, width, depth):
    return NoWeights()

def one_class(seed):
    x = np.zeros((10, 1, 8, 8))
    return {"train": (x, np.zeros(10)), "val": (x, np.zeros(10)), "task": "classification"}

def empty(seed):
    return {"train": (np.zeros((0, 1, 8, 8)), np.zeros(0)), "val": (np.zeros((2, 1, 8, 8)), [0, 1]), "task": "classification"}

def a_list(seed):
    return [1, 2]

def fractional(seed):
    x = np.random.default_rng(0).normal(size=(20, 1, 8, 8))
    y = np.linspace(0.5, 3.7, 20)
    return {"train": (x, y), "val": (x, y), "task": "classification"}
''')
    key = "family" if field == "family" else "loader"
    text = spec.read_text().replace('loop = "mytrain:fit"', "") if field == "family" else spec.read_text()  # tuner's loop
    lines = [f"{key} = {value}" if line.split("=")[0].strip() == key else line for line in text.splitlines()]
    spec.write_text("\n".join(lines) + "\n")
    db = tmp_path / "bad.db"
    run = _tuner("study", str(spec), "--storage", f"sqlite:///{db}", "--device", "cpu", cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert expected in run.stderr and f"{'model' if field == 'family' else 'data'}.{key}" in run.stderr
    assert not db.exists()


def test_a_csv_edited_in_place_is_a_changed_study(tmp_path: Path) -> None:
    rows = "\n".join(["a,b,label"] + [f"{i},{(i * 7) % 11},{i % 2}" for i in range(60)])
    (tmp_path / "table.csv").write_text(rows + "\n")
    spec = tmp_path / "table.toml"
    spec.write_text('name = "table"\n[data]\nname = "csv"\npath = "table.csv"\ntarget = "label"\n'
                    '[train]\nepochs = 1\n[stages.lr]\ntrials = 2\n[stages.shape]\ntrials = 1\n')
    url = f"sqlite:///{tmp_path / 'csv.db'}"
    assert _tuner("study", str(spec), "--storage", url, "--device", "cpu", cwd=tmp_path).returncode == 0
    (tmp_path / "table.csv").write_text(rows.replace(",0\n", ",1\n", 5) + "\n")  # relabelled in place
    edited = _tuner("study", str(spec), "--storage", url, "--device", "cpu", cwd=tmp_path)
    assert edited.returncode == 2, edited.stderr
    assert "data.path" in edited.stderr and "table.csv" in edited.stderr
    assert len(optuna.load_study(study_name="table/lr", storage=url).trials) == 2


class _Rows(torch.utils.data.Dataset):
    """A data set read item by item, as one that does not fit in memory would be."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
        self.reads = 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.reads += 1
        return self.x[index], self.y[index]


def test_data_given_as_torch_datasets_trains_through_a_dataloader_one_trial_at_a_time(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(160, 6))
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    parts = {"train": _Rows(x[:100], y[:100]), "val": _Rows(x[100:130], y[100:130]), "test": _Rows(x[130:], y[130:])}

    def loader(seed: int) -> dict[str, object]:
        return {**parts, "task": "classification", "n_classes": 2}

    spec = tuner.spec_from_dict({"name": "streamed", "train": {"epochs": 3, "batch_size": 16},
                                 "stages": {"lr": {"trials": 4, "lr_min": 1e-3, "lr_max": 0.5, "batch_trials": 4},
                                            "shape": {"trials": 2, "width": [4, 8], "depth": [1, 1]}}})
    url = f"sqlite:///{tmp_path / 's.db'}"
    result = tuner.run_study(spec, storage=url, device="cpu", loader=loader)
    assert result.stages["lr"].n_complete + result.stages["lr"].n_pruned == 4
    lr_trials = optuna.load_study(study_name="streamed/lr", storage=url).trials
    assert {t.user_attrs["batched_with"] for t in lr_trials} == {1}  # a DataLoader: no stacked copies
    assert all(len(t.user_attrs["learning_curve"]) == 3 for t in lr_trials if t.state == TrialState.COMPLETE)
    assert parts["train"].reads >= 100 * 3 * 4  # every epoch of every trial read every training item
    assert parts["test"].reads == 0  # no stage looks at the test part

    best = tuner.write_best("streamed", storage=url, out=tmp_path / "best", device="cpu", loader=loader)
    assert best.metrics["test"]["rows"] == 30 and parts["test"].reads >= 30
    model = tuner.load_model(tmp_path / "best")
    predicted = model.predict(x[130:])  # a Dataset's samples are used as given: no standardisation
    assert np.mean(predicted != y[130:]) == pytest.approx(best.metrics["test"]["error"], abs=1e-6)


@pytest.mark.filterwarnings("error:Using a target size:UserWarning")  # MSE broadcasting (batch, 1) against (batch,)
def test_a_users_loop_on_datasets_gets_dataloaders_and_its_return_value_is_the_objective(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(90, 4))
    y = x @ np.array([1.0, -2.0, 0.5, 0.0])
    seen: list[tuple[str, str, int]] = []

    def loader(seed: int) -> tuple[object, object, str]:
        return _Rows(x[:60], y[:60].astype(np.float32)), _Rows(x[60:], y[60:].astype(np.float32)), "regression"

    def fit(model: torch.nn.Module, train: object, val: object, optimizer: torch.optim.Optimizer, epochs: int,
            loss: object) -> float:
        seen.append((type(train).__name__, type(val).__name__, epochs))
        for _ in range(epochs):
            for xb, yb in train:  # type: ignore[attr-defined]
                optimizer.zero_grad()
                loss(model(xb), yb).backward()  # type: ignore[operator]  # (batch, 1) outputs: squeezed for it
                optimizer.step()
        with torch.no_grad():
            return float(sum(((model(xb).squeeze(-1) - yb) ** 2).sum() for xb, yb in val) / 30)  # type: ignore[attr-defined]

    spec = tuner.spec_from_dict({"name": "looped", "train": {"epochs": 2, "batch_size": 10, "optimizer": "adam"},
                                 "stages": {"lr": {"trials": 3, "lr_min": 1e-3, "lr_max": 0.1},
                                            "shape": {"trials": 1, "width": [4, 4], "depth": [1, 1]}}})
    url = f"sqlite:///{tmp_path / 'l.db'}"
    tuner.run_study(spec, storage=url, device="cpu", loader=loader, loop=fit)
    assert seen and all(s == ("DataLoader", "DataLoader", 2) for s in seen)
    for trial in optuna.load_study(study_name="looped/lr", storage=url).trials:
        assert trial.state == TrialState.COMPLETE
        assert trial.user_attrs["learning_curve"] == [pytest.approx(trial.value)]  # returned, not reported: one value


def test_a_factory_a_package_re_exports_is_known_by_the_file_it_is_written_in(tmp_path: Path) -> None:
    package = tmp_path / "reexported"
    package.mkdir()
    (package / "__init__.py").write_text("from .nets import make  # re-exported\n")
    (package / "nets.py").write_text(
        "from torch import nn\n\n\n"
        "def make(input_shape, n_outputs, width, depth):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[-1], width), nn.ReLU(), nn.Linear(width, n_outputs))\n")
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text('name = "reexp"\n[data]\nname = "wine"\n[model]\nfamily = "reexported:make"\nwidth = 4\n'
                         '[train]\nepochs = 1\n[stages.lr]\ntrials = 2\n[stages.shape]\ntrials = 1\nwidth = [4, 8]\n')
    storage = f"sqlite:///{tmp_path / 's.db'}"
    tuner.run_study(spec_path, storage=storage, device="cpu")
    stored = optuna.load_study(study_name="reexp/lr", storage=storage).user_attrs["settings"]["identity"]["model.family"]
    from tuner.inputs.usercode import file_sha256

    assert stored["sha256"] == file_sha256(package / "nets.py")  # not the __init__ that re-exports it
    (package / "nets.py").write_text((package / "nets.py").read_text() + "# edited\n")
    with pytest.raises(tuner.StudyMismatchError):
        tuner.run_study(spec_path, storage=storage, device="cpu")


def test_callables_without_a_source_file_run_resume_and_train_the_winner_from_python(tmp_path: Path) -> None:
    # Run as `python -` (stdin): its functions have no file, as in a notebook; the hand-off and
    # tuner best must know them from the code handed over, not import them by name.
    script = (
        "import tuner, torch\n"
        "from torch import nn\n"
        "factory = lambda input_shape, n_outputs, width, depth: nn.Sequential(nn.Linear(input_shape[-1], width), nn.ReLU(), nn.Linear(width, n_outputs))\n"
        "spec = tuner.spec_from_dict({'name': 'stdin', 'data': {'name': 'wine'}, 'model': {'width': 4}, 'train': {'epochs': 1},\n"
        "                             'stages': {'lr': {'trials': 2}, 'shape': {'trials': 1, 'width': [4, 8]}}})\n"
        "url = 'sqlite:///stdin.db'\n"
        "first = tuner.run_study(spec, storage=url, device='cpu', model=factory)\n"
        "again = tuner.run_study(spec, storage=url, device='cpu', model=factory)\n"
        "best = tuner.write_best('stdin', url, 'best', device='cpu', model=factory)\n"
        "print(first.best_value == again.best_value, best.metrics['stored_value'] == first.best_value)\n"
    )
    done = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]


def test_a_model_built_for_every_csv_column_is_told_that_constant_ones_were_dropped(tmp_path: Path) -> None:
    # A new user's model read the CSV's column count: "inputs of shape (2, 61)" alone did not say why not 64.
    rows = ["a,k,b,label"] + [f"{i % 7},5,{(i * 3) % 11},{i % 2}" for i in range(60)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "fixed.py").write_text("from torch import nn\n\ndef make(input_shape, n_outputs, width, depth):\n"
                                       "    return nn.Linear(3, n_outputs)  # the CSV's three feature columns, k among them\n")
    spec = tmp_path / "t.toml"
    spec.write_text('name = "t"\n[data]\nname = "csv"\npath = "t.csv"\ntarget = "label"\n[model]\nfamily = "fixed:make"\n')
    run = _tuner("study", str(spec), "--storage", f"sqlite:///{tmp_path / 't.db'}", "--device", "cpu", cwd=tmp_path)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "(2, 2) (1 constant column(s) of the CSV file were dropped, so a row has 2 features, not 3" in run.stderr
    assert "data.drop_constant_columns = false" in run.stderr and not (tmp_path / "t.db").exists()


def test_a_study_whose_every_trial_failed_on_the_code_goes_on_once_the_code_is_fixed(tmp_path: Path) -> None:
    # A new user's try: a model that failed only after some batches failed every trial; fixed, the same command
    # said the study was made with other code, so its name stayed locked to code that never finished a trial.
    broken = ("from torch import nn\ncalls = [0]\n\nclass Net(nn.Linear):\n    def forward(self, x):\n"
              "        calls[0] += 1\n        if calls[0] > 3:\n            raise RuntimeError('fails after three batches')\n"
              "        return super().forward(x)\n\ndef make(input_shape, n_outputs, width, depth):\n"
              "    return Net(input_shape[-1], n_outputs)\n")
    spec = tmp_path / "late.toml"
    text = ('name = "late"\n[data]\nname = "wine"\n[model]\nfamily = "late:make"\n[train]\nepochs = 1\n'
            '[stages.lr]\ntrials = 6\nbatched = false\n[stages.shape]\ntrials = 2\nwidth = [4, 8]\ndepth = [1, 1]\n')
    spec.write_text(text)
    url = f"sqlite:///{tmp_path / 'late.db'}"

    def run(module: str) -> subprocess.CompletedProcess[str]:
        (tmp_path / "late.py").write_text(module)
        return _tuner("study", str(spec), "--storage", url, "--device", "cpu", cwd=tmp_path)

    def stored() -> dict:
        return optuna.load_study(study_name="late/lr", storage=url).user_attrs

    first = run(broken)
    assert first.returncode == 1 and "in a row failed" in first.stderr, first.stderr
    assert all(t.state == TrialState.FAIL for t in optuna.load_study(study_name="late/lr", storage=url).trials)
    # Other settings changed besides the code: refused as ever, and nothing stored is rewritten.
    before = stored()
    spec.write_text(text.replace("epochs = 1", "epochs = 2"))
    other = run(broken.replace("> 3", "> 4"))
    assert other.returncode == 2 and "other code or data" in other.stderr and stored() == before, other.stderr
    spec.write_text(text)
    # The built-in mlp instead of the user's model: a change of code that is refused in one line, not a crash.
    spec.write_text(text.replace('"late:make"', '"mlp"'))
    built_in = run(broken)
    assert built_in.returncode == 2 and "other code or data" in built_in.stderr and stored() == before, built_in.stderr
    spec.write_text(text)
    # Another broken version takes the study over (it too fails); the first one may not take it back.
    second = run(broken.replace("> 3", "> 5"))
    assert second.returncode == 1 and "has no finished trial" in second.stdout + second.stderr, second.stderr
    back = run(broken)
    assert back.returncode == 2 and "other code or data" in back.stderr, back.stderr
    fixed = run(broken.replace("if calls[0] > 3:", "if False:"))
    assert fixed.returncode == 0, fixed.stderr
    assert "has no finished trial" in fixed.stdout + fixed.stderr and "late.py" in fixed.stdout + fixed.stderr
    lr = optuna.load_study(study_name="late/lr", storage=url)
    assert len([t for t in lr.trials if t.state == TrialState.COMPLETE]) == 6
    assert lr.trials[0].state == TrialState.FAIL and len(lr.user_attrs["left_identities"]) == 2  # kept, as they were
    # Once a trial has finished, changed code is refused again, as ever.
    again = run(broken.replace("if calls[0] > 3:", "if calls[0] < 0:"))
    assert again.returncode == 2 and "was made with other code or data" in again.stderr, again.stderr


def test_a_study_whose_every_trial_failed_goes_on_with_a_loop_of_another_name(tmp_path: Path) -> None:
    # A new user fixed a failing loop by naming another function (mine:fit_bad -> mine:fit): refused before
    # as a changed study, though no trial had finished. The old name may not take it back.
    (tmp_path / "mine.py").write_text(
        "def fit_bad(model, report, epochs):\n    raise RuntimeError('oops')\n\n\n"
        "def fit(model, report, epochs):\n    for epoch in range(1, epochs + 1):\n        report(epoch, 0.5)\n")
    spec = tmp_path / "named.toml"
    text = ('name = "named"\n[data]\nname = "wine"\n[train]\nloop = "mine:fit_bad"\nepochs = 1\n'
            '[stages.lr]\ntrials = 3\n[stages.shape]\ntrials = 1\nwidth = [4, 4]\ndepth = [1, 1]\n')
    url = f"sqlite:///{tmp_path / 'named.db'}"

    def run(loop: str) -> subprocess.CompletedProcess[str]:
        spec.write_text(text.replace("mine:fit_bad", loop))
        return _tuner("study", str(spec), "--storage", url, "--device", "cpu", cwd=tmp_path)

    first = run("mine:fit_bad")
    assert first.returncode == 1 and "in a row failed" in first.stderr, first.stderr
    fixed = run("mine:fit")
    assert fixed.returncode == 0, fixed.stderr
    assert "it goes on with the changed code or data (train.loop: mine:fit_bad -> mine:fit)" in fixed.stdout + fixed.stderr
    lr = optuna.load_study(study_name="named/lr", storage=url)
    assert lr.user_attrs["settings"]["train"]["loop"] == "mine:fit"
    assert sum(t.state == TrialState.COMPLETE for t in lr.trials) == 3
    back = run("mine:fit_bad")
    assert back.returncode == 2 and "was made with other code or data" in back.stderr, back.stderr


@pytest.mark.parametrize(("signature", "named"), [
    ("model, trainloader, optimizer, report", "it needs an argument 'trainloader' that tuner does not pass; did you mean 'train'?"),
    ("model, /, train, report", "it takes 'model' by position only; tuner passes every argument by name"),
])
def test_a_loop_needing_an_argument_tuner_does_not_pass_is_refused_before_the_study_is_made(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signature: str, named: str) -> None:
    # A new user's loop took 'trainloader': every trial failed with a TypeError, the study was made, and the
    # fixed spec (another loop) was then refused as a changed study.
    from typer.testing import CliRunner

    from tuner.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = f"badloop{len(named)}"  # a module of its own per case: Python keeps the first one imported
    (tmp_path / f"{module}.py").write_text(f"def fit({signature}):\n    pass\n")
    (tmp_path / "s.toml").write_text(f'name = "y"\n[data]\nname = "wine"\n[train]\nloop = "{module}:fit"\nepochs = 2\n'
                                     '[stages.lr]\ntrials = 3\n[stages.shape]\ntrials = 1\nwidth = [4, 4]\ndepth = [1, 1]\n')
    result = CliRunner().invoke(app, ["study", "s.toml", "--storage", "sqlite:///l.db", "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: s.toml: field 'train.loop' = '{module}:fit': ") and named in result.output
    assert len(result.output.splitlines()) == 1 and not (tmp_path / "l.db").exists()


def test_a_decorated_loop_whose_wrapper_supplies_an_argument_is_not_refused(tmp_path: Path) -> None:
    # A review: a loop wrapped by a decorator that passes it a 'logger' ran before the signature check, and
    # was refused by it (inspect.signature reads the wrapped function's).
    import functools

    given: list[object] = []

    def with_logger(function):  # type: ignore[no-untyped-def]
        @functools.wraps(function)
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            return function(*args, logger=given.append, **kwargs)
        return wrapper

    @with_logger
    def fit(model: torch.nn.Module, report: object, epochs: int, logger: object) -> None:
        logger(epochs)  # type: ignore[operator]
        for epoch in range(1, epochs + 1):
            report(epoch, 0.5)  # type: ignore[operator]

    spec = tuner.spec_from_dict({"name": "wrapped", "data": {"name": "wine"}, "train": {"epochs": 1},
                                 "stages": {"lr": {"trials": 2}, "shape": {"trials": 1, "width": [4, 4], "depth": [1, 1]}}})
    tuner.run_study(spec, storage=f"sqlite:///{tmp_path / 'w.db'}", device="cpu", loop=fit)
    assert given == [1, 1, 1]  # two trials of stage lr, one of stage shape
