"""A staged study: what each stage searches, its Optuna study, the trials, the runner.

In the order a study flows: :mod:`~tuner.study.stored` (the stored contract: study names,
attribute names, versioned migrations), :mod:`~tuner.study.results` (reading a study back),
:mod:`~tuner.study.stages` (what each stage searches),
:mod:`~tuner.study.lr_scale` (the range ``lr_scale = "auto"`` resolves to, by optimizer and shape),
:mod:`~tuner.study.rate_rule` (which rate a noisy lr sweep points at: numpy only) and
:mod:`~tuner.study.handoff` (the rate handed on to stage ``shape``, chosen once, with its record),
:mod:`~tuner.study.stage_studies` (the stage studies, created and checked once),
:mod:`~tuner.study.lr_range` (the range test of ``lr_range = "auto"``, kept on the study),
:mod:`~tuner.study.trials` (asking, training and telling trials),
:mod:`~tuner.study.finished` (a study with nothing left to run, read back without torch),
:mod:`~tuner.study.runner` (the stages in order, budgets, resume) and
:mod:`~tuner.study.progress` (the hooks a study reports through; what the console and a notebook show).

May import: ``tuner.errors``, ``tuner.inputs``, ``tuner.training``, ``tuner.storage``, and
``tuner.analysis`` for the audit's verdict (``tuner.analysis`` reads ``results`` only).
"""
