"""Train/test splits in numpy, drawing exactly what scikit-learn's
``train_test_split(..., stratify=y, random_state=seed)`` draws (and, without ``stratify``,
:func:`shuffled_split`).

Why: the bundled datasets are split this way, and importing ``sklearn.model_selection`` (which
imports scikit-learn and SciPy) costs about as much as importing torch, which doubled the
start-up of a torch job that needs nothing else from scikit-learn. The split must stay the one
scikit-learn makes, so that every job's data, and every accuracy measured before, are
unchanged; ``tests/data/test_stratified.py`` checks index for index against scikit-learn.

The procedure, stated so it can be checked: with ``n`` rows, ``n_test = ceil(fraction * n)``
and ``n_train = n - n_test``. Each class gets its share of ``n_train`` rounded down; the rows
still missing go one each to the classes with the largest fractional parts, a random choice
among equal parts. The test rows are shared out the same way among what each class has left.
Then, class by class in sorted label order, a random permutation of the class's rows (in
their original order) gives its training rows first and its test rows next; finally each side
is shuffled. Every random draw comes from one ``numpy.random.RandomState(seed)``, in this
order.
"""

from __future__ import annotations

import math

import numpy as np


def distinct(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values, as ``np.unique(values)`` gives them, without importing
    ``numpy.ma``: ``np.unique`` asks it whether the array is masked unless it also returns
    indices or counts, and that import was about 10 ms of a torch job's start-up."""
    found: np.ndarray = np.unique(values, return_counts=True)[0]
    return found


def shuffled_split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(train, test)`` of a plain (unstratified) split of ``n`` rows: what
    ``train_test_split(range(n), test_size=test_fraction, random_state=seed)`` draws, one
    permutation from ``RandomState(seed)`` whose first ``ceil(test_fraction * n)`` rows are the
    test rows. Raises ``ValueError`` when either side would be empty, as scikit-learn does."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction} should be between 0 and 1")
    n_test = math.ceil(test_fraction * n)
    if n - n_test <= 0:
        raise ValueError(f"with {n} rows and test_fraction={test_fraction} the training "
                         "side would be empty")
    order = np.random.RandomState(seed).permutation(n)
    return order[n_test:], order[:n_test]


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """Row indices ``(train, test)`` of a stratified split of the labels ``y``.

    Every class needs at least two rows and each side at least one row per class (raises
    ``ValueError`` otherwise, as scikit-learn does).
    """
    labels = np.asarray(y)
    n = len(labels)
    n_test = math.ceil(test_fraction * n)
    n_train = n - n_test
    _, codes = np.unique(labels, return_inverse=True)
    counts = np.bincount(codes)
    if counts.min() < 2:
        raise ValueError("the least populated class has only 1 row; each class needs 2")
    if n_train < len(counts) or n_test < len(counts):
        raise ValueError(f"{n_train} training and {n_test} test rows cannot hold one row of "
                         f"each of {len(counts)} classes")
    members = np.split(np.argsort(codes, kind="mergesort"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    train_per_class = _apportion(counts, n_train, rng)
    test_per_class = _apportion(counts - train_per_class, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for rows, k_train, k_test in zip(members, train_per_class, test_per_class, strict=True):
        shuffled = rows[rng.permutation(len(rows))]
        train.extend(shuffled[:k_train])
        test.extend(shuffled[k_train : k_train + k_test])
    return rng.permutation(train), rng.permutation(test)


def _apportion(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """``draws`` shared out in proportion to ``counts``: shares rounded down, then one more
    to each class with the largest fractional part (random among equal parts) until all
    ``draws`` are given."""
    exact = counts / counts.sum() * draws
    shares = np.floor(exact)
    missing = int(draws - shares.sum())
    fractions = exact - shares
    for value in distinct(fractions)[::-1]:
        if missing <= 0:
            break
        (tied,) = np.where(fractions == value)
        given = min(len(tied), missing)
        shares[rng.choice(tied, size=given, replace=False)] += 1
        missing -= given
    result: np.ndarray = shares.astype(int)
    return result
