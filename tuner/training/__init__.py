"""Training, free of Optuna: the loop, learning-rate schedules, batched copies and the range test.

- :mod:`~tuner.training.train`: one trial's training loop (optimizer, schedule, per-epoch
  validation, divergence guard);
- :mod:`~tuner.training.schedules`: the decay schedules;
- :mod:`~tuner.training.batched`: several trials of a small network trained as one batched model;
- :mod:`~tuner.training.functional`: K copies of any ``nn.Module`` trained as one through ``torch.func``
  (their flat parameters and optimizers: :mod:`~tuner.training.functional_state`; which trials
  batch, and why others train alone: :mod:`~tuner.training.functional_plans`);
- :mod:`~tuner.training.trainers`: the trainer of a batch of plans, picked in one place (``make_trainer``);
- :mod:`~tuner.training.lr_find`, :mod:`~tuner.training.lr_suggest`: the learning-rate range test
  and the search range it suggests.

May import: ``tuner.errors`` and ``tuner.inputs``.
"""
