"""The numpy stratified split draws exactly what scikit-learn's train_test_split draws."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from foedus.data.stratified import stratified_split


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("fraction", [0.2, 0.33, 0.5])
@pytest.mark.parametrize("counts", [(178, 182, 177), (50, 50, 50), (3, 9, 2, 40), (2, 2)])
def test_the_split_is_scikit_learns_index_for_index(
    seed: int, fraction: float, counts: tuple[int, ...],
) -> None:
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(counts)), counts))
    rows = np.arange(len(labels))
    try:
        expected = train_test_split(rows, test_size=fraction, random_state=seed,
                                    stratify=labels)
    except ValueError:
        with pytest.raises(ValueError):
            stratified_split(labels, fraction, seed)
        return
    train, test = stratified_split(labels, fraction, seed)
    np.testing.assert_array_equal(train, expected[0])
    np.testing.assert_array_equal(test, expected[1])


def test_a_class_with_one_row_is_refused() -> None:
    with pytest.raises(ValueError, match="least populated class has only 1 row"):
        stratified_split(np.array([0, 0, 1, 1, 2]), 0.4, 0)


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("fraction", [0.2, 0.25, 0.33, 0.9])
@pytest.mark.parametrize("n", [2, 7, 442, 1797])
def test_the_plain_split_is_scikit_learns_index_for_index(
    seed: int, fraction: float, n: int,
) -> None:
    from foedus.data.stratified import shuffled_split

    rows = np.arange(n)
    try:
        expected = train_test_split(rows, test_size=fraction, random_state=seed)
    except ValueError:
        with pytest.raises(ValueError):
            shuffled_split(n, fraction, seed)
        return
    train, test = shuffled_split(n, fraction, seed)
    np.testing.assert_array_equal(train, expected[0])
    np.testing.assert_array_equal(test, expected[1])


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5])
def test_a_plain_split_with_an_empty_side_is_refused(fraction: float) -> None:
    from foedus.data.stratified import shuffled_split

    with pytest.raises(ValueError):
        shuffled_split(10, fraction, 0)
