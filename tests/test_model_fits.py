"""tuner.inputs.models.check_model_fits: a model that cannot train in memory is refused before the study
starts, counted on torch's meta device (no memory taken), and a family it cannot count is let through."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tuner
from tuner.inputs import families, models
from tuner.inputs.load import load_dataset
from tuner.inputs.models import ModelTooLargeError, check_model_fits, planned_parameters


def _spec(**model: object) -> tuner.StudySpec:
    return tuner.spec_from_dict({"name": "fit", "data": {"name": "wine"}, "model": model,
                                 "stages": {"shape": {"width": [4, 8], "depth": [1, 2]}}})


def test_parameters_are_counted_without_allocating_them() -> None:
    # 10**12 parameters would take 4 TB if allocated; counted on the meta device they take nothing.
    assert planned_parameters("mlp", (13,), 3, 10**6, 2) == 13 * 10**6 + 10**6 + 10**12 + 10**6 + 3 * 10**6 + 3


def test_a_model_too_large_for_memory_names_the_field_and_the_numbers() -> None:
    spec = _spec(width=10**9)
    with pytest.raises(ModelTooLargeError, match=r"field 'model.width' = 1000000000: a model of 17,000,000,003 parameters"):
        check_model_fits(spec, load_dataset(spec.data, spec.seed), "cpu")


def test_a_model_that_fits_passes() -> None:
    spec = _spec(width=16)
    check_model_fits(spec, load_dataset(spec.data, spec.seed), "cpu")


def test_a_family_that_cannot_be_built_on_the_meta_device_is_not_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def hand_made(n_features: int, n_outputs: int, width: int, depth: int) -> nn.Module:
        layer = nn.Linear(n_features, n_outputs)
        layer.weight.data.copy_(torch.zeros(n_outputs, n_features).numpy().__array__())  # fails on meta
        return layer

    monkeypatch.setattr(families, "_REGISTERED", {**families._REGISTERED})  # noqa: SLF001 -- forgotten after the test
    families.register_model("hand_made", hand_made)
    spec = _spec(family="hand_made", width=10**9)
    assert planned_parameters("hand_made", (13,), 3, 10**9, 1) is None
    check_model_fits(spec, load_dataset(spec.data, spec.seed), "cpu")
