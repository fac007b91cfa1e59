"""Shared fixtures: tiny specs that run in seconds, and a fresh SQLite file per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import torch

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Before anything imports grpc (tests/test_grpc_proxy.py does, at collection): this process serves and
# calls gRPC and then starts workers through subprocess with preexec_fn (a fork); gRPC's fork handlers
# would restart its pollers in such a child, which aborts when it closes its file descriptors. tuner
# sets the same in its own processes (tuner.storage._grpc.require_grpc).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # Tiny models: a second intra-op thread only adds hand-offs, and on a busy 2-core machine its
    # spinning slows tests tenfold. Comparisons inside a test run both sides on the same setting.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
