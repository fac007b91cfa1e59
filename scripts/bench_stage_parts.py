"""Where a batched LR stage's time goes besides training: its runner's parts timed, stage after stage.

The quickstart's stage ``lr`` (digits, MLP 64-16-10, SGD, 20 epochs; ``--trials`` trials, random
sampler, batches of ``--batch``) run through ``tuner.study.runner.run_stage`` on a fresh SQLite file,
``--stages`` times in one process (after one warm-up stage). Each part is timed by wrapping the
function that does it:

- ``claim``: asking the batch's trials and claiming them (``_StageRunner._claim``);
- ``open``: opening (creating) the stage's study (``_StageRunner.open``);
- ``validation``: the batched copies' evaluations (``tuner.training.batched._evaluate``);
- ``tell``: storing the trials' records and telling Optuna their outcome (``TrialBatch.finish``);
- ``stage``: the whole stage.

Medians of the stages, and each stage's figure. The function names are this version's: on an older
commit, a part whose function is missing is left out.

Run:  TUNER_THREADS=1 python scripts/bench_stage_parts.py                 # K = 32, 5 stages
      TUNER_THREADS=1 python scripts/bench_stage_parts.py --batch 1 --stages 2   # one trial at a time
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch

from tuner.inputs.load import load_dataset
from tuner.inputs.spec import load_spec
from tuner.storage import open_storage
from tuner.study import runner, trials
from tuner.training import batched

STUDIES = Path(__file__).resolve().parent.parent / "studies"
PARTS = {"claim": (runner._StageRunner, "_claim"), "open": (runner._StageRunner, "open"),  # noqa: SLF001
         "validation": (batched, "_evaluate"), "tell": (trials.TrialBatch, "finish")}


def _timed(spent: dict[str, float], label: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - started
    return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="stages.lr.batch_trials (1: one trial at a time) [32]")
    parser.add_argument("--trials", type=int, default=32, help="trials of the stage [32]")
    parser.add_argument("--stages", type=int, default=5, help="stages timed, after one warm-up [5]")
    args = parser.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    spent: dict[str, float] = {}
    for label, (owner, name) in PARTS.items():
        if hasattr(owner, name):
            setattr(owner, name, _timed(spent, label, getattr(owner, name)))
    spec = load_spec(STUDIES / "quickstart.toml")
    lr = dataclasses.replace(spec.stages.lr, trials=args.trials, sampler="random", batched=args.batch > 1,
                             batch_trials=args.batch)
    data = load_dataset(spec.data, spec.seed, spec.source)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for n in range(args.stages + 1):
            stage_spec = spec.with_changes(name=f"parts{n}", stages=dataclasses.replace(spec.stages, lr=lr))
            storage = open_storage(f"sqlite:///{folder}/parts{n}.db")
            spent.clear()
            started = time.perf_counter()
            runner.run_stage(stage_spec, "lr", storage=storage, data=data, device=torch.device("cpu"))
            if n:  # the first stage pays one-time costs (imports, caches)
                rows.append({"stage": time.perf_counter() - started, **spent})
    print(f"stage lr of {args.trials} trials, K={args.batch}, {args.stages} stages, torch threads 1; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for label in ["stage", *PARTS]:
        ms = [1000 * row.get(label, 0.0) for row in rows]
        print(f"  {label:>10}: median {statistics.median(ms):6.1f} ms  ({' '.join(f'{x:.0f}' for x in ms)})")


if __name__ == "__main__":
    main()
