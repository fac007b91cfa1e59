"""The report's index.html: a summary table per stage, then each figure with its caption and diagnosis."""

from __future__ import annotations

import datetime as dt
import html
from pathlib import Path

from optuna.trial import TrialState

from tuner.report.runs import StageRuns, file_key, lr_stage_runs, objective_word, stage_rate, trial_costs
from tuner.report.words import fmt_value, lr_time_caption, rate_words
from tuner.storage import PASSWORD_NOTE, redact, without_password
from tuner.study.results import failure_counts, lr_stages, wall_seconds
from tuner.study.stored import BUDGET_ATTR, CHOICE_ATTR, RATES_ATTR, SETTINGS_ATTR, stage_kind

CAPTIONS = {
    "lr_sensitivity": "Each dot is one trial of stage lr: its {what} after the last epoch against its "
    "learning rate. Too small a rate has not learned yet (left), too large a rate oscillates or diverges (right); "
    "the bottom of the “U” is where to train. Red crosses on top: runs whose loss blew up. Green: the rate handed "
    "on to stage shape.",
    "lr_curves": "Every trial of stage lr, per epoch, coloured by its learning rate (log colour scale). Flat dark lines "
    "crawl; bright lines that jump or end in a red cross oscillate or explode. Black outline: the chosen rate.",
    "shape": "Each dot is one trial of stage shape, trained at the calibrated learning rate times its own lr_scale "
    "(where lr_scale was searched; in a study made with lr_transfer = \"rule\", the rate first moved for its width and "
    "depth by the optimizer's rule), coloured by decay schedule; "
    "the star is the best. The dotted line is the best of stage lr on the small network, for comparison. 'constant' "
    "ignores decay: in the decay panel its trials stand in a column of their own.",
    "importance": "How much of the variation of the final {word} each hyperparameter explains on its own, and (hatched) "
    "pairs of them together beyond their separate effects. Error bars: ± one standard deviation. A stage that "
    "searched one parameter (stage lr: it explains everything) has no panel. A panel “at epoch N” reads every "
    "trial that reached epoch N, pruned ones included, at that epoch: it leans against slow starters, as "
    "schedules that decay look worse early than they end (short-horizon bias, Wu et al. 2018).",
}
WIDE_FIGURES = ("lr_curves", "lr_time", "shape")  # words below them, not beside
INTERACTIVE_TITLES = {
    "history": "optimization history of stage {stage} (best so far by trial)",
    "contour_shape": "contour of the final {word} over two shape parameters",
}


def _listed(value: object) -> str:
    """A setting as stored: one value, or a list of choices ("adam or sgd, a rate calibrated for each")."""
    if isinstance(value, list):
        return " or ".join(str(v) for v in value) + ", a rate calibrated for each"
    return str(value)


def _state_counts(stage: StageRuns) -> str:
    counts = {s: sum(t.state == s for t in stage.trials) for s in TrialState}
    n_div = sum(r.diverged for r in stage.runs)
    parts = [f"{counts[TrialState.COMPLETE]} complete"]
    parts.append(f"{counts[TrialState.PRUNED]} pruned" + (f" ({n_div} diverged)" if n_div else ""))
    # Failed: raised. Trials its worker stopped (Ctrl-C, SIGTERM, died) and surplus ones were asked again or never trained.
    counts[TrialState.FAIL], stopped, surplus = failure_counts(stage.trials)
    for state, word in ((TrialState.FAIL, "failed"), (TrialState.RUNNING, "running"), (TrialState.WAITING, "waiting")):
        if counts[state]:
            parts.append(f"{counts[state]} {word}")
    if stopped:
        parts.append(f"{stopped} stopped by their worker (not failures; others take their places)")
    if surplus:
        parts.append(f"{surplus} surplus (asked as others filled the budget; not trained)")
    budget = stage.study.user_attrs.get(BUDGET_ATTR)
    return ", ".join(parts) + (f" (budget {budget})" if budget is not None else "")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min {secs:02d} s"


def _summary_rows(stages: dict[str, StageRuns], chosen_lr: float | None) -> list[list[str]]:
    rows = []
    for stage in stages.values():
        best = stage.best
        if best is None:
            setting, value = "–", "–"
        elif stage_kind(stage.name) == "lr":
            # The best trial's rate beside its value, and the rate handed on where the hand-off read another
            # (with listed choices, each stage lr its own).
            handed = chosen_lr if stage.name == "lr" else stage_rate(stage)
            setting, value = f"lr {best.params['lr']:.3g}", f"{best.value:.4g}"
            if handed and f"{handed:.3g}" != f"{best.params['lr']:.3g}":
                setting += f" (handed on: {handed:.3g})"
        else:  # the rate it trained at first (in stage shape: the calibrated lr times its lr_scale), then the rest
            rest = ", ".join(f"{k} {fmt_value(v)}" for k, v in best.params.items() if k not in ("lr", "lr_scale"))
            setting = rate_words(best) + (f", {rest}" if rest else "")
            value = f"{best.value:.4g}"
        train = sum(r.seconds or 0.0 for r in stage.runs)
        rows.append([stage.study.study_name, setting, value, _state_counts(stage),
                     _duration(wall_seconds(stage.trials)), _duration(train)])
    return rows


def index_html(
    name: str,
    url: str,
    stages: dict[str, StageRuns],
    chosen_lr: float | None,
    objective: str,
    figures: dict[str, Path],
    missing: dict[str, str],
    diagnosis: dict[str, list[str]],
) -> str:
    e = html.escape
    word = objective_word(objective, next(iter(stages.values())).maximizes)  # "loss" where the objective is val_loss
    noun = objective.split(" (")[0]  # "validation loss"; a metric's or a loop's label reads as the objective's
    what = noun if noun.startswith("validation") else f"objective ({noun})"
    # Stage shape's settings where it exists: with listed choices, a stage lr holds one optimizer of them.
    settings = (stages.get("shape") or next(iter(stages.values()))).study.user_attrs.get(SETTINGS_ATTR) or {}
    data, model, train = settings.get("data", {}), settings.get("model", {}), settings.get("train", {})
    if "shape" not in stages:  # stopped in stage lr: each variant's stage lr holds its own value of a listed choice
        for key in ("optimizer", "batch_size"):
            values = list(dict.fromkeys((s.study.user_attrs.get(SETTINGS_ATTR) or {}).get("train", {}).get(key)
                                        for s in lr_stage_runs(stages)))
            train = {**train, key: values if len(values) > 1 else train.get(key)}
    about = []
    if data:
        about.append(f"data <b>{e(str(data.get('name')))}</b>")
    if model:
        about.append(f"model <b>{e(str(model.get('family')))}</b> (stage lr: width {model.get('width')}, depth {model.get('depth')})")
    if train:
        about.append(f"optimizer <b>{e(_listed(train.get('optimizer')))}</b>, batch {e(_listed(train.get('batch_size')))}, "
                     f"{train.get('epochs')} epochs; objective <b>{e(objective)}</b>"
                     + ("" if next(iter(stages.values())).maximizes else ", lower is better"))  # the label says it
    parts = [f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tuner report: {e(name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: .35em .6em; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }}
.fig {{ display: flex; gap: 1.5em; align-items: flex-start; margin: 1.5em 0; flex-wrap: wrap; }}
.fig img {{ max-width: 760px; width: 100%; border: 1px solid #eee; }}
.fig .words {{ flex: 1; min-width: 260px; }}
.fig.wide {{ flex-direction: column; }}
.fig.wide img {{ max-width: 100%; width: auto; }}
.caption {{ color: #555; font-size: .92em; }}
.missing {{ color: #8a5a00; background: #fff8e5; padding: .6em; border-left: 4px solid #e0a800; }}
code {{ background: #f3f3f3; padding: 0 .25em; }}
</style></head><body>
<h1>Study <code>{e(name)}</code></h1>
<p>Storage <code>{e(redact(url))}</code>; report made {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}.<br>
{'; '.join(about)}.</p>
<h2>Summary</h2>
<table><tr><th>stage</th><th>best configuration</th><th>best {e(objective)}</th><th>trials</th>
<th>time spent (first start to last end)</th><th>training time (sum over trials)</th></tr>"""]
    for row in _summary_rows(stages, chosen_lr):
        parts.append("<tr>" + "".join(f"<td>{e(cell)}</td>" for cell in row) + "</tr>")
    parts.append("</table>")

    def figure_block(key: str, stage: str | None, of: str = "") -> None:
        """The figure ``key`` (of stage lr ``of``, where each listed choice has its own: ``lr_time_lr-optimizer-adam``)."""
        kind = key
        key = f"{key}_{file_key(of)}" if of and of != "lr" else key
        if key in figures:
            words = "".join(f"<li>{e(s)}</li>" for s in diagnosis.get(stage, [])) if stage else ""
            side = f"<h3>Diagnosis</h3><ul>{words}</ul>" if words else ""
            wide = " wide" if kind in WIDE_FIGURES else ""
            caption = lr_time_caption(trial_costs(stages[of or "lr"].runs), word) if kind == "lr_time" else \
                CAPTIONS[kind].format(what=what, word=word)
            parts.append(
                f'<div class="fig{wide}"><a href="{e(figures[key].name)}"><img src="{e(figures[key].name)}" '
                f'alt="{e(key)}"></a><div class="words"><p class="caption">{e(caption)}</p>{side}</div></div>'
            )
        elif key in missing:
            parts.append(f'<p class="missing">{e(key)}: not drawn: {e(missing[key])}.</p>')

    for lr in lr_stages(stages):  # with listed choices, one per choice
        choice = stages[lr].study.user_attrs.get(CHOICE_ATTR) or {}
        words = ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in choice.items())
        which = f" for {words}" if words else ""
        parts.append(f"<h2>Stage {e(lr)}: calibrating the learning rate{e(which)} on a small network</h2>")
        figure_block("lr_sensitivity", lr, lr)
        figure_block("lr_curves", None, lr)
        figure_block("lr_time", None, lr)
    if "shape" in stages:
        at = "each at the rate calibrated for its choice" if stages["shape"].study.user_attrs.get(RATES_ATTR) else "at that rate"
        parts.append(f"<h2>Stage shape: network size and decay schedule, {at}</h2>")
        figure_block("shape", "shape")
    if "audit" in stages:
        parts.append("<h2>Stage audit: everything sampled jointly at random</h2><ul>"
                     + "".join(f"<li>{e(s)}</li>" for s in diagnosis.get("audit", [])) + "</ul>")
    parts.append("<h2>Importances</h2>")
    figure_block("importance", "importance")
    parts.append("<h2>Interactive figures (Optuna)</h2><ul>")
    for key, path in figures.items():
        if path.suffix == ".html":
            if key.startswith("history_"):
                named = {file_key(stage): stage for stage in stages}  # lr-optimizer-adam: stage lr[optimizer=adam]
                title = INTERACTIVE_TITLES["history"].format(stage=named.get(key.removeprefix("history_"), key))
            else:
                title = INTERACTIVE_TITLES.get(key, key).format(word=word)
            parts.append(f'<li><a href="{e(path.name)}">{e(title)}</a></li>')
    for key in ("interactive", "contour_shape"):
        if key in missing:
            parts.append(f"<li>{e(key)}: not drawn: {e(missing[key])}.</li>")
    bare, had_password = without_password(url)  # a command that runs as shown: no password, nor a *** in its place
    parts.append("</ul><p class=\"caption\">Browse every trial live with <code>tuner dashboard --storage "
                 f"{e(bare)}</code>{e(PASSWORD_NOTE) if had_password else ''}.</p></body></html>\n")
    return "\n".join(parts)
