from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tuner.inputs.load import load_dataset
from tuner.inputs.spec import DataSpec, SpecError


@pytest.mark.parametrize(("name", "task", "n_outputs"), [
    ("digits", "classification", 10), ("wine", "classification", 3),
    ("breast_cancer", "classification", 2), ("diabetes", "regression", 1), ("adding", "regression", 1),
])
def test_bundled_data_sets_load_split_and_standardise(name: str, task: str, n_outputs: int) -> None:
    data = load_dataset(DataSpec(name=name, samples=300), seed=0)
    assert data.task == task and data.n_outputs == n_outputs
    total = len(data.x_train) + len(data.x_val)
    assert len(data.x_val) == pytest.approx(0.2 * total, abs=2)
    flat = data.x_train.reshape(-1, data.x_train.shape[-1])
    assert torch.allclose(flat.mean(0), torch.zeros(flat.shape[1]), atol=1e-4)  # training stats only


def test_split_is_fixed_by_the_seed() -> None:
    a, b = load_dataset(DataSpec(name="wine"), 1), load_dataset(DataSpec(name="wine"), 1)
    c = load_dataset(DataSpec(name="wine"), 2)
    assert torch.equal(a.x_val, b.x_val)
    assert not torch.equal(a.x_val, c.x_val)


def test_csv_with_named_target_infers_the_task(tmp_path: Path) -> None:
    rows = ["a,b,label,price"] + [f"{i},{i % 7},{'cat' if i % 2 else 'dog'},{i * 1.5 + 0.1}" for i in range(60)]
    (tmp_path / "d.csv").write_text("\n".join(rows))
    classification = load_dataset(DataSpec(name="csv", path=str(tmp_path / "d.csv"), target="label"), 0)
    assert classification.task == "classification" and classification.n_outputs == 2
    with pytest.raises(SpecError, match="'label' is not numeric"):
        load_dataset(DataSpec(name="csv", path=str(tmp_path / "d.csv"), target="price"), 0)


@pytest.mark.parametrize(("content", "target", "words"), [
    ("", "y", "empty"),
    ("a,b\n1,2\n", "y", "no such column"),
    ("a,y\n1,2\n,3\n", "y", "missing value (line 3)"),
    ("a,y\n1,\n2,3\n", "y", "target has a missing value"),
])
def test_bad_csv_files_are_refused_clearly(tmp_path: Path, content: str, target: str, words: str) -> None:
    (tmp_path / "d.csv").write_text(content)
    with pytest.raises(SpecError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_dataset(DataSpec(name="csv", path=str(tmp_path / "d.csv"), target=target), 0)
