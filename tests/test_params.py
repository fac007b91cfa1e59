"""Your own hyperparameters: declared in [stages.shape.params], searched by stage shape, handed to your code."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest
import tomllib
import torch
from optuna.distributions import IntDistribution
from torch import nn
from typer.testing import CliRunner

import tuner
from tuner.cli import app
from tuner.inputs.models import build_model
from tuner.inputs.spec import SpecError, load_spec, spec_from_dict
from tuner.report.runs import load_stages
from tuner.report.words import shape_diagnosis
from tuner.study.stage_studies import with_stage_value, with_value
from tuner.study.stages import audit_stage, lr_stage, shape_stage, stage_settings

REPO = Path(__file__).resolve().parents[1]
PARAMS_STUDY = REPO / "studies" / "digits_params.toml"


def _spec_file(tmp_path: Path, params: str, extra: str = "") -> Path:
    path = tmp_path / "study.toml"
    path.write_text(f'name = "mine"\n[data]\nname = "wine"\n{extra}[stages.shape.params]\n{params}', encoding="utf-8")
    return path


# --- the spec: each kind of declared parameter, and each refusal in one line naming the field ----------

def test_a_range_a_log_range_a_whole_number_range_and_a_choice_are_read() -> None:
    spec = load_spec(PARAMS_STUDY)
    assert [p.name for p in spec.stages.shape.params] == ["dropout", "weight_decay"]
    spec = spec_from_dict({"name": "x", "stages": {"shape": {"params": {
        "layers": {"low": 1, "high": 4, "int": True, "default": 2},
        "activation": {"choices": ["relu", "gelu", "tanh"], "default": "relu"},
    }}}})
    space = shape_stage(spec, 0.1).space
    assert space["layers"] == IntDistribution(1, 4)
    assert list(space["activation"].choices) == ["relu", "gelu", "tanh"]
    assert lr_stage(spec).space.keys() == {"lr"}  # stage lr stays one-dimensional
    assert {"layers", "activation"} <= audit_stage(spec).space.keys()  # the audit samples them with the rest


@pytest.mark.parametrize(("params", "field", "words"), [
    ("dropout = [0.2, 0.5]\n", "stages.shape.params.dropout", "must be a table"),
    ('activation = ["relu", "gelu"]\n', "stages.shape.params.activation", "choices = ["),
    ("dropout = { low = 0.0, high = 0.5 }\n", "stages.shape.params.dropout.default", "missing"),
    ("dropout = { low = 0.0, high = 0.5, default = 0.7 }\n", "stages.shape.params.dropout.default", "outside [0.0, 0.5]"),
    ('act = { choices = ["relu"], default = "gelu" }\n', "stages.shape.params.act.default", "not one of the choices"),
    ("lr = { low = 0.1, high = 0.5, default = 0.1 }\n", "stages.shape.params.lr", "tuner's own"),
    ("width = { low = 1, high = 5, int = true, default = 1 }\n", "stages.shape.params.width", "tuner's own"),
    ("layers = { low = 1, high = 4.5, int = true, default = 2 }\n", "stages.shape.params.layers.high", "whole number"),
    ("wd = { low = 0.0, high = 0.1, log = true, default = 0.0 }\n", "stages.shape.params.wd.low", "above 0"),
    ("dropout = { lo = 0.0, high = 0.5, default = 0.0 }\n", "stages.shape.params.dropout.lo", "did you mean 'low'"),
])
def test_a_bad_declared_parameter_is_refused_in_one_line_naming_its_field(
        tmp_path: Path, params: str, field: str, words: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(_spec_file(tmp_path, params))
    message = str(caught.value)
    assert f"field '{field}'" in message and words in message, message
    assert "\n" not in message


def test_a_parameter_written_straight_under_stages_shape_points_to_the_params_table(tmp_path: Path) -> None:
    path = tmp_path / "study.toml"
    path.write_text('name = "mine"\n[stages.shape]\ndropout = [0.2, 0.5]\n', encoding="utf-8")
    with pytest.raises(SpecError, match=r"stages\.shape\.dropout.*\[stages\.shape\.params\]"):
        load_spec(path)


def test_stage_lr_takes_no_declared_parameters_and_says_where_they_go(tmp_path: Path) -> None:
    path = tmp_path / "study.toml"
    path.write_text('name = "mine"\n[stages.lr.params]\ndropout = { low = 0.0, high = 0.5, default = 0.0 }\n', encoding="utf-8")
    with pytest.raises(SpecError, match=r"field 'stages\.lr\.params'.*\[stages\.shape\.params\]"):
        load_spec(path)


def test_a_log_range_may_default_to_zero_off_which_it_cannot_hold() -> None:
    spec = load_spec(PARAMS_STUDY)
    assert {p.name: p.default for p in spec.stages.shape.params} == {"dropout": 0.0, "weight_decay": 0.0}


def test_a_study_without_declared_parameters_stores_the_settings_it_stored_before() -> None:
    spec = load_spec(REPO / "studies" / "quickstart.toml")
    for stage in ("lr", "shape", "audit"):
        assert "params" not in stage_settings(spec, stage)["stages"].get("shape", {})


def test_stage_lr_stores_the_declared_parameters_it_trains_at() -> None:
    spec = load_spec(PARAMS_STUDY)
    assert stage_settings(spec, "lr")["stages"]["shape"]["params"]["dropout"]["default"] == 0.0


# --- who takes what ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("params", "extra", "words"), [
    ("temperature = { low = 0.5, high = 2.0, default = 1.0 }\n", "", "nothing takes it"),
    ("momentum = { low = 0.5, high = 0.99, default = 0.9 }\n", '[train]\noptimizer = "adam"\n', 'optimizer = "sgd" only'),
])
def test_a_declared_parameter_nothing_takes_is_refused_before_anything_is_written(
        tmp_path: Path, params: str, extra: str, words: str) -> None:
    path = _spec_file(tmp_path, params, extra)
    storage = tmp_path / "t.db"
    result = CliRunner().invoke(app, ["study", str(path), "--storage", f"sqlite:///{storage}", "--device", "cpu"],
                                env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert words in result.output and "stages.shape.params." in result.output
    assert "Traceback" not in result.output
    assert not storage.exists()


SEEN: list[dict[str, Any]] = []


def recording_factory(input_shape: tuple[int, ...], n_outputs: int, width: int, depth: int,
                      activation: str = "relu", smoothing: float = 0.0) -> nn.Module:
    """A factory that records the keyword arguments it is given (smoothing too: it declares it)."""
    SEEN.append({"activation": activation, "smoothing": smoothing})
    act = {"relu": nn.ReLU(), "tanh": nn.Tanh()}[activation]
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), act, nn.Linear(width, n_outputs))


LOSSES: list[float] = []


def smoothed_loss(outputs: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    LOSSES.append(smoothing)
    return nn.functional.cross_entropy(outputs, targets, label_smoothing=smoothing)


def test_a_declared_parameter_reaches_the_users_factory_and_loss(tmp_path: Path) -> None:
    SEEN.clear()
    LOSSES.clear()
    spec = spec_from_dict({
        "name": "own", "data": {"name": "wine"}, "model": {"width": 8}, "train": {"epochs": 1, "batch_size": 32},
        "stages": {"lr": {"trials": 2, "lr_min": 1e-2, "lr_max": 0.1},
                   "shape": {"trials": 4, "width": [4, 8], "depth": [1, 1], "pruner": "none", "params": {
                       "activation": {"choices": ["relu", "tanh"], "default": "tanh"},
                       "smoothing": {"low": 0.0, "high": 0.2, "default": 0.05},
                   }}},
    })
    result = tuner.run_study(spec, storage=f"sqlite:///{tmp_path / 't.db'}", device="cpu",
                             model=recording_factory, loss=smoothed_loss)
    assert result.stages["shape"].n_complete == 4
    trials = tuner.load_stage_trials("own", f"sqlite:///{tmp_path / 't.db'}")
    shape_values = [{"activation": t.params["activation"], "smoothing": t.params["smoothing"]} for t in trials["shape"]]
    for values in shape_values:
        assert values in SEEN  # the factory was built with each shape trial's own values
    assert {"activation": "tanh", "smoothing": 0.05} in SEEN  # stage lr: the defaults
    assert {t["smoothing"] for t in shape_values} <= set(LOSSES) and 0.05 in LOSSES


def test_a_default_the_factory_refuses_is_named_beside_the_factory(tmp_path: Path) -> None:
    spec = spec_from_dict({
        "name": "own", "data": {"name": "wine"}, "train": {"epochs": 1},
        "stages": {"lr": {"trials": 2}, "shape": {"params": {"activation": {"choices": ["relu", "gelu"], "default": "gelu"}}}},
    })
    with pytest.raises(SpecError) as caught:  # recording_factory knows relu and tanh only
        tuner.run_study(spec, storage=f"sqlite:///{tmp_path / 't.db'}", device="cpu", model=recording_factory)
    assert "activation='gelu'" in str(caught.value) and "raised KeyError: 'gelu'" in str(caught.value)
    assert str(caught.value).endswith("fix the factory, or the default of a parameter it was given ([stages.shape.params])")
    assert not (tmp_path / "t.db").exists()


def test_a_users_loop_gets_the_declared_parameters_it_declares(tmp_path: Path) -> None:
    seen: list[float] = []

    def loop(model: nn.Module, train: Any, optimizer: Any, report: Any, epochs: int, loss: Any, temperature: float) -> None:
        seen.append(temperature)
        for epoch in range(1, epochs + 1):
            for x, y in train:
                optimizer.zero_grad()
                loss(model(x), y).backward()
                optimizer.step()
            report(epoch, 1.0 / temperature)

    spec = spec_from_dict({
        "name": "looped", "data": {"name": "wine"}, "model": {"width": 4}, "train": {"epochs": 1},
        "stages": {"lr": {"trials": 1}, "shape": {"trials": 2, "width": [4, 4], "depth": [1, 1], "pruner": "none",
                                                  "params": {"temperature": {"low": 1.0, "high": 4.0, "default": 2.0}}}},
    })
    tuner.run_study(spec, storage=f"sqlite:///{tmp_path / 't.db'}", device="cpu", loop=loop)
    shape = tuner.load_stage_trials("looped", f"sqlite:///{tmp_path / 't.db'}")["shape"]
    assert seen == [2.0, *(t.params["temperature"] for t in shape)]
    assert [t.value for t in shape] == pytest.approx([1.0 / t.params["temperature"] for t in shape])


# --- the built-in families: dropout, and nothing changed without it -------------------------------------------

@pytest.mark.parametrize(("family", "shape"), [("mlp", (13,)), ("lstm", (5, 3)), ("cnn", (1, 8, 8))])
def test_a_built_in_family_with_dropout_zero_is_exactly_the_model_of_before(family: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(3)
    before = build_model(family, shape, 4, 8, 2)
    after_before = torch.rand(3)
    torch.manual_seed(3)
    now = build_model(family, shape, 4, 8, 2, {"dropout": 0.0, "weight_decay": 0.01})
    assert torch.equal(torch.rand(3), after_before)  # the same random draws, to the last one
    assert repr(now) == repr(before)
    assert before.state_dict().keys() == now.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(before.state_dict().values(), now.state_dict().values()))
    dropped = build_model(family, shape, 4, 8, 2, {"dropout": 0.3})
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in dropped.modules())
    assert sum(p.numel() for p in dropped.parameters()) == sum(p.numel() for p in before.parameters())


def test_stage_lr_trains_batched_with_its_default_dropout_too() -> None:
    spec = load_spec(PARAMS_STUDY)
    assert lr_stage(spec).batch_trials > 1  # dropout 0 and weight decay: the stacked copies hold both
    dropout = {"dropout": {"low": 0.0, "high": 0.5, "default": 0.2}}
    # Dropout: the torch.func copies draw a mask per copy (issue 23).
    assert lr_stage(spec_from_dict({"name": "x", "stages": {"shape": {"params": dropout}}})).batch_trials == 16


def test_weight_decay_and_momentum_set_the_optimizers_own() -> None:
    spec = spec_from_dict({"name": "x", "stages": {"shape": {"params": {
        "weight_decay": {"low": 1e-5, "high": 1e-2, "log": True, "default": 0.0},
        "momentum": {"low": 0.5, "high": 0.99, "default": 0.8}}}}})
    assert (lr_stage(spec).plan({"lr": 0.1}).train.momentum, lr_stage(spec).plan({"lr": 0.1}).train.weight_decay) == (0.8, 0.0)
    plan = shape_stage(spec, 0.1).plan({"width": 8, "depth": 1, "schedule": "constant", "decay": 1.0,
                                        "weight_decay": 1e-3, "momentum": 0.6})
    assert (plan.train.momentum, plan.train.weight_decay) == (0.6, 1e-3)


# --- the bundled study end to end: run, resume, export, importance, report, tuner best -----------------------

@pytest.fixture(scope="module")
def params_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Any]:
    storage = f"sqlite:///{tmp_path_factory.mktemp('params') / 'params.db'}"
    return storage, tuner.run_study(_small_params_study(), storage=storage, device="cpu")


def _small_params_study() -> Any:
    """studies/digits_params.toml on small budgets; ten complete shape trials, enough for importance."""
    spec = with_value(load_spec(PARAMS_STUDY), "train", "epochs", 2)
    for stage, key, value in (("lr", "trials", 4), ("shape", "trials", 10), ("shape", "pruner", "none"),
                              ("shape", "width", (8, 24))):
        spec = with_stage_value(spec, stage, key, value)
    return spec


def test_the_declared_study_runs_and_resumes_unchanged(params_study: tuple[str, Any]) -> None:
    storage, result = params_study
    assert result.stages["shape"].n_complete == 10
    assert {"dropout", "weight_decay"} <= set(result.stages["shape"].best_params)
    again = tuner.run_study(_small_params_study(), storage=storage, device="cpu")
    assert again.stages["shape"].best_value == result.stages["shape"].best_value
    assert len(tuner.load_stage_trials("digits_params", storage)["shape"]) == 10


def test_trials_csv_and_importance_csv_hold_the_declared_parameters(params_study: tuple[str, Any], tmp_path: Path) -> None:
    storage, _ = params_study
    trials_path, _ = tuner.write_export("digits_params", out=tmp_path, storage=storage)
    with trials_path.open() as handle:
        rows = [row for row in csv.DictReader(handle) if row["stage"] == "shape"]
    assert all(0.0 <= float(row["params_dropout"]) <= 0.5 for row in rows)
    assert all(1e-6 <= float(row["params_weight_decay"]) <= 1e-2 for row in rows)
    _, table, _ = tuner.write_importance("digits_params", out=tmp_path, storage=storage)
    assert {"dropout", "weight_decay"} <= set(table[table.stage == "shape"].param)


def test_the_reports_best_shape_line_names_the_declared_parameters(params_study: tuple[str, Any], tmp_path: Path) -> None:
    storage, _ = params_study
    line = shape_diagnosis(load_stages("digits_params", storage)["shape"], None, "val_error")[0]
    assert "dropout" in line and "weight_decay" in line
    report = tuner.write_report("digits_params", storage=storage, out=tmp_path / "report")
    assert "dropout" in report.index.read_text(encoding="utf-8")


def test_tuner_best_pins_the_declared_parameters_and_reproduces_the_stored_value(
        params_study: tuple[str, Any], tmp_path: Path) -> None:
    storage, _ = params_study
    best = tuner.write_best("digits_params", storage, tmp_path / "best", stage="shape", device="cpu")
    assert best.metrics["validation"]["value"] == pytest.approx(best.metrics["stored_value"], abs=1e-6)
    won = best.metrics["params"]
    pinned = tomllib.loads(best.spec_path.read_text())["stages"]["shape"]["params"]
    assert pinned["dropout"] == {"low": won["dropout"], "high": won["dropout"], "int": False, "default": won["dropout"]}
    assert pinned["weight_decay"]["default"] == won["weight_decay"]
    model = tuner.load_model(tmp_path / "best")  # rebuilt with its dropout: the state dict's keys match
    # A tuner from before declared parameters reads format 1 only: it refuses this file in one line.
    assert torch.load(tmp_path / "best" / "model.pt", weights_only=True)["format"] == 2
    assert any(isinstance(m, nn.Dropout) for m in model.model.modules()) == (won["dropout"] > 0)
    # best.toml trains the winner again as the one trial of stage shape, to the same value.
    again = tuner.run_study(best.spec_path, storage=f"sqlite:///{tmp_path / 'again.db'}", device="cpu")
    assert again.stages["shape"].best_value == pytest.approx(best.metrics["stored_value"], abs=1e-6)


def test_a_misspelt_name_of_a_keyword_the_factory_declares_is_named_in_the_refusal(tmp_path: Path) -> None:
    spec = spec_from_dict({
        "name": "typo", "data": {"name": "wine"}, "model": {"width": 8}, "train": {"epochs": 1},
        "stages": {"lr": {"trials": 2}, "shape": {"trials": 2, "params": {
            "smoothng": {"low": 0.0, "high": 0.2, "default": 0.05}}}},
    })
    storage = tmp_path / "t.db"
    with pytest.raises(SpecError, match=r"field 'stages\.shape\.params\.smoothng'.*nothing takes it; did you mean 'smoothing'\?"):
        tuner.run_study(spec, storage=f"sqlite:///{storage}", device="cpu", model=recording_factory)
    assert not storage.exists()
    unlike = spec_from_dict({
        "name": "unlike", "data": {"name": "wine"}, "model": {"width": 8}, "train": {"epochs": 1},
        "stages": {"lr": {"trials": 2}, "shape": {"trials": 2, "params": {
            "temperature": {"low": 0.5, "high": 2.0, "default": 1.0}}}},
    })
    with pytest.raises(SpecError, match="nothing takes it; declare") as refused:  # no close name: no guess
        tuner.run_study(unlike, storage=f"sqlite:///{storage}", device="cpu", model=recording_factory)
    assert "did you mean" not in str(refused.value)


def test_the_guess_is_among_names_a_declared_parameter_can_take_never_a_loss_s_outputs_or_targets(tmp_path: Path) -> None:
    def spec(name: str) -> Any:
        return spec_from_dict({"name": "guess", "data": {"name": "wine"}, "train": {"epochs": 1},
                               "stages": {"lr": {"trials": 2}, "shape": {"trials": 2, "params": {
                                   name: {"low": 0.0, "high": 0.2, "default": 0.05}}}}})

    storage = f"sqlite:///{tmp_path / 't.db'}"
    with pytest.raises(SpecError, match="did you mean 'weight_decay'"):  # tuner's own name, taken by the optimizer
        tuner.run_study(spec("wieght_decay"), storage=storage, device="cpu", model=recording_factory)
    with pytest.raises(SpecError, match="nothing takes it") as refused:  # smoothed_loss(outputs, targets, ...)
        tuner.run_study(spec("target"), storage=storage, device="cpu", model=recording_factory, loss=smoothed_loss)
    assert "did you mean" not in str(refused.value)


def test_the_guess_never_names_what_would_be_refused_and_reads_a_loss_after_its_two_positional_arguments(
        tmp_path: Path) -> None:
    def spec(name: str, optimizer: str = "adam") -> Any:
        return spec_from_dict({"name": "guess", "data": {"name": "wine"}, "train": {"epochs": 1, "optimizer": optimizer},
                               "stages": {"lr": {"trials": 2}, "shape": {"trials": 2, "params": {
                                   name: {"low": 0.0, "high": 0.2, "default": 0.05}}}}})

    def loss(outputs: torch.Tensor, targets: torch.Tensor, /, label_smoothing: float = 0.0) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs, targets, label_smoothing=label_smoothing)

    storage = f"sqlite:///{tmp_path / 't.db'}"
    for name, optimizer in (("dropout", "adam"), ("dropuot", "adam"), ("momentum", "adam"), ("momentm", "adam")):
        with pytest.raises(SpecError, match="nothing takes it") as refused:  # a factory of your own, Adam: neither acts
            tuner.run_study(spec(name, optimizer), storage=storage, device="cpu", model=recording_factory)
        assert "did you mean" not in str(refused.value), name
    with pytest.raises(SpecError, match="did you mean 'momentum'"):  # with SGD, momentum is taken
        tuner.run_study(spec("momentm", "sgd"), storage=storage, device="cpu", model=recording_factory)
    with pytest.raises(SpecError, match="did you mean 'label_smoothing'"):  # after positional-only outputs, targets
        tuner.run_study(spec("label_smoothin"), storage=storage, device="cpu", model=recording_factory, loss=loss)
