from __future__ import annotations

import math

import torch

from tuner.inputs.data import Dataset
from tuner.inputs.load import load_dataset
from tuner.inputs.spec import DataSpec
from tuner.training.train import TrainConfig, evaluate, seeded_model, train_epochs


def _separable(n: int = 400) -> Dataset:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=generator)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return Dataset("toy", "classification", x[:300], y[:300], x[300:], y[300:], 2)


def test_training_reduces_loss_on_a_separable_problem() -> None:
    data = _separable()
    model = seeded_model("mlp", data, width=8, depth=1, seed=0)
    start_loss, start_error = evaluate(model, data)
    results = list(train_epochs(model, data, TrainConfig(lr=0.1, epochs=15, batch_size=32)))
    assert len(results) == 15
    assert results[-1].val_loss < 0.5 * start_loss
    assert results[-1].val_error < 0.05 < start_error
    assert not any(r.diverged for r in results)


def test_a_huge_learning_rate_is_stopped_as_diverged() -> None:
    data = _separable()
    model = seeded_model("mlp", data, width=8, depth=2, seed=0)
    results = list(train_epochs(model, data, TrainConfig(lr=1e4, epochs=15, batch_size=32)))
    assert results[-1].diverged
    assert len(results) < 15


def test_same_seed_same_curve() -> None:
    data = _separable()
    curves = []
    for _ in range(2):
        model = seeded_model("mlp", data, width=8, depth=1, seed=3)
        curves.append([r.val_loss for r in train_epochs(model, data, TrainConfig(lr=0.05, epochs=5, seed=3))])
    assert curves[0] == curves[1]


def test_schedule_sets_each_epochs_rate() -> None:
    data = _separable()
    model = seeded_model("mlp", data, width=4, depth=1, seed=0)
    config = TrainConfig(lr=0.1, epochs=5, schedule="exponential", decay=0.01)
    rates = [r.lr for r in train_epochs(model, data, config)]
    assert rates[0] == 0.1 and math.isclose(rates[-1], 0.001)


def test_every_optimizer_learns_regression_on_diabetes() -> None:
    data = load_dataset(DataSpec(name="diabetes"), seed=0)
    for optimizer, lr in [("sgd", 0.01), ("adam", 0.01), ("rmsprop", 0.003), ("adagrad", 0.1)]:
        model = seeded_model("mlp", data, width=16, depth=1, seed=0)
        _, start_rmse = evaluate(model, data)
        last = list(train_epochs(model, data, TrainConfig(lr=lr, epochs=10, optimizer=optimizer)))[-1]
        assert last.val_error < 0.85 * start_rmse, optimizer  # R² ≈ 0.5 is about the best on diabetes


def test_lstm_learns_digits_read_row_by_row() -> None:
    data = load_dataset(DataSpec(name="digits_rows"), seed=0)
    assert tuple(data.x_train.shape[1:]) == (8, 8)
    model = seeded_model("lstm", data, width=16, depth=1, seed=0)
    last = list(train_epochs(model, data, TrainConfig(lr=0.01, epochs=4, optimizer="adam")))[-1]
    assert last.val_error < 0.5


def _validation_the_untrained_model_fits(seed: int = 0) -> Dataset:
    """Regression data whose two validation rows the untrained model (of ``seed``) predicts exactly.

    Its untrained validation loss is 0, while its training loss is about 1: a divergence bar set
    from the validation loss would sit at 0 and call every trial diverged in its first epoch.
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(202, 4, generator=generator)
    y = x @ torch.tensor([1.0, -0.5, 0.25, 0.0])
    y = (y - y.mean()) / y.std()
    placeholder = Dataset("toy", "regression", x[:200], y[:200], x[200:], y[200:], 1)
    with torch.no_grad():
        fitted = seeded_model("mlp", placeholder, width=8, depth=1, seed=seed)(x[200:]).squeeze(-1)
    return Dataset("toy", "regression", x[:200], y[:200], x[200:], fitted, 1)


def test_a_tiny_validation_part_the_untrained_model_happens_to_fit_does_not_make_training_look_diverged() -> None:
    data = _validation_the_untrained_model_fits()
    model = seeded_model("mlp", data, width=8, depth=1, seed=0)
    assert evaluate(model, data)[0] < 1e-10  # the bar the old rule set: 10 x 0
    results = list(train_epochs(model, data, TrainConfig(lr=0.01, epochs=3, batch_size=32)))
    assert len(results) == 3 and not any(r.diverged for r in results)
    assert 0.1 < results[0].train_loss < 10  # an ordinary training loss, compared with the untrained training loss


def test_training_that_blows_up_is_still_called_diverged_against_the_untrained_training_loss() -> None:
    data = _validation_the_untrained_model_fits()
    model = seeded_model("mlp", data, width=8, depth=2, seed=0)
    results = list(train_epochs(model, data, TrainConfig(lr=1e3, epochs=10, batch_size=32)))
    assert results[-1].diverged and len(results) < 10
