from __future__ import annotations

from pathlib import Path

import pytest

from tuner.inputs.spec import SpecError, load_spec, settings_hash, spec_from_dict


def test_quickstart_spec_reads_with_its_documented_values() -> None:
    spec = load_spec(Path(__file__).parents[1] / "studies" / "quickstart.toml")
    assert spec.name == "quickstart"
    assert spec.data.name == "digits"
    assert spec.stages.lr.lr_min == 1e-6 and spec.stages.lr.lr_max == 1.0
    assert spec.stages.shape.schedules == ("constant", "step", "exponential", "inverse_time")
    assert spec.stages.shape.width == (8, 128)


def test_every_bundled_spec_is_valid() -> None:
    specs = sorted((Path(__file__).parents[1] / "studies").glob("*.toml"))
    assert len(specs) >= 5
    for path in specs:
        assert load_spec(path).name == path.stem


def test_defaults_fill_what_the_file_leaves_out() -> None:
    spec = spec_from_dict({"name": "x"})
    assert spec.stages.lr.lr_min == 1e-6 and spec.stages.lr.lr_max == 1.0
    assert spec.train.optimizer == "sgd"
    assert spec.stages.audit.trials == 0


def test_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    path = tmp_path / "my-study.toml"
    path.write_text("[train]\nepochs = 3\n")
    assert load_spec(path).name == "my-study"


@pytest.mark.parametrize(
    ("table", "field", "words"),
    [
        ({"name": "x", "stages": {"lr": {"lr_min": 0.0}}}, "stages.lr.lr_min", "> 0"),
        ({"name": "x", "stages": {"lr": {"lr_min": 0.1, "lr_max": 0.01}}}, "stages.lr.lr_min", "below lr_max"),
        ({"name": "x", "train": {"epochs": 0}}, "train.epochs", "greater than 0"),
        ({"name": "x", "stages": {"shape": {"trials": -1}}}, "stages.shape.trials", "greater than 0"),
        ({"name": "x", "train": {"optimizer": "adamm"}}, "train.optimizer", "did you mean 'adam'"),
        ({"name": "x", "stages": {"shape": {"schedules": ["cosin"]}}}, "stages.shape.schedules", "did you mean 'cosine'"),
        ({"name": "x", "data": {"name": "mnist"}}, "data.name", "choose one of"),
        ({"name": "x", "trian": {}}, "trian", "did you mean 'train'"),
        ({"name": "x", "train": {"epochs": "10"}}, "train.epochs", "= '10': must be a whole number, without quotes: 10"),
        ({"name": "x", "train": {"epochs": "ten"}}, "train.epochs", "= 'ten': must be a whole number"),
        ({"name": "x", "stages": {"lr": {"lr_min": "1e-4"}}}, "stages.lr.lr_min", "must be a number, without quotes: 1e-4"),
        ({"name": "x", "stages": {"lr": {"trials": True}}}, "stages.lr.trials", "= true: must be a whole number"),  # as TOML writes it
        ({"name": "x", "stages": {"shape": {"width": [8]}}}, "stages.shape.width", "2 values"),
        ({"name": "x", "data": {"name": "csv"}}, "data.path", "missing"),
        # A key of another table is sent there, not to a near spelling of this table's keys.
        ({"name": "x", "model": {"epochs": 3}}, "model.epochs", "'epochs' belongs in [train] (or [stages.lr], [stages.shape]"),
        ({"name": "x", "stages": {"lr": {"batch_size": 64}}}, "stages.lr.batch_size", "'batch_size' belongs in [train]"),
        ({"name": "x", "train": {"seed": 1}}, "train.seed", "'seed' belongs at the top of the file, before any [table]"),
        # The rate is not a parameter to declare ([stages.shape.params] refuses 'lr'): where it is set instead.
        ({"name": "x", "stages": {"shape": {"lr": [1e-3, 0.1]}}}, "stages.shape.lr", "[stages.lr] lr_min and lr_max"),
        ({"name": "x", "stages": {"shape": {"dropout": [0.1, 0.2]}}}, "stages.shape.dropout", "declare it in [stages.shape.params]"),
        ({"name": "x", "stages": {"shape": {"weight_decay": [1e-6, 1e-2]}}}, "stages.shape.weight_decay",
         "declare it in [stages.shape.params]"),  # [train] holds its one value; searched, it is declared
        # A factory written with a dot for the colon; a depth of 0 (searched on a log scale, refused for what it is).
        ({"name": "x", "model": {"family": "mymodels.make_mlp"}}, "model.family", 'with a colon: "mymodels:make_mlp"'),
        ({"name": "x", "stages": {"shape": {"depth": [0, 2]}}}, "stages.shape.depth", "a network's depth is at least 1; e.g. [1, 2]"),
        # A pair of the wrong length: the example fits the field (a new user was shown [1e-3, 1.0] for lr_scale).
        ({"name": "x", "stages": {"shape": {"lr_scale": [0.5]}}}, "stages.shape.lr_scale", "[min, max], e.g. [0.5, 2.0]"),
        ({"name": "x", "stages": {"audit": {"momentum": [0.9]}}}, "stages.audit.momentum", "[min, max], e.g. [0.0, 0.99]"),
        ({"name": "x", "stages": {"shape": {"decay": [0.01]}}}, "stages.shape.decay", "[min, max], e.g. [1e-3, 1.0]"),
    ],
)
def test_bad_fields_are_named_with_a_fix(table: dict, field: str, words: str) -> None:
    with pytest.raises(SpecError) as caught:
        spec_from_dict(table, source="s.toml")
    assert caught.value.field_path == field
    assert words in str(caught.value)
    assert str(caught.value).startswith("s.toml: field")


def test_malformed_toml_and_missing_file_are_spec_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(SpecError, match="malformed TOML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "absent.toml")


def test_settings_ignore_budgets_but_not_search_ranges() -> None:
    base = spec_from_dict({"name": "x"})
    more_trials = spec_from_dict({"name": "x", "stages": {"lr": {"trials": 99}}})
    other_range = spec_from_dict({"name": "x", "stages": {"lr": {"lr_max": 0.5}}})
    from tuner.study.stages import stage_settings

    assert settings_hash(stage_settings(base, "lr")) == settings_hash(stage_settings(more_trials, "lr"))
    assert settings_hash(stage_settings(base, "lr")) != settings_hash(stage_settings(other_range, "lr"))


def test_a_registered_family_whose_name_has_a_dot_is_taken_as_registered() -> None:
    from torch import nn

    from tuner.inputs.families import register_model, unregister_model

    register_model("resnet.v2", lambda n_in, n_out, width, depth: nn.Linear(n_in, n_out))
    try:
        assert spec_from_dict({"name": "x", "model": {"family": "resnet.v2"}}).model.family == "resnet.v2"
    finally:
        unregister_model("resnet.v2")
    with pytest.raises(SpecError, match='with a colon: "resnet:v2"'):  # not registered: a factory's reference, misspelt
        spec_from_dict({"name": "x", "model": {"family": "resnet.v2"}})
