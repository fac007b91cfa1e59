"""Optuna's PyTorch example (pytorch_simple.py) as it is written for plain Optuna, on the bundled digits.

The same search as digits.toml beside it: layers, units (one width for all layers), dropout, the
learning rate (and, as the original does, the optimizer), validation accuracy maximized, the median
pruner. Run it to compare:

    python examples/optuna_port/plain_optuna.py --trials 50
"""

from __future__ import annotations

import argparse
import math

import optuna
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

EPOCHS = 10
BATCH_SIZE = 128


def load(seed: int = 0) -> tuple[torch.Tensor, ...]:
    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x / 16.0, y, test_size=0.2, random_state=seed, stratify=y)
    as_x = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return as_x(x_train), as_x(x_val), torch.as_tensor(y_train), torch.as_tensor(y_val)


def define_model(trial: optuna.Trial, n_inputs: int, n_outputs: int) -> nn.Module:
    n_layers = trial.suggest_int("n_layers", 1, 3)
    n_units = trial.suggest_int("n_units", 4, 128, log=True)
    dropout = trial.suggest_float("dropout", 0.2, 0.5)
    layers: list[nn.Module] = []
    features = n_inputs
    for _ in range(n_layers):
        layers += [nn.Linear(features, n_units), nn.ReLU(), nn.Dropout(dropout)]
        features = n_units
    layers.append(nn.Linear(features, n_outputs))
    return nn.Sequential(*layers)


def objective(trial: optuna.Trial, data: tuple[torch.Tensor, ...], epochs: int) -> float:
    x_train, x_val, y_train, y_val = data
    torch.manual_seed(trial.number)
    model = define_model(trial, x_train.shape[1], 10)
    name = trial.suggest_categorical("optimizer", ["Adam", "RMSprop", "SGD"])
    lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    optimizer = getattr(torch.optim, name)(model.parameters(), lr=lr)
    accuracy = 0.0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train))
        for start in range(0, len(order), BATCH_SIZE):
            rows = order[start:start + BATCH_SIZE]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x_train[rows]), y_train[rows])
            if not math.isfinite(loss.item()):
                raise optuna.TrialPruned()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            accuracy = float((model(x_val).argmax(dim=1) == y_val).float().mean())
        trial.report(accuracy, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--storage", default=None, help="an Optuna storage URL (default: in memory)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load()
    study = optuna.create_study(direction="maximize", storage=args.storage, sampler=optuna.samplers.TPESampler(seed=0),
                                pruner=optuna.pruners.MedianPruner())
    study.optimize(lambda trial: objective(trial, data, args.epochs), n_trials=args.trials)
    print(f"best validation accuracy {study.best_value:.4f} with {study.best_params}")


if __name__ == "__main__":
    main()
