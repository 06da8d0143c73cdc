"""Flat parameter vectors: what aggregators and privacy filters compute on."""

from __future__ import annotations

import numpy as np
import pytest

from foedus.core.params import ParamSpec, flatten, unflatten


def model() -> dict[str, np.ndarray]:
    return {"w": np.arange(6, dtype=np.float32).reshape(2, 3),
            "steps": np.array(7, dtype=np.int64),
            "b": np.array([-1.5, 2.5], dtype=np.float32)}


def test_flatten_concatenates_every_parameter_in_order_cast_to_the_dtype() -> None:
    vector = flatten(model())
    assert vector.dtype == np.float64
    np.testing.assert_array_equal(vector, [0, 1, 2, 3, 4, 5, 7, -1.5, 2.5])


def test_flatten_writes_into_a_given_vector_and_returns_it() -> None:
    out = np.full(9, np.nan)
    assert flatten(model(), out=out) is out
    np.testing.assert_array_equal(out, flatten(model()))


@pytest.mark.parametrize("out", [np.zeros(8), np.zeros(9, np.float32)])
def test_flatten_refuses_a_vector_of_the_wrong_size_or_dtype(out: np.ndarray) -> None:
    with pytest.raises(ValueError, match="flatten: out has shape"):
        flatten(model(), out=out)


def test_unflatten_gives_back_each_parameter_with_its_shape_and_dtype() -> None:
    original = model()
    back = unflatten(flatten(original), ParamSpec.of(original))
    for name, array in original.items():
        assert back[name].dtype == array.dtype and back[name].shape == array.shape
        np.testing.assert_array_equal(back[name], array)


def test_an_empty_model_flattens_to_an_empty_vector() -> None:
    assert flatten({}).shape == (0,)
