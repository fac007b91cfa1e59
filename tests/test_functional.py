"""K copies of any network trained as one through torch.func tell the story each copy tells alone."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from tuner.inputs.data import Dataset
from tuner.inputs.families import ModelFamily
from tuner.inputs.load import load_dataset
from tuner.inputs.spec import DataSpec
from tuner.inputs.usercode import UserCode
from tuner.training.functional import FuncBatchedTrainer
from tuner.training.functional_plans import batch_plans, built_copy
from tuner.training.train import EpochResult, TrainConfig, TrialPlan, train_epochs
from tuner.training.trainers import LOOP_FALLBACK, EpochsTrainer, PartsTrainer, make_trainer

TOLERANCE = 1e-4  # float32 sums in another order: a few ulps, far below any real difference


def small_cnn(input_shape: tuple[int, ...], n_outputs: int, width: int, depth: int, slope: float = 0.0) -> nn.Module:
    """A 1-D CNN over a row's features, with BatchNorm (buffers per copy) and a lazy read-out.

    No bias before BatchNorm (it cancels it): Adam would turn that bias's round-off gradient into steps of
    the full rate, batched or alone, and the running means after it into noise.
    """
    layers: list[nn.Module] = [nn.Unflatten(1, (1, input_shape[-1]))]
    channels = 1
    for _ in range(depth):
        layers += [nn.Conv1d(channels, width, 3, padding=1, bias=False), nn.BatchNorm1d(width), nn.LeakyReLU(slope)]
        channels = width
    return nn.Sequential(*layers, nn.Flatten(), nn.LazyLinear(n_outputs))


def dropout_mlp(input_shape: tuple[int, ...], n_outputs: int, width: int, depth: int) -> nn.Module:
    return nn.Sequential(nn.Linear(input_shape[-1], width), nn.ReLU(), nn.Dropout(0.5), nn.Linear(width, n_outputs))


def lstm_model(input_shape: tuple[int, ...], n_outputs: int, width: int, depth: int) -> nn.Module:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(input_shape[-1], width, batch_first=True)
            self.out = nn.Linear(width, n_outputs)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.lstm(x)[0][:, -1])
    return Net()


CNN = ModelFamily("test_functional:small_cnn", small_cnn)


@pytest.fixture(scope="module")
def wine() -> Dataset:
    return load_dataset(DataSpec(name="wine"), seed=0)


def _plans(configs: list[TrainConfig], width: int = 4, depth: int = 1, declared: dict | None = None) -> list[TrialPlan]:
    return [TrialPlan(width, depth, config, {"lr": config.lr}, dict(declared or {})) for config in configs]


def _alone(family: object, data: Dataset, plan: TrialPlan) -> tuple[list[EpochResult], nn.Module]:
    # Lazy layers made first, as SingleTrainer's untrained evaluation makes them (Adagrad's state needs their shapes).
    model = built_copy(family, data, plan)  # type: ignore[arg-type]
    return list(train_epochs(model, data, plan.train)), model


def _together(family: object, data: Dataset, plans: list[TrialPlan]) -> tuple[FuncBatchedTrainer, list[list[EpochResult | None]]]:
    parts, reason = batch_plans(family, data, plans, timed=False)  # type: ignore[arg-type]
    assert reason is None and len(parts) == 1
    trainer = parts[0].trainer
    assert trainer is not None
    return trainer, list(trainer.epochs())


def _curve(epochs: list[list[EpochResult | None]], i: int) -> list[EpochResult]:
    return [results[i] for results in epochs if results[i] is not None]


def _assert_close(alone: list[EpochResult], batched: list[EpochResult]) -> None:
    assert [(a.epoch, a.diverged) for a in alone] == [(b.epoch, b.diverged) for b in batched]
    for a, b in zip(alone, batched):
        assert b.lr == pytest.approx(a.lr, rel=1e-12)
        for field in ("train_loss", "val_loss", "val_error"):
            assert getattr(b, field) == pytest.approx(getattr(a, field), rel=TOLERANCE, abs=TOLERANCE), field


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rmsprop", "adagrad"])
def test_each_optimizer_trains_k_copies_as_torch_optim_trains_each_alone(wine: Dataset, optimizer: str) -> None:
    # Each copy with its own rate, momentum, weight decay and schedule; BatchNorm and a lazy layer in the network.
    configs = [
        TrainConfig(lr=0.003, epochs=4, batch_size=32, optimizer=optimizer),
        TrainConfig(lr=0.02, epochs=4, batch_size=32, optimizer=optimizer, momentum=0.5, weight_decay=1e-3),
        TrainConfig(lr=0.01, epochs=4, batch_size=32, optimizer=optimizer, schedule="exponential", decay=0.1),
    ]
    plans = _plans(configs)
    trainer, epochs = _together(CNN, wine, plans)
    for i, plan in enumerate(plans):
        alone, model = _alone(CNN, wine, plan)
        _assert_close(alone, _curve(epochs, i))
        batched = trainer.state(i)
        for name, parameter in model.named_parameters():
            assert torch.allclose(batched[name], parameter.detach(), rtol=1e-4, atol=1e-5), (optimizer, i, name)


def test_batchnorm_keeps_running_statistics_per_copy(wine: Dataset) -> None:
    plans = _plans([TrainConfig(lr=lr, epochs=2, batch_size=32) for lr in (0.001, 0.1)])
    trainer, _ = _together(CNN, wine, plans)
    first, second = trainer.state(0), trainer.state(1)
    assert not torch.allclose(first["2.running_mean"], second["2.running_mean"])  # each copy's statistics of its own activations
    _, model = _alone(CNN, wine, plans[1])
    for name, buffer in model.named_buffers():
        assert torch.allclose(second[name].to(buffer.dtype), buffer, rtol=1e-4, atol=1e-5), name


def test_copies_with_the_same_seed_draw_different_dropout_masks(wine: Dataset) -> None:
    family = ModelFamily("test_functional:dropout_mlp", dropout_mlp)
    plans = _plans([TrainConfig(lr=0.05, epochs=1, batch_size=64) for _ in range(8)], width=64)
    (part,), _ = batch_plans(family, wine, plans, timed=False)
    trainer = part.trainer
    assert trainer is not None
    # The same weights in every copy (one seed) on one batch: only their dropout masks can tell them apart.
    views = trainer.layout.views(trainer.flat)
    assert all(torch.equal(view[0], view[-1]) for view in views.values())  # one seed: one set of weights in every copy
    x, y = wine.x_train[:64], wine.y_train[:64]
    trainer.base.train()
    draws = torch.stack([trainer._gradient(trainer.flat, trainer.buffers, x, y, True)[1] for _ in range(50)])
    assert all(len(set(losses.tolist())) == len(plans) for losses in draws)  # eight masks, eight losses, every step
    assert draws.std(dim=0).min() > 0  # and new masks at each step
    # Each copy draws from the same distribution of masks: over 50 steps their mean losses agree within noise.
    means, spread = draws.mean(dim=0), draws.std(dim=0).max() / math.sqrt(len(draws))
    assert (means.max() - means.min()) < 8 * spread
    hidden = trainer.base[:3]  # Linear, ReLU, Dropout(0.5): about half of the positive units are zeroed
    first = {name.removeprefix("0."): view[0] for name, view in views.items() if name.startswith("0.")}
    alive = torch.func.functional_call(hidden[0], first, (x,)) > 0
    dropped = (torch.func.functional_call(hidden, {f"0.{n}": v for n, v in first.items()}, (x,)) == 0) & alive
    assert 0.4 < dropped.sum().item() / alive.sum().item() < 0.6
    trainer.base.eval()
    _, evaluated = trainer._gradient(trainer.flat, trainer.buffers, x, y, True)
    assert len(set(evaluated.tolist())) == 1  # no dropout in eval mode: the copies agree


def test_lazy_modules_are_made_before_stacking(wine: Dataset) -> None:
    model = built_copy(CNN, wine, _plans([TrainConfig(lr=0.01)])[0])
    assert not any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters())
    assert type(model[-1]) is nn.Linear


def test_a_diverged_copy_stops_and_the_others_go_on(wine: Dataset) -> None:
    plans = _plans([TrainConfig(lr=lr, epochs=4, batch_size=32) for lr in (0.01, 1e4, 0.03)])
    _, epochs = _together(CNN, wine, plans)
    blown = _curve(epochs, 1)
    assert blown[-1].diverged and len(blown) < 4
    for i in (0, 2):
        curve = _curve(epochs, i)
        assert len(curve) == 4 and not any(r.diverged for r in curve)
        _assert_close(_alone(CNN, wine, plans[i])[0], curve)


def test_other_factory_arguments_train_apart(wine: Dataset) -> None:
    configs = [TrainConfig(lr=0.01, epochs=1, batch_size=32) for _ in range(3)]
    plans = [*_plans(configs[:2], declared={"slope": 0.1}), *_plans(configs[2:], declared={"slope": 0.2})]
    parts, reason = batch_plans(CNN, wine, plans, timed=False)
    assert sorted(part.indices for part in parts) == [[0, 1], [2]]
    assert reason is not None and "different networks" in reason


def test_an_lstm_trains_one_at_a_time_and_says_why() -> None:
    data = load_dataset(DataSpec(name="digits_rows", max_rows=200), seed=0)
    family = ModelFamily("test_functional:lstm_model", lambda n_in, n_out, width, depth: lstm_model((n_in,), n_out, width, depth),
                         inputs="sequence")
    plans = _plans([TrainConfig(lr=lr, epochs=1, batch_size=32) for lr in (0.01, 0.1)], width=40)
    trainer = make_trainer(plans, data, UserCode(family=family), torch.device("cpu"))
    assert isinstance(trainer, PartsTrainer)
    assert trainer.fallback is not None and "LSTM" in trainer.fallback
    assert trainer.trained_together == [1, 1]
    seen: list[int] = []
    trainer.run(lambda results: seen.extend(i for i, r in enumerate(results) if r is not None) or [])
    assert seen == [0, 1]


def test_a_users_loop_trains_one_at_a_time_and_says_why(wine: Dataset) -> None:
    def loop(model: nn.Module, report: object, epochs: int) -> None:
        for epoch in range(1, epochs + 1):
            report(epoch, 0.5)  # type: ignore[operator]

    plans = _plans([TrainConfig(lr=lr, epochs=2, batch_size=32) for lr in (0.01, 0.1)])
    trainer = make_trainer(plans, wine, UserCode(family="mlp", loop=loop), torch.device("cpu"))
    assert trainer.fallback == LOOP_FALLBACK
    counts: list[int] = []
    trainer.run(lambda results: counts.append(sum(r is not None for r in results)) or [])
    assert counts == [1, 1, 1, 1]


def test_copies_whose_batched_step_is_slower_than_k_steps_alone_train_alone(wine: Dataset,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from tuner.training import functional

    monkeypatch.setattr(functional, "_race", lambda batched, alone, device: (1.0, 0.01))  # as vmap's per-copy loop would be
    plans = _plans([TrainConfig(lr=lr, epochs=1, batch_size=32) for lr in (0.01, 0.1)])
    trainer = make_trainer(plans, wine, UserCode(family=CNN), torch.device("cpu"))
    assert isinstance(trainer, PartsTrainer) and trainer.trained_together == [1, 1]
    assert trainer.fallback is not None and "more than 2 steps of one copy" in trainer.fallback


def test_make_trainer_batches_a_cnn_through_torch_func(wine: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuner.training import functional_plans

    monkeypatch.setattr(functional_plans, "TIMED_PROBE", False)
    plans = _plans([TrainConfig(lr=lr, epochs=1, batch_size=32) for lr in (0.01, 0.1, 0.3)])
    trainer = make_trainer(plans, wine, UserCode(family=CNN), torch.device("cpu"))
    assert isinstance(trainer, EpochsTrainer) and trainer.fallback is None
    assert trainer.trained_together == [3, 3, 3]
    assert isinstance(trainer._epochs, FuncBatchedTrainer)
    finals: list[list[EpochResult | None]] = []
    trainer.run(lambda results: finals.append(results) or [])
    assert all(r is not None and math.isfinite(r.val_loss) for r in finals[-1])


CNN_MODULE = '''
from torch import nn


def make(input_shape, n_outputs, width, depth):
    """A 1-D CNN over a row's features: two convolutions of `width` channels, BatchNorm, a lazy read-out."""
    return nn.Sequential(
        nn.Unflatten(1, (1, input_shape[-1])),
        nn.Conv1d(1, width, 3, padding=1, bias=False), nn.BatchNorm1d(width), nn.ReLU(),
        nn.Conv1d(width, width, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.LazyLinear(n_outputs),
    )
'''

CNN_SPEC = '''
name = "{name}"
seed = 3
[data]
name = "wine"
[model]
family = "mycnn:make"
width = 8
depth = 1
[train]
epochs = 3
batch_size = 32
optimizer = "{optimizer}"
[stages.lr]
trials = 6
lr_min = 1e-3
lr_max = 1e5
sampler = "random"
batched = {batched}
batch_trials = 6
[stages.shape]
trials = 1
width = [4, 4]
depth = [1, 1]
'''


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_users_cnn_stage_lr_trains_batched_and_stores_what_one_at_a_time_stores(tmp_path: Path, optimizer: str,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna
    from optuna.trial import TrialState

    import tuner
    from tuner.training import functional_plans

    monkeypatch.setattr(functional_plans, "TIMED_PROBE", False)  # a busy machine's timings would make K vary from run to run

    (tmp_path / "mycnn.py").write_text(CNN_MODULE)
    url = f"sqlite:///{tmp_path / 'cnn.db'}"
    stored = {}
    for batched in (False, True):
        name = f"cnn-{optimizer}-{'batched' if batched else 'alone'}"
        spec = tmp_path / f"{name}.toml"
        spec.write_text(CNN_SPEC.format(name=name, optimizer=optimizer, batched=str(batched).lower()))
        tuner.run_study(spec, storage=url, device="cpu")
        stored[batched] = optuna.load_study(study_name=f"{name}/lr", storage=url)
    alone, together = stored[False].trials, stored[True].trials
    assert [t.params for t in alone] == [t.params for t in together]  # the random sampler: the same rates
    # Asked six at a time, trained as six copies of one network; the study keeps K and no fallback.
    assert [t.user_attrs["batched_with"] for t in together] == [6] * 6, stored[True].user_attrs.get("fallback")
    assert [t.user_attrs["batched_with"] for t in alone] == [1] * 6
    assert stored[True].user_attrs["trained_together"] == 6 and "fallback" not in stored[True].user_attrs
    assert stored[True].user_attrs["search"]["ask_batch"] == 6
    assert any(t.user_attrs["diverged"] for t in together), [t.params["lr"] for t in together]  # rates up to 1e5 blow up
    assert any(t.state == TrialState.COMPLETE for t in together)
    for a, b in zip(alone, together):
        assert (a.state, a.user_attrs["diverged"]) == (b.state, b.user_attrs["diverged"])
        for attr in ("learning_curve", "train_loss_curve"):
            x, y = a.user_attrs[attr], b.user_attrs[attr]
            assert len(x) == len(y)
            kept = len(x) - 1 if a.user_attrs["diverged"] else len(x)  # a blown-up epoch's loss: only its being there
            assert y[:kept] == pytest.approx(x[:kept], rel=TOLERANCE, abs=TOLERANCE), attr
        if a.state == TrialState.COMPLETE:
            assert b.value == pytest.approx(a.value, rel=TOLERANCE, abs=TOLERANCE)


def test_a_stage_lr_stored_before_torch_func_copies_resumes_asking_as_it_began() -> None:
    import tuner
    from tuner.study.stages import describe_search, lr_stage, resumed_ask_batch

    spec = tuner.spec_from_dict({"name": "own", "model": {"family": "mynet:make"}, "stages": {"lr": {"batch_trials": 8}}})
    stage = lr_stage(spec)
    assert stage.batch_trials == 8  # a user's model: asked eight at a time now
    search = describe_search(stage)
    assert search["ask_batch"] == 8
    assert resumed_ask_batch(spec, stage, search, n_trials=5).batch_trials == 8
    before = {key: value for key, value in search.items() if key != "ask_batch"}  # as stored before issue 23
    assert resumed_ask_batch(spec, stage, before, n_trials=5).batch_trials == 1  # asked one at a time then: still so
    assert resumed_ask_batch(spec, stage, before, n_trials=0).batch_trials == 8  # no trial yet: nothing to keep


def item_in_forward(input_shape: tuple[int, ...], n_outputs: int, width: int, depth: int) -> nn.Module:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(input_shape[-1], n_outputs)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.layer(x)
            return out * (2.0 if out.mean().item() > 0 else 1.0)  # Python on a copy's own values: not under vmap
    return Net()


def test_a_model_that_calls_item_in_forward_trains_one_at_a_time_and_says_why(wine: Dataset,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from tuner.training import functional_plans

    monkeypatch.setattr(functional_plans, "TIMED_PROBE", False)
    family = ModelFamily("test_functional:item_in_forward", item_in_forward)
    plans = _plans([TrainConfig(lr=lr, epochs=1, batch_size=32) for lr in (0.01, 0.1)])
    trainer = make_trainer(plans, wine, UserCode(family=family), torch.device("cpu"))
    assert isinstance(trainer, PartsTrainer) and trainer.trained_together == [1, 1]
    assert trainer.fallback is not None and "does not run under torch.func.vmap" in trainer.fallback
    # torch's message is cut where its sentence ends, not in the middle of the address it ends with (a new user saw
    # "...file an issue at https://github.com").
    assert "calling .item() on a Tensor.): trials train one at a time" in trainer.fallback and "http" not in trainer.fallback


LSTM_MODULE = '''
from torch import nn


class Net(nn.Module):
    def __init__(self, n_features, n_outputs, width):
        super().__init__()
        self.lstm = nn.LSTM(n_features, width, batch_first=True)
        self.out = nn.Linear(width, n_outputs)

    def forward(self, x):
        return self.out(self.lstm(x)[0][:, -1])


def make(input_shape, n_outputs, width, depth):
    return Net(input_shape[-1], n_outputs, width)
'''


def test_a_stage_of_a_users_lstm_keeps_the_fallbacks_reason_and_the_summary_shows_it(tmp_path: Path) -> None:
    import optuna

    import tuner
    from tuner.study.progress import summary_table

    (tmp_path / "mylstm.py").write_text(LSTM_MODULE)
    spec = tmp_path / "seq.toml"
    spec.write_text('name = "seq"\n[data]\nname = "digits_rows"\nmax_rows = 200\n[model]\nfamily = "mylstm:make"\nwidth = 8\n'
                    '[train]\nepochs = 1\n[stages.lr]\ntrials = 4\nbatch_trials = 4\n'
                    '[stages.shape]\ntrials = 1\nwidth = [8, 8]\ndepth = [1, 1]\n')
    url = f"sqlite:///{tmp_path / 'seq.db'}"
    result = tuner.run_study(spec, storage=url, device="cpu")
    study = optuna.load_study(study_name="seq/lr", storage=url)
    assert study.user_attrs["search"]["ask_batch"] == 4  # asked four at a time: TPE sees what it would with copies
    assert "LSTM" in study.user_attrs["fallback"] and study.user_attrs.get("trained_together", 1) == 1
    assert {t.user_attrs["batched_with"] for t in study.trials} == {1}
    assert result.stages["lr"].fallback == study.user_attrs["fallback"]
    assert study.user_attrs["fallback"] in str(summary_table(result, "val_error").caption)


@pytest.mark.parametrize("case", ["own loop", "wide lstm"])
def test_a_batched_stage_the_spec_asks_one_at_a_time_says_why_in_the_summary(case: str, tmp_path: Path) -> None:
    # A new user's try: [train] loop with batched = true and batch_trials = 6 trained one trial at a time, and
    # nothing said so (the trials are asked one at a time, so no batch ever fell back while training).
    import optuna

    import tuner
    from tuner.study.progress import summary_table
    from tuner.training.batched import BATCHED_LSTM_MAX_WIDTH

    def loop(model: nn.Module, report: object, epochs: int) -> None:
        for epoch in range(1, epochs + 1):
            report(epoch, 1.0 / epoch)  # type: ignore[operator]

    table = {"name": "apart", "data": {"name": "digits_rows", "max_rows": 200}, "train": {"epochs": 1},
             "stages": {"lr": {"trials": 3, "batched": True, "batch_trials": 6},
                        "shape": {"trials": 1, "width": [4, 4], "depth": [1, 1]}}}
    if case == "own loop":
        table["train"]["loop"] = "mine:loop"  # type: ignore[index]
        table["model"] = {"family": "mlp", "width": 4}
        expected = LOOP_FALLBACK
    else:
        table["model"] = {"family": "lstm", "width": BATCHED_LSTM_MAX_WIDTH + 8}
        expected = f"up to {BATCHED_LSTM_MAX_WIDTH} units only, not at width {BATCHED_LSTM_MAX_WIDTH + 8}"
    url = f"sqlite:///{tmp_path / 'apart.db'}"
    result = tuner.run_study(tuner.spec_from_dict(table), storage=url, device="cpu",
                             **({"loop": loop} if case == "own loop" else {}))
    study = optuna.load_study(study_name="apart/lr", storage=url)
    assert study.user_attrs["search"]["ask_batch"] == 1 and {t.user_attrs["batched_with"] for t in study.trials} == {1}
    assert expected in study.user_attrs["fallback"] and result.stages["lr"].fallback == study.user_attrs["fallback"]
    assert study.user_attrs["fallback"] in str(summary_table(result, "val_error").caption)
    # Not said where nothing was asked for: batched = false.
    table["name"], table["stages"]["lr"]["batched"] = "plain", False  # type: ignore[index]
    tuner.run_study(tuner.spec_from_dict(table), storage=url, device="cpu", **({"loop": loop} if case == "own loop" else {}))
    assert "fallback" not in optuna.load_study(study_name="plain/lr", storage=url).user_attrs


def frozen_first_layer(input_shape: tuple[int, ...], n_outputs: int, width: int, depth: int) -> nn.Module:
    model = nn.Sequential(nn.Linear(input_shape[-1], width), nn.ReLU(), nn.Linear(width, n_outputs))
    model[0].weight.requires_grad_(False)
    return model


def unused_layer(input_shape: tuple[int, ...], n_outputs: int, width: int, depth: int) -> nn.Module:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.spare = nn.Linear(input_shape[-1], n_outputs), nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)
    return Net()


@pytest.mark.parametrize(("factory", "words"), [(frozen_first_layer, "frozen parameters (0.weight)"),
                                                (unused_layer, "leaves parameters unused (spare.weight, spare.bias)")])
def test_parameters_torch_optim_would_leave_be_make_copies_train_alone(wine: Dataset, factory: object, words: str) -> None:
    # torch.optim skips a frozen parameter and one without a gradient (weight decay included): the flat copies cannot.
    family = ModelFamily(f"test_functional:{factory.__name__}", factory)  # type: ignore[attr-defined]
    plans = _plans([TrainConfig(lr=lr, epochs=1, batch_size=32, weight_decay=0.1) for lr in (0.01, 0.1)])
    parts, reason = batch_plans(family, wine, plans, timed=False)
    assert [part.indices for part in parts] == [[0], [1]] and all(part.trainer is None for part in parts)
    assert reason is not None and words in reason


def random_projection(input_shape: tuple[int, ...], n_outputs: int, width: int, depth: int) -> nn.Module:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.projection = torch.randn(input_shape[-1], width)  # a plain attribute: functional_call shares copy 0's
            self.out = nn.Linear(width, n_outputs)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(x @ self.projection)
    return Net()


def test_a_tensor_held_as_a_plain_attribute_batches_only_between_copies_where_it_is_equal(wine: Dataset) -> None:
    family = ModelFamily("test_functional:random_projection", random_projection)
    same_seed = _plans([TrainConfig(lr=lr, epochs=1, batch_size=32) for lr in (0.01, 0.1)])
    parts, reason = batch_plans(family, wine, same_seed, timed=False)
    assert [part.indices for part in parts] == [[0, 1]] and reason is None
    other_seeds = _plans([TrainConfig(lr=0.01, epochs=1, batch_size=32, seed=seed) for seed in (0, 1)])
    parts, reason = batch_plans(family, wine, other_seeds, timed=False)
    assert [part.indices for part in parts] == [[0], [1]]  # copy 1 would have run with copy 0's projection
    assert reason is not None and "different networks" in reason
