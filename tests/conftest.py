"""Shared fixtures: tiny specs that run in seconds, and a fresh SQLite file per test."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

optuna.logging.set_verbosity(optuna.logging.WARNING)

TINY_SPEC = """
name = "tiny"
seed = 0

[data]
name = "wine"

[model]
width = 8
depth = 1

[train]
epochs = 4
batch_size = 32

[stages.lr]
trials = 4
lr_min = 1e-4
lr_max = 1.0

[stages.shape]
trials = 3
width = [4, 16]
depth = [1, 2]
"""


@pytest.fixture
def tiny_spec(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SPEC)
    return path


@pytest.fixture
def storage_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"
