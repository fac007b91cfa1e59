"""fANOVA importances with pairwise interactions, as fractions of total variance.

Why this module exists: ``optuna.importance.FanovaImportanceEvaluator`` reports main effects
only, and the private ``optuna.importance._fanova._tree._FanovaTree`` that could give pairs
visits every cell of a pair's split grid with a Python tree walk (about 60 s for 64 trees,
200 trials, 5 parameters, 10 pairs). It also marginalises a categorical over the whole one-hot
cube [0, 1]^k, where most points are not a real choice.

So the forest is fitted the way Optuna fits it (``RandomForestRegressor`` with Optuna's
settings, numeric columns as they are, categoricals one-hot encoded), and each tree is then
decomposed here by a few matrix products over its leaves (Hutter et al., ICML 2014,
http://proceedings.mlr.press/v32/hutter14.html). The measure is the uniform product measure
over the search space: uniform on [min, max] of the data for a numeric column, and uniform over
the levels seen in the data for a categorical one. For numeric columns this is exactly what
``_FanovaTree`` computes (tests/test_fanova.py checks that against it); nothing in this package
imports Optuna's private fANOVA code.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestRegressor

__all__ = ["fanova_importances"]

COLUMNS = ["param", "param_b", "importance", "std"]


@dataclass(frozen=True)
class _Param:
    """How one parameter is encoded for the forest and how it is marginalised."""

    name: str
    columns: np.ndarray  # indices of its encoded columns
    bounds: tuple[float, float] | None  # numeric: (min, max); categorical: None
    n_levels: int  # categorical: number of levels seen; numeric: 0


TINY_SHARE = 1e-12  # a share of the variance this small is float residue: written as 0


def fanova_importances(
    X: pd.DataFrame,
    y: np.ndarray,
    *,
    n_trees: int = 64,
    max_depth: int = 64,
    seed: int | None = 0,
    interactions: bool = True,
) -> pd.DataFrame:
    """fANOVA variance shares of each parameter and, optionally, of each pair of parameters.

    Args:
        X: One column per parameter. Numeric columns are taken as they are, on the scale to
            marginalise over (transform first, e.g. ``log10(lr)``); object, category, string
            and bool columns are categorical. No missing values.
        y: Objective values, one per row of ``X``.
        n_trees, max_depth, seed: Random forest settings, as in Optuna's fANOVA evaluator.
        interactions: Also report the pure interaction share of every unordered pair.

    Returns:
        Columns ``param, param_b, importance, std``. One row per parameter (``param_b == ""``,
        in column order) holding its main-effect share ``V_i / V``; then, if ``interactions``,
        one row per pair (in ``itertools.combinations`` order) holding the pure interaction
        share ``(Var(a_ij) - V_i - V_j) / V``. Shares are computed per tree and ``importance``
        / ``std`` are their mean / population std over the trees with non-zero variance.
        Within each tree all rows sum to at most 1; the remainder is higher-order interaction.

    Raises:
        ValueError: on bad input, or when every tree has zero variance (e.g. constant ``y``).
    """
    terms, shares = _tree_shares(
        X, y, n_trees=n_trees, max_depth=max_depth, seed=seed, interactions=interactions
    )
    return pd.DataFrame(
        {
            "param": [a for a, _ in terms],
            "param_b": [b for _, b in terms],
            # Float residue of exact zeros (a pure interaction of 8e-30) written as 0.
            "importance": _tidy(shares.mean(axis=0)),
            "std": _tidy(shares.std(axis=0)),
        },
        columns=COLUMNS,
    )


def _tidy(values: np.ndarray) -> np.ndarray:
    return np.where(np.abs(values) < TINY_SHARE, 0.0, values)


def _tree_shares(
    X: pd.DataFrame,
    y: np.ndarray,
    *,
    n_trees: int,
    max_depth: int,
    seed: int | None,
    interactions: bool,
) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Per-tree shares: the terms ``(param, param_b)`` and an array (n_valid_trees, n_terms)."""
    encoded, params = _encode(X)
    y = np.asarray(y, dtype=np.float64)
    if y.shape != (len(X),):
        raise ValueError(f"y must be 1-D with one value per row of X ({len(X)}), got {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError("y contains NaN or infinite values")

    # Optuna's settings (FanovaImportanceEvaluator), so results are comparable with its numbers.
    forest = RandomForestRegressor(
        n_estimators=n_trees,
        max_depth=max_depth,
        min_samples_split=2,
        min_samples_leaf=1,
        random_state=seed,
    ).fit(encoded, y)

    pairs = list(itertools.combinations(range(len(params)), 2)) if interactions else []
    terms = [(p.name, "") for p in params] + [(params[i].name, params[j].name) for i, j in pairs]
    rows = []
    for estimator in forest.estimators_:
        row = _decompose_tree(estimator.tree_, params, encoded.shape[1], pairs)
        if row is not None:
            rows.append(row)
    if not rows:
        raise ValueError(
            "fANOVA: every tree of the forest has zero variance, so no importance can be "
            "assessed (is y constant?)"
        )
    return terms, np.array(rows)


def _encode(X: pd.DataFrame) -> tuple[np.ndarray, list[_Param]]:
    if not isinstance(X, pd.DataFrame):
        raise ValueError("X must be a pandas DataFrame with one column per parameter")
    if X.shape[1] == 0 or len(X) < 2:
        raise ValueError(f"X needs at least one column and two rows, got shape {X.shape}")
    if X.isna().any().any():
        raise ValueError("X contains missing values; fANOVA needs every parameter set")
    blocks: list[np.ndarray] = []
    params: list[_Param] = []
    n_columns = 0
    for name in X.columns:
        column = X[name]
        if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
            values = column.to_numpy(dtype=np.float64)
            if not np.all(np.isfinite(values)):
                raise ValueError(f"column {name!r} contains infinite values")
            blocks.append(values[:, None])
            bounds = (float(values.min()), float(values.max()))
            params.append(_Param(str(name), np.array([n_columns]), bounds, 0))
            n_columns += 1
        else:
            codes, _ = pd.factorize(column, sort=False)
            n_levels = int(codes.max()) + 1
            blocks.append(np.eye(n_levels)[codes])
            params.append(
                _Param(str(name), np.arange(n_columns, n_columns + n_levels), None, n_levels)
            )
            n_columns += n_levels
    return np.hstack(blocks), params


def _decompose_tree(
    tree: object, params: list[_Param], n_columns: int, pairs: list[tuple[int, int]]
) -> np.ndarray | None:
    """Main-effect and pure pairwise shares of one sklearn tree; None if its variance is 0.

    The tree is a piecewise-constant function: leaf ``l`` is a box holding value ``v_l``. Each
    parameter ``p`` is cut into cells with probabilities ``w_p`` (for a numeric one, the
    intervals between the tree's thresholds on it; for a categorical one, its levels) such that
    each cell lies wholly inside or outside each leaf's box: ``M_p[l, c]`` says which.
    ``Q_p = M_p @ w_p`` is then leaf ``l``'s probability along ``p``, and the mean of ``f``
    given ``x_S`` in a cell ``c`` is
    ``sum_l v_l * prod_{p in S} M_p[l, c_p] * prod_{q not in S} Q_q[l]``.
    """
    lower, upper = _leaf_boxes(tree, n_columns)
    is_leaf = tree.children_left == -1
    values = tree.value[is_leaf].reshape(-1)
    lower, upper = lower[is_leaf], upper[is_leaf]
    thresholds = tree.threshold
    features = tree.feature

    memberships: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    for param in params:
        if param.bounds is None:
            # Each level is its one-hot vertex; only the k real vertices carry probability,
            # not the whole cube [0, 1]^k as in Optuna, whose corners the tree never saw.
            vertices = np.eye(param.n_levels)
            lo = lower[:, param.columns][:, None, :]
            hi = upper[:, param.columns][:, None, :]
            member = np.all((lo < vertices) & (vertices <= hi), axis=2)
            weight = np.full(param.n_levels, 1.0 / param.n_levels)
        else:
            low, high = param.bounds
            column = param.columns[0]
            cuts = np.unique(np.clip(thresholds[features == column], low, high))
            edges = np.unique(np.concatenate(([low], cuts, [high])))
            if len(edges) == 1:  # constant column: one cell holding everything
                mids, weight = edges, np.ones(1)
            else:
                mids = 0.5 * (edges[1:] + edges[:-1])
                weight = np.diff(edges) / (high - low)
            # Leaf intervals are (lower, upper] and cell midpoints never sit on a threshold.
            member = (lower[:, column][:, None] < mids) & (mids <= upper[:, column][:, None])
        memberships.append(member.astype(np.float64))
        weights.append(weight)

    along = np.column_stack([m @ w for m, w in zip(memberships, weights)])  # Q, (leaves, params)
    probability = along.prod(axis=1)
    mean = float(probability @ values)
    total = float(probability @ (values - mean) ** 2)
    if total <= 0.0:
        return None

    def others(excluded: tuple[int, ...]) -> np.ndarray:
        keep = np.ones(len(params), dtype=bool)
        keep[list(excluded)] = False
        return along[:, keep].prod(axis=1)

    main = np.empty(len(params))
    for p in range(len(params)):
        marginal = memberships[p].T @ (values * others((p,)))
        main[p] = weights[p] @ (marginal - mean) ** 2

    pure = np.empty(len(pairs))
    for k, (p, q) in enumerate(pairs):
        marginal = memberships[p].T @ ((values * others((p, q)))[:, None] * memberships[q])
        joint = weights[p] @ (marginal - mean) ** 2 @ weights[q]
        # The decomposition is exact for a tree, so a negative value is only rounding error;
        # clipping it keeps every share >= 0 and still lets a tree's shares sum to <= 1.
        pure[k] = max(joint - main[p] - main[q], 0.0)

    return np.concatenate((main, pure)) / total


def _leaf_boxes(tree: object, n_columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Per node, the box (lower, upper] of encoded feature values that reach it."""
    n_nodes = tree.node_count
    lower = np.full((n_nodes, n_columns), -np.inf)
    upper = np.full((n_nodes, n_columns), np.inf)
    left, right = tree.children_left, tree.children_right
    features, thresholds = tree.feature, tree.threshold
    stack = [0]
    while stack:
        node = stack.pop()
        if left[node] == -1:
            continue
        feature, threshold = features[node], thresholds[node]
        for child in (left[node], right[node]):
            lower[child] = lower[node]
            upper[child] = upper[node]
        upper[left[node], feature] = min(upper[node, feature], threshold)
        lower[right[node], feature] = max(lower[node, feature], threshold)
        stack.extend((left[node], right[node]))
    return lower, upper
