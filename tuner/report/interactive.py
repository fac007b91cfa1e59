"""Optuna's interactive plotly figures of a study, written as HTML pages beside one local plotly.js."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from tuner.errors import optuna_silenced
from tuner.report.runs import StageRuns, file_key, objective_label, objective_word


def write_interactive(
    stages: dict[str, StageRuns], importance: pd.DataFrame | None, out_dir: Path
) -> tuple[dict[str, Path], dict[str, str]]:
    written: dict[str, Path] = {}
    missing: dict[str, str] = {}
    try:
        import plotly  # noqa: F401 -- Optuna's figures need it
    except ImportError:
        missing["interactive"] = "plotly is not installed: pip install plotly"
        return written, missing
    from optuna.visualization import plot_contour, plot_optimization_history

    def write(key: str, figure: Any) -> None:
        path = out_dir / f"{key}.html"
        # One copy of plotly.js beside the pages, not 3 MB inside each: works offline, stays small.
        figure.write_html(path, include_plotlyjs="directory", full_html=True)
        written[key] = path

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks these "experimental" in some versions
        for stage in stages.values():
            if stage.complete:
                figure = plot_optimization_history(stage.study)
                figure.update_layout(title=f"Optimization history of {stage.study.study_name}")
                write(f"history_{file_key(stage.name)}", figure)
        shape = stages.get("shape")
        if shape is not None and len(shape.complete) >= 2:
            pair = _contour_pair(shape, importance)
            with optuna_silenced():  # its "unique value length is less than 2" about a searched-once parameter
                figure = plot_contour(shape.study, params=list(pair))
            word = objective_word(objective_label(stages), shape.maximizes)
            figure.update_layout(title=f"{shape.study.study_name}: final {word} over {pair[0]} and {pair[1]}")
            write("contour_shape", figure)
        elif shape is not None:
            missing["contour_shape"] = "the shape stage needs two complete trials for a contour"
    return written, missing


def _contour_pair(shape: StageRuns, importance: pd.DataFrame | None) -> tuple[str, str]:
    """The two most important numeric shape parameters when known, else width and decay."""
    numeric = [p for p in ("width", "decay", "depth") if all(p in r.params for r in shape.complete)]
    if importance is not None and not importance.empty:
        mains = importance[(importance["stage"] == "shape") & (importance["param_b"] == "")]
        if "basis" in mains and (mains["basis"] == "complete").any():
            mains = mains[mains["basis"] == "complete"]  # the contour shows final values: rank by them
        ranked = mains.groupby("param")["importance"].mean().sort_values(ascending=False).index
        ranked = [p for p in ranked if p in numeric]
        numeric = ranked + [p for p in numeric if p not in ranked]
    names = numeric[:2] if len(numeric) >= 2 else sorted(shape.complete[0].params)[:2]
    return names[0], names[1]
