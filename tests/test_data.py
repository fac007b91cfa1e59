from __future__ import annotations

import warnings
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


def test_a_numeric_target_with_stray_text_cells_is_warned_of_and_refused_as_a_regression_target(tmp_path: Path) -> None:
    from tuner.inputs.data import DataWarning

    # As text, each of the 30 prices (two rows each) is a class of its own: a 31-class "classification".
    rows = ["a,price"] + [f"{i},{(i % 30) * 1.5 + 0.1}" for i in range(60)]
    rows[9] = "8,unknown"
    (tmp_path / "d.csv").write_text("\n".join(rows))
    cell = r"holds numbers but for 1 of 60 cells \('unknown' on line 10\)"
    # task = "auto": warned, not refused (a study stored with it must still resume), as read before.
    with pytest.warns(DataWarning, match=cell + r"; read as text, each of its 31 values is a class: fix or drop those rows"):
        data = load_dataset(DataSpec(name="csv", path=str(tmp_path / "d.csv"), target="price"), 0)
    assert data.task == "classification"
    with pytest.raises(SpecError, match=cell + "; a regression target must be numbers: fix or drop those rows"):
        load_dataset(DataSpec(name="csv", path=str(tmp_path / "d.csv"), target="price", task="regression"), 0)
    # A tenth of the cells text: still numbers with typos.
    for row in range(1, 61, 7):
        rows[row] = f"{row},?"
    (tmp_path / "d.csv").write_text("\n".join(rows))
    with pytest.warns(DataWarning, match="holds numbers but for 10 of 60 cells"):
        load_dataset(DataSpec(name="csv", path=str(tmp_path / "d.csv"), target="price"), 0)
    # Class labels, a few whole numbers and a rare text class among them: classes, as before, and no word.
    rows = ["a,size"] + [f"{i},{['0', '1', '2'][i % 3] if i % 25 else 'other'}" for i in range(60)]
    (tmp_path / "e.csv").write_text("\n".join(rows))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        data = load_dataset(DataSpec(name="csv", path=str(tmp_path / "e.csv"), target="size"), 0)
    assert data.task == "classification" and data.n_outputs == 4


def test_a_saved_row_index_is_used_as_told_and_warned_of(tmp_path: Path) -> None:
    import pandas as pd

    from tuner.inputs.data import DataWarning

    frame = pd.DataFrame({"a": [float(i % 7) for i in range(60)], "y": [i * 0.5 for i in range(60)]})
    frame.to_csv(tmp_path / "d.csv")  # pandas' default: the index as a first column without a header
    with pytest.warns(DataWarning, match=r"column 'Unnamed: 0' has no header and counts the rows \(0, 1, \.\.\.\).*index=False"):
        data = load_dataset(DataSpec(name="csv", path=str(tmp_path / "d.csv"), target="y"), 0)
    assert data.x_train.shape[-1] == 2  # still a feature: a stored study with it resumes
    frame.to_csv(tmp_path / "e.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        load_dataset(DataSpec(name="csv", path=str(tmp_path / "e.csv"), target="y"), 0)
