"""What a study is given: the spec, the data, the user's own code and the model families.

- :mod:`~tuner.inputs.spec`: the study file (TOML), validated once, at the edge;
- :mod:`~tuner.inputs.families`: the names a spec may give as ``model.family`` (no torch);
- :mod:`~tuner.inputs.models`: the built-in families (``mlp``, ``lstm``, ``cnn``) and building one;
- :mod:`~tuner.inputs.usercode`: ``"module:function"`` names made callables, and their identity;
  :mod:`~tuner.inputs.code_hash`: the identity of a function without a source file (its code);
- :mod:`~tuner.inputs.data`, :mod:`~tuner.inputs.user_data`: bundled data, a CSV file, a user's
  loader; :mod:`~tuner.inputs.load`: :func:`~tuner.inputs.load.load_dataset`, the one entry.

May import: ``tuner.errors`` and each other (no circle); nothing from training, study or later.
"""
