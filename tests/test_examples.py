"""examples/optuna_port: Optuna's PyTorch example in both ways runs end to end (small budgets)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "optuna_port"


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TUNER_")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_tuner_port_maximizes_accuracy_and_its_winner_is_trained_again(tmp_path: Path) -> None:
    folder = tmp_path / "port"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    spec = folder / "digits.toml"
    text = spec.read_text()
    for old, new in (("trials = 12", "trials = 4"), ("trials = 30", "trials = 4"), ("epochs = 10", "epochs = 3"),
                     ('name = "digits"', 'name = "digits"\ntest_fraction = 0.2')):  # a test part for tuner best to score
        assert old in text
        text = text.replace(old, new)
    spec.write_text(text)
    done = _run("-m", "tuner.cli", "study", str(spec), "--storage", "sqlite:///port.db", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "highest" in done.stdout  # the summary says the score is maximized
    best = _run("-m", "tuner.cli", "best", "optuna_port", "--storage", "sqlite:///port.db", "--out", "winner", cwd=tmp_path)
    assert best.returncode == 0, best.stdout + best.stderr
    assert "validation your metric" in best.stdout and "(stored your metric:" in best.stdout  # never "val_error"
    assert "rows never seen by a stage): your metric " in best.stdout  # an accuracy is no "error"
    metrics = json.loads((tmp_path / "winner" / "metrics.json").read_text())
    assert 0.5 < metrics["stored_value"] <= 1.0  # an accuracy, well above chance (0.1), as the highest stored
    assert (tmp_path / "winner" / "net.py").exists()  # the model's module travels with it


def test_the_plain_optuna_version_runs(tmp_path: Path) -> None:
    done = _run(str(EXAMPLE / "plain_optuna.py"), "--trials", "3", "--epochs", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    accuracy = float(done.stdout.split("best validation accuracy ")[1].split()[0])
    assert 0.1 < accuracy <= 1.0
