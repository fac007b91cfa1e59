"""Trials trained together as one batched model tell the same story as each trained alone."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import tuner
from tuner.inputs.data import Dataset
from tuner.inputs.load import load_dataset
from tuner.inputs.spec import DataSpec
from tuner.study.stages import TrialPlan, lr_stage
from tuner.training.batched import supports, train_batched
from tuner.training.train import EpochResult, TrainConfig, seeded_model, train_epochs

TOLERANCE = 1e-4  # float32 sums in another order: a few ulps, far below any real difference




def _alone(data: Dataset, plan: TrialPlan, family: str = "mlp") -> list[EpochResult]:
    model = seeded_model(family, data, plan.width, plan.depth, plan.train.seed)
    return list(train_epochs(model, data, plan.train))


def _together(data: Dataset, plans: list[TrialPlan], active: list[bool] | None = None,
              family: str = "mlp") -> list[list[EpochResult | None]]:
    active = [True] * len(plans) if active is None else active
    return list(train_batched(family, data, plans, active))


def _curve(epochs: list[list[EpochResult | None]], i: int) -> list[EpochResult]:
    return [results[i] for results in epochs if results[i] is not None]


def _assert_same_curve(alone: list[EpochResult], batched: list[EpochResult], diverged_values: bool = True) -> None:
    """Same epochs, rates and divergence; values within TOLERANCE (in the epoch a run diverged in
    too, unless ``diverged_values`` is False: there the loss is blowing up, and so are differences)."""
    assert len(alone) == len(batched)
    for a, b in zip(alone, batched):
        assert (a.epoch, a.diverged) == (b.epoch, b.diverged)
        assert a.lr == pytest.approx(b.lr, rel=1e-12)
        if a.diverged and not diverged_values:
            continue
        for field in ("train_loss", "val_loss", "val_error"):
            assert getattr(b, field) == pytest.approx(getattr(a, field), rel=TOLERANCE, abs=TOLERANCE), field


@pytest.mark.parametrize(("data_name", "optimizer"), [("wine", "sgd"), ("diabetes", "sgd"), ("wine", "adam"), ("digits_rows", "adam")])
def test_each_batched_trial_matches_the_same_trial_trained_alone(data_name: str, optimizer: str) -> None:
    data = load_dataset(DataSpec(name=data_name, max_rows=400), seed=0)
    # Different rates, momenta, weight decays and schedules per copy: each must keep its own.
    configs = [
        TrainConfig(lr=0.003, epochs=6, batch_size=32, optimizer=optimizer),
        TrainConfig(lr=0.03, epochs=6, batch_size=32, optimizer=optimizer, momentum=0.5, weight_decay=1e-3),
        TrainConfig(lr=0.01, epochs=6, batch_size=32, optimizer=optimizer, schedule="exponential", decay=0.1),
        TrainConfig(lr=0.02, epochs=4, batch_size=32, optimizer=optimizer, schedule="step", decay=0.5, step_every=2),
    ]
    plans = [TrialPlan(12, 2, config) for config in configs]
    epochs = _together(data, plans)
    assert len(epochs) == 6 and all(len(results) == 4 for results in epochs)
    assert epochs[-1][3] is None  # the 4-epoch trial stopped after its own budget
    for i, plan in enumerate(plans):
        _assert_same_curve(_alone(data, plan), _curve(epochs, i))


def test_copies_with_different_seeds_each_get_their_own_weights_and_data_order() -> None:
    data = load_dataset(DataSpec(name="wine"), seed=0)
    plans = [TrialPlan(8, 1, TrainConfig(lr=0.05, epochs=4, batch_size=16, seed=seed)) for seed in (0, 1, 7)]
    epochs = _together(data, plans)
    curves = [_curve(epochs, i) for i in range(3)]
    for plan, curve in zip(plans, curves):
        _assert_same_curve(_alone(data, plan), curve)
    assert curves[0][0].train_loss != curves[1][0].train_loss


def test_a_diverging_copy_stops_and_leaves_the_others_untouched() -> None:
    data = load_dataset(DataSpec(name="wine"), seed=0)
    calm = [TrainConfig(lr=lr, epochs=5, batch_size=32) for lr in (0.001, 0.01, 0.1)]
    wild = TrainConfig(lr=1e4, epochs=5, batch_size=32)
    without = _together(data, [TrialPlan(8, 1, c) for c in calm])
    with_wild = _together(data, [TrialPlan(8, 1, c) for c in (calm[0], wild, calm[1], calm[2])])

    wild_curve = _curve(with_wild, 1)
    assert wild_curve[-1].diverged and len(wild_curve) < 5
    assert all(results[1] is None for results in with_wild[len(wild_curve):])
    alone_wild = _alone(data, TrialPlan(8, 1, wild))
    assert len(alone_wild) == len(wild_curve) and alone_wild[-1].diverged
    for i, j in ((0, 0), (1, 2), (2, 3)):
        calm_curve = _curve(with_wild, j)
        assert not any(r.diverged for r in calm_curve)
        # Bit for bit: the wild copy shares no arithmetic with the calm ones.
        assert [r.val_loss for r in calm_curve] == [r.val_loss for r in _curve(without, i)]
        assert [r.train_loss for r in calm_curve] == [r.train_loss for r in _curve(without, i)]


def test_a_copy_the_caller_deactivates_is_dropped_and_the_rest_go_on_unchanged() -> None:
    data = load_dataset(DataSpec(name="wine"), seed=0)
    plans = [TrialPlan(8, 1, TrainConfig(lr=lr, epochs=5, batch_size=32)) for lr in (0.003, 0.03, 0.3)]
    active = [True, True, True]
    seen: list[list[EpochResult | None]] = []
    for results in train_batched("mlp", data, plans, active):
        seen.append(results)
        if len(seen) == 2:
            active[1] = False  # e.g. the pruner stopped trial 1 after its second epoch
    assert len(seen) == 5
    assert [r is None for r in (results[1] for results in seen)] == [False, False, True, True, True]
    for i in (0, 2):
        _assert_same_curve(_alone(data, plans[i]), _curve(seen, i))


LSTM_DATA = {
    "digits_rows": DataSpec(name="digits_rows", max_rows=400),  # 8 steps of 8 features, 10 classes
    "adding": DataSpec(name="adding", samples=400, sequence_length=10),  # 10 steps of 2 features, regression
    "wine": DataSpec(name="wine"),  # a table: one step of 13 features
}
# The rates are the stable part of each range (well below where the loss starts to oscillate), and
# there the batched LSTM keeps within TOLERANCE with room to spare (3e-7 at worst in these tests, 1e-6
# over digits_lstm's 15 epochs). Near the edge of stability, training amplifies any difference in the
# last float bit: there a batched curve and the one trained alone part by 1e-2 within 5 epochs, and so
# do torch's own two LSTM kernels (oneDNN's and its native one, torch.backends.mkldnn) for the same trial.
LSTM_RATES = {"sgd": (0.01, 0.1, 0.05, 0.03, 1e3), "adam": (1e-3, 1e-2, 5e-3, 3e-3, 1e2)}


@pytest.mark.parametrize(("data_name", "optimizer", "depth"), [
    ("digits_rows", "sgd", 1), ("digits_rows", "adam", 2), ("adding", "adam", 1), ("adding", "sgd", 2), ("wine", "sgd", 1),
])
def test_each_batched_lstm_trial_matches_the_same_trial_trained_alone(data_name: str, optimizer: str, depth: int) -> None:
    data = load_dataset(LSTM_DATA[data_name], seed=0)
    plain, decayed, exponential, stepped, wild = LSTM_RATES[optimizer]
    # As for the MLP: each copy keeps its own rate, momentum, weight decay, schedule, epochs and seed.
    configs = [
        TrainConfig(lr=plain, epochs=6, batch_size=32, optimizer=optimizer),
        TrainConfig(lr=decayed, epochs=6, batch_size=32, optimizer=optimizer, momentum=0.5, weight_decay=1e-3),
        TrainConfig(lr=exponential, epochs=6, batch_size=32, optimizer=optimizer, schedule="exponential", decay=0.1, seed=1),
        TrainConfig(lr=stepped, epochs=4, batch_size=32, optimizer=optimizer, schedule="step", decay=0.5, step_every=2),
        TrainConfig(lr=wild, epochs=6, batch_size=32, optimizer=optimizer),
    ]
    plans = [TrialPlan(8, depth, config) for config in configs]
    epochs = _together(data, plans, family="lstm")
    assert len(epochs) == 6 and all(len(results) == 5 for results in epochs)
    assert epochs[-1][3] is None  # the 4-epoch trial stopped after its own budget
    for i, plan in enumerate(plans):
        alone = _alone(data, plan, family="lstm")
        _assert_same_curve(alone, _curve(epochs, i), diverged_values=False)
        if i == 4:
            assert alone[-1].diverged and len(alone) < 6  # the wild copy blew up, alone and batched alike
        else:
            assert not any(r.diverged for r in alone)


def test_batching_applies_to_the_mlp_and_the_lstm_with_sgd_or_adam_only() -> None:
    assert supports("mlp", "sgd") and supports("mlp", "adam") and supports("lstm", "sgd") and supports("lstm", "adam")
    assert not supports("mlp", "rmsprop") and not supports("lstm", "adagrad")
    assert not supports("cnn", "sgd") and not supports("nope", "sgd")
    data = load_dataset(DataSpec(name="wine"), seed=0)
    with pytest.raises(ValueError, match="width, depth"):
        _together(data, [TrialPlan(8, 1, TrainConfig(lr=0.1)), TrialPlan(16, 1, TrainConfig(lr=0.1))])
    with pytest.raises(ValueError, match="width, depth"):
        _together(data, [TrialPlan(8, 1, TrainConfig(lr=0.1)), TrialPlan(8, 2, TrainConfig(lr=0.1))], family="lstm")


def test_batching_goes_by_the_registered_factory_not_the_family_name() -> None:
    from tuner.inputs.families import register_model, unregister_model
    from tuner.inputs.models import LSTMRegressor

    try:
        register_model("my_lstm", LSTMRegressor, sequence=True)  # tuner's LSTM under another name: batched
        register_model("flat_lstm", LSTMRegressor)  # fed flattened samples: not the model the stacked form copies
        register_model("lstm", lambda n_in, n_out, width, depth: LSTMRegressor(n_in, n_out, width, depth), sequence=True)
        assert supports("my_lstm", "sgd")
        assert not supports("flat_lstm", "sgd") and not supports("lstm", "sgd")
    finally:
        unregister_model("my_lstm")
        unregister_model("flat_lstm")
        unregister_model("lstm")  # the built-in one is back
    assert supports("lstm", "sgd")


def _lr_study(name: str, batched: bool, storage_url: str, optimizer: str = "sgd", family: str = "mlp",
              data: dict[str, object] | None = None, lr_range: tuple[float, float] = (1e-3, 1e3)) -> list[optuna.trial.FrozenTrial]:
    spec = tuner.spec_from_dict({
        "name": name, "data": data or {"name": "wine"}, "model": {"family": family, "width": 8},
        "train": {"epochs": 4, "batch_size": 32, "optimizer": optimizer},
        "stages": {"lr": {"trials": 6, "lr_min": lr_range[0], "lr_max": lr_range[1], "sampler": "random", "batched": batched,
                          "batch_trials": 4},
                   "shape": {"trials": 1, "width": [4, 8], "depth": [1, 1]}},
    })
    assert lr_stage(spec).batch_trials == (4 if batched else 1)
    tuner.run_study(spec, storage=storage_url, device="cpu")
    return optuna.load_study(study_name=f"{name}/lr", storage=storage_url).trials


def test_a_batched_lr_stage_stores_what_the_one_at_a_time_stage_stores(storage_url: str) -> None:
    alone = _lr_study("alone", False, storage_url)
    batched = _lr_study("batched", True, storage_url)
    assert [t.params for t in alone] == [t.params for t in batched]  # same seeds, same sampled rates
    assert [t.user_attrs["batched_with"] for t in batched] == [4, 4, 4, 4, 2, 2]
    assert any(t.user_attrs["diverged"] for t in batched)  # rates up to 1e3: some blow up, alone
    assert any(t.state == TrialState.COMPLETE for t in batched)
    for a, b in zip(alone, batched):
        assert a.state == b.state
        assert a.user_attrs["diverged"] == b.user_attrs["diverged"]
        assert len(a.user_attrs["learning_curve"]) == len(b.user_attrs["learning_curve"])
        for x, y in zip(a.user_attrs["learning_curve"], b.user_attrs["learning_curve"]):
            assert (x is None) == (y is None)
            if x is not None:
                assert math.isclose(x, y, rel_tol=TOLERANCE, abs_tol=TOLERANCE)
        if a.state == TrialState.COMPLETE:
            assert b.value == pytest.approx(a.value, rel=TOLERANCE, abs=TOLERANCE)
            assert b.intermediate_values == pytest.approx(a.intermediate_values, rel=TOLERANCE, abs=TOLERANCE)


# The random sampler's six rates land at the same places of each range: here five in the stable part
# (sgd 1e-4 to 0.09, adam 1e-5 to 0.009) and one far beyond (sgd 500, adam 50), which blows up. Rates
# near the edge of stability are left out: see LSTM_RATES.
LSTM_STAGE_RANGES = {"sgd": (1e-6, 1e3), "adam": (1e-7, 1e2)}


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_batched_lstm_lr_stage_runs_batched_and_stores_what_the_one_at_a_time_stage_stores(optimizer: str,
                                                                                            storage_url: str) -> None:
    data, lr_range = {"name": "digits_rows", "max_rows": 300}, LSTM_STAGE_RANGES[optimizer]
    alone = _lr_study(f"alone-{optimizer}", False, storage_url, optimizer, "lstm", data, lr_range)
    batched = _lr_study(f"batched-{optimizer}", True, storage_url, optimizer, "lstm", data, lr_range)
    rates = sorted(t.params["lr"] for t in alone)
    assert rates[-1] > 1000 * rates[-2]  # as said above: the sampled rates are where this test wants them
    assert [t.params for t in alone] == [t.params for t in batched]
    assert [t.user_attrs["batched_with"] for t in alone] == [1] * 6
    assert [t.user_attrs["batched_with"] for t in batched] == [4, 4, 4, 4, 2, 2]  # trained as stacked LSTMs
    assert [t.user_attrs["time_measure"] for t in batched] == ["batch_share"] * 6
    assert [t.user_attrs["diverged"] for t in batched] == [t.params["lr"] == rates[-1] for t in batched]
    for a, b in zip(alone, batched):
        assert (a.state, a.user_attrs["diverged"]) == (b.state, b.user_attrs["diverged"])
        for attr in ("learning_curve", "train_loss_curve"):
            x, y = a.user_attrs[attr], b.user_attrs[attr]
            assert len(x) == len(y)
            # The epoch a trial diverged in holds a blown-up loss: only its being there is compared.
            kept = len(x) - 1 if a.user_attrs["diverged"] else len(x)
            assert y[:kept] == pytest.approx(x[:kept], rel=TOLERANCE, abs=TOLERANCE), attr
        if a.state == TrialState.COMPLETE:
            assert b.value == pytest.approx(a.value, rel=TOLERANCE, abs=TOLERANCE)


def test_stage_lr_asks_together_wherever_copies_may_train_as_one(tmp_path: Path) -> None:
    # The cnn family has no hand-written stacked form: its copies train through torch.func (issue 23).
    spec = tuner.spec_from_dict({"name": "img", "data": {"name": "digits_images"}, "model": {"family": "cnn"},
                                 "stages": {"lr": {"batched": True}}})
    assert lr_stage(spec).batch_trials == 16
    lstm = tuner.spec_from_dict({"name": "seq", "data": {"name": "digits_rows"}, "model": {"family": "lstm"}})
    assert lr_stage(lstm).batch_trials == 16
    loop = tuner.spec_from_dict({"name": "own", "train": {"loop": "mine:loop"}})
    assert lr_stage(loop).batch_trials == 1  # a user's loop trains one trial at a time: it is asked so


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # plain ask/tell on a heartbeat storage
@pytest.mark.parametrize("kind", ["sqlite", "stock-rdb", "memory"])
def test_a_batchs_records_written_at_once_read_back_as_one_by_one_writes_would(kind: str, storage_url: str) -> None:
    from tuner.storage import worker_attrs, write_trial_records

    storage = {"sqlite": lambda: tuner.open_storage(storage_url), "stock-rdb": lambda: optuna.storages.RDBStorage(storage_url),
               "memory": optuna.storages.InMemoryStorage}[kind]()
    study = optuna.create_study(study_name="records", storage=storage)
    trials = [study.ask() for _ in range(3)]
    trials[0].set_user_attr("device", "old")  # written before: overwritten, not duplicated
    trials[0].report(9.0, 1)
    write_trial_records(study, [
        (trial._trial_id, {"device": "cpu", "learning_curve": [0.5, None], "diverged": i == 2},
         {1: 0.5, 2: float("inf")} if i < 2 else {})
        for i, trial in enumerate(trials)
    ])
    study.tell(trials[0], 0.25)
    study.tell(trials[1], state=TrialState.PRUNED)
    study.tell(trials[2], state=TrialState.PRUNED)
    stored = optuna.load_study(study_name="records", storage=storage).trials
    owner = set(worker_attrs())  # every trial tuner's SQLite storage creates names its owner
    assert [{k: v for k, v in t.user_attrs.items() if k not in owner} for t in stored] == [
        {"device": "cpu", "learning_curve": [0.5, None], "diverged": False},
        {"device": "cpu", "learning_curve": [0.5, None], "diverged": False},
        {"device": "cpu", "learning_curve": [0.5, None], "diverged": True},
    ]
    assert stored[0].intermediate_values == {1: 0.5, 2: float("inf")}
    assert stored[1].value == float("inf")  # a pruned trial's value is its last report, as Optuna does
    assert stored[2].intermediate_values == {}
    with pytest.raises(RuntimeError):  # a finished trial cannot be changed, in bulk either
        write_trial_records(study, [(trials[0]._trial_id, {"device": "gpu"}, {})])


def test_batch_settings_are_checked_and_do_not_count_as_a_changed_study() -> None:
    from tuner.study.stages import stage_settings

    with pytest.raises(tuner.SpecError, match=r"stages\.lr\.batch_trials.*at least 1"):
        tuner.spec_from_dict({"name": "x", "stages": {"lr": {"batch_trials": 0}}})
    with pytest.raises(tuner.SpecError, match=r"stages\.lr\.batched.*true or false"):
        tuner.spec_from_dict({"name": "x", "stages": {"lr": {"batched": "yes"}}})
    one_by_one = tuner.spec_from_dict({"name": "x", "stages": {"lr": {"batched": False}}})
    batched = tuner.spec_from_dict({"name": "x", "stages": {"lr": {"batch_trials": 8}}})
    # How trials are scheduled does not change what each computes: a study may resume either way.
    assert stage_settings(one_by_one, "lr") == stage_settings(batched, "lr")
    assert (lr_stage(one_by_one).batch_trials, lr_stage(batched).batch_trials) == (1, 8)


def test_the_lr_stage_batches_lstms_only_where_it_is_faster() -> None:
    # Wide stacked LSTMs train slower than nn.LSTM one at a time on a CPU (BATCHED_LSTM_MAX_WIDTH).
    from tuner.study.stages import lr_stage
    from tuner.training.batched import BATCHED_LSTM_MAX_WIDTH

    def stage(width: int, family: str = "lstm") -> int:
        data = "digits_rows" if family == "lstm" else "digits"
        spec = tuner.spec_from_dict({"name": "w", "data": {"name": data}, "model": {"family": family, "width": width}})
        return lr_stage(spec).batch_trials

    assert stage(16) == 16 and stage(BATCHED_LSTM_MAX_WIDTH) == 16
    assert stage(BATCHED_LSTM_MAX_WIDTH + 1) == 1
    assert stage(128, "mlp") == 16  # the MLP gains at every width


def test_batched_copies_judge_divergence_against_the_untrained_training_loss_as_alone() -> None:
    # Two validation rows the untrained model predicts exactly: a bar set from their loss (0) would
    # call every copy diverged in its first epoch; the bar is the untrained *training* loss, alone and batched.
    from test_train import _validation_the_untrained_model_fits

    data = _validation_the_untrained_model_fits(seed=0)
    plans = [TrialPlan(8, 1, TrainConfig(lr=lr, epochs=3, batch_size=32)) for lr in (0.003, 0.01, 1e3)]
    epochs = _together(data, plans)
    for i, plan in enumerate(plans[:2]):
        curve = _curve(epochs, i)
        assert len(curve) == 3 and not any(r.diverged for r in curve)
        _assert_same_curve(_alone(data, plan), curve)
    assert _curve(epochs, 2)[-1].diverged  # the wild rate still blows up


def test_untrained_values_measured_once_per_seed_are_those_of_every_copy_to_the_bit() -> None:
    # Copies of one seed start equal, so one copy per seed is measured; in the chunks of all K copies
    # (EVAL_CHUNK // K rows), so that the sums add up in the order a measure of every copy would.
    from tuner.training.batched import BatchedTrainer, _evaluate
    from tuner.training.stacked import StackedMLP

    data = load_dataset(DataSpec(name="digits"), seed=0)  # 1437 training rows: several chunks at K = 40
    plans = [TrialPlan(8, 1, TrainConfig(lr=0.01 * (i + 1), epochs=1, batch_size=64, seed=i % 3)) for i in range(40)]
    trainer = BatchedTrainer("mlp", data, plans)
    next(trainer.epochs())
    every = StackedMLP.from_modules([seeded_model("mlp", data, 8, 1, plan.train.seed) for plan in plans])
    losses, errors = _evaluate(every, data)
    assert [r.val_loss for r in trainer.untrained] == losses
    assert [r.val_error for r in trainer.untrained] == errors
