"""The bundled digits, read with numpy, are scikit-learn's load_digits."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from foedus.data.datasets import _bundled_digits


def test_the_file_read_with_numpy_is_load_digits() -> None:
    x, y = _bundled_digits()
    expected_x, expected_y = load_digits(return_X_y=True)
    np.testing.assert_array_equal(x, expected_x)
    np.testing.assert_array_equal(y, expected_y)
    assert (x.dtype, y.dtype) == (expected_x.dtype, expected_y.dtype)
