"""Stage options are checked when a stage is built: a true/false option given as a string
(which bool() would read as true), or a mistyped size or seed, is one ConfigError."""

from __future__ import annotations

from typing import Any

import pytest

import foedus.compress  # noqa: F401  (registers the stages)
from foedus.core.errors import ConfigError
from foedus.core.filter import stages


@pytest.mark.parametrize(("name", "params", "message"), [
    ("qsgd", {"delta": "false"}, r"^qsgd delta must be true or false, got 'false'$"),
    ("qsgd", {"elias": "yes"}, r"^qsgd elias must be true or false, got 'yes'$"),
    ("qsgd", {"seed": "1"}, r"^qsgd seed must be an integer >= 0, got '1'$"),
    ("qsgd", {"max_decoded_size": 0}, r"^qsgd max_decoded_size must be a positive integer"),
    ("topk", {"error_feedback": "no"}, r"^topk error_feedback must be true or false, got 'no'$"),
    ("topk", {"delta": 0}, r"^topk delta must be true or false, got 0$"),
    ("zstd", {"max_decoded_size": "10"}, r"^zstd max_decoded_size must be a positive integer "
                                         r"\(bytes\), got '10'$"),
    ("lzma", {"max_decoded_size": 1.5}, r"^lzma max_decoded_size must be a positive integer"),
])
def test_a_mistyped_option_is_refused_naming_it(name: str, params: dict[str, Any],
                                                 message: str) -> None:
    """Before, qsgd delta: "false" ran with delta on (bool("false") is True)."""
    with pytest.raises(ConfigError, match=message):
        stages.create(name, **params)


def test_the_documented_options_are_accepted() -> None:
    qsgd = stages.create("qsgd", bits=2, elias=True, delta=False, seed=3,
                         max_decoded_size=1 << 20)
    assert (qsgd.elias, qsgd.delta, qsgd.seed) == (True, False, 3)  # type: ignore[attr-defined]
    topk = stages.create("topk", ratio=0.1, error_feedback=False, delta=True)
    assert topk.error_feedback is False  # type: ignore[attr-defined]
