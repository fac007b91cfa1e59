"""fANOVA importances: the shares must match an ANOVA decomposition we can do by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tuner.analysis.fanova import _decompose_tree, _encode, _tree_shares, fanova_importances


def _jittered_grid(k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """k*k points in [-1, 1]^2, one uniform draw per grid cell: even cover, no ties."""
    i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    x1 = (i + rng.uniform(size=i.shape)) / k * 2 - 1
    x2 = (j + rng.uniform(size=j.shape)) / k * 2 - 1
    return x1.ravel(), x2.ravel()


def _shares(frame: pd.DataFrame) -> dict[tuple[str, str], float]:
    return {(r.param, r.param_b): r.importance for r in frame.itertuples()}


def test_recovers_the_analytic_anova_shares_of_a_known_function() -> None:
    # f = a*x1 + b*(x2^2 - 1/3) + c*x1*x2 with x1, x2 uniform on [-1, 1]. The three terms are
    # the ANOVA components: each has mean 0 over every variable it depends on (E[x] = 0 and
    # E[x^2] = 1/3), so they are orthogonal and their variances add up to Var(f):
    #   V1 = a^2 Var(x) = a^2/3,  V2 = b^2 Var(x^2) = b^2 (1/5 - 1/9) = 4 b^2/45,
    #   V12 = c^2 Var(x1) Var(x2) = c^2/9.
    rng = np.random.default_rng(0)
    x1, x2 = _jittered_grid(30, rng)
    x3 = rng.uniform(-1, 1, x1.size)  # the objective ignores it
    a, b, c = 1.0, 2.0, 1.5
    y = a * x1 + b * (x2**2 - 1 / 3) + c * x1 * x2
    v1, v2, v12 = a**2 / 3, 4 * b**2 / 45, c**2 / 9
    total = v1 + v2 + v12

    shares = _shares(fanova_importances(pd.DataFrame({"x1": x1, "x2": x2, "x3": x3}), y))

    assert shares[("x1", "")] == pytest.approx(v1 / total, abs=0.03)  # 0.355
    assert shares[("x2", "")] == pytest.approx(v2 / total, abs=0.03)  # 0.379
    assert shares[("x1", "x2")] == pytest.approx(v12 / total, abs=0.03)  # 0.266
    for term in [("x3", ""), ("x1", "x3"), ("x2", "x3")]:
        assert shares[term] < 0.01, term


def test_an_additive_function_has_no_interaction() -> None:
    rng = np.random.default_rng(1)
    x1, x2 = _jittered_grid(25, rng)
    y = np.sin(3 * x1) + x2**3

    shares = _shares(fanova_importances(pd.DataFrame({"x1": x1, "x2": x2}), y, n_trees=32))

    assert shares[("x1", "x2")] < 0.02
    assert shares[("x1", "")] + shares[("x2", "")] > 0.97


def test_a_pure_product_is_all_interaction() -> None:
    rng = np.random.default_rng(2)
    x1, x2 = _jittered_grid(25, rng)
    y = x1 * x2  # both main effects are exactly 0 on a symmetric domain

    shares = _shares(fanova_importances(pd.DataFrame({"x1": x1, "x2": x2}), y, n_trees=32))

    assert shares[("x1", "x2")] > 0.9
    assert shares[("x1", "")] < 0.05
    assert shares[("x2", "")] < 0.05


def test_a_categorical_parameter_gets_the_share_of_its_level_shifts() -> None:
    # Levels shift y by 0, 1, 2: over levels taken uniformly Var = 2/3; x adds Var(x) = 1/3.
    # Marginalising over the whole one-hot cube, as Optuna does, lands lower (about 0.65).
    rng = np.random.default_rng(3)
    n = 300
    optimizer = rng.choice(["sgd", "adam", "lion"], n)
    x = rng.uniform(-1, 1, n)
    y = pd.Series(optimizer).map({"sgd": 0.0, "adam": 1.0, "lion": 2.0}).to_numpy() + x

    shares = _shares(fanova_importances(pd.DataFrame({"optimizer": optimizer, "x": x}), y))

    assert shares[("optimizer", "")] == pytest.approx(2 / 3, abs=0.01)
    assert shares[("x", "")] == pytest.approx(1 / 3, abs=0.01)
    assert shares[("optimizer", "x")] < 0.01


def test_a_category_dtype_column_is_categorical_too() -> None:
    rng = np.random.default_rng(4)
    level = pd.Categorical(rng.choice(["low", "high"], 200), categories=["low", "mid", "high"])
    y = np.where(level == "high", 1.0, 0.0) + 0.01 * rng.normal(size=200)

    shares = _shares(fanova_importances(pd.DataFrame({"level": level}), y, n_trees=16))

    assert shares[("level", "")] == pytest.approx(1.0, abs=0.01)  # the unseen "mid" is no level


def test_the_frame_shape_and_the_shares_never_exceed_the_whole() -> None:
    rng = np.random.default_rng(5)
    X = pd.DataFrame(rng.uniform(size=(80, 4)), columns=["lr", "wd", "dropout", "width"])
    X["act"] = rng.choice(["relu", "gelu"], len(X))
    y = X.lr * X.wd + np.sin(5 * X.dropout) * (X.act == "relu") + 0.1 * rng.normal(size=len(X))

    frame = fanova_importances(X, y.to_numpy(), n_trees=16)

    assert list(frame.columns) == ["param", "param_b", "importance", "std"]
    names = list(X.columns)
    assert list(frame.param[:5]) == names and list(frame.param_b[:5]) == [""] * 5
    assert len(frame) == 5 + 10
    assert {(r.param, r.param_b) for r in frame[5:].itertuples()} == {
        (a, b) for i, a in enumerate(names) for b in names[i + 1 :]
    }
    assert (frame["std"] >= 0).all() and (frame.importance >= 0).all()
    assert frame.importance.sum() <= 1 + 1e-9
    _, per_tree = _tree_shares(
        X, y.to_numpy(), n_trees=16, max_depth=64, seed=0, interactions=True
    )
    assert per_tree.shape == (16, 15)
    assert (per_tree.sum(axis=1) <= 1 + 1e-9).all()

    mains_only = fanova_importances(X, y.to_numpy(), n_trees=16, interactions=False)
    assert list(mains_only.param) == names and (mains_only.param_b == "").all()


def test_a_constant_objective_raises() -> None:
    X = pd.DataFrame({"lr": np.linspace(-4, -1, 20), "opt": ["sgd", "adam"] * 10})
    with pytest.raises(ValueError, match="zero variance"):
        fanova_importances(X, np.full(20, 0.7), n_trees=8)


def test_numeric_shares_equal_optunas_fanova_tree() -> None:
    # Optuna's private tree is the reference implementation we re-derive with matrix products.
    tree_module = pytest.importorskip("optuna.importance._fanova._tree")
    from sklearn.ensemble import RandomForestRegressor

    rng = np.random.default_rng(6)
    X = pd.DataFrame(rng.uniform(-1, 1, (60, 3)), columns=["a", "b", "c"])
    y = X.a + X.b**2 + X.a * X.c
    encoded, params = _encode(X)
    forest = RandomForestRegressor(n_estimators=3, random_state=0).fit(encoded, y)
    bounds = np.array([p.bounds for p in params])
    for estimator in forest.estimators_:
        reference = tree_module._FanovaTree(estimator.tree_, bounds)
        ours = _decompose_tree(estimator.tree_, params, 3, [(0, 2)])
        variance = reference.variance
        main = [reference.get_marginal_variance(np.array([i])) / variance for i in range(3)]
        pair = reference.get_marginal_variance(np.array([0, 2])) / variance
        np.testing.assert_allclose(ours, [*main, pair - main[0] - main[2]], atol=1e-12)


def test_float_residue_of_a_zero_share_is_written_as_zero() -> None:
    # A new user's importance.csv held 8.385677428418517e-30 for an interaction that explained nothing.
    from tuner.analysis.fanova import TINY_SHARE, _tidy

    tidied = _tidy(np.array([8.385677428418517e-30, -3e-17, TINY_SHARE * 10, 0.02]))
    assert list(tidied) == [0.0, 0.0, TINY_SHARE * 10, 0.02]
