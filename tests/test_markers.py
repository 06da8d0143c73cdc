"""A test that starts a real component is marked ``integration``; a unit test needs no mark."""

from __future__ import annotations

import pytest

from tests.markers import STARTERS, missing_marker


def test_a_broker_fixture_without_the_marker_is_reported_with_its_name() -> None:
    reason = missing_marker(["tmp_path", "mosquitto", "tansu"], marked=False)
    assert reason is not None
    assert "mosquitto, tansu" in reason and "@pytest.mark.integration" in reason


def test_a_marked_test_may_start_anything() -> None:
    assert missing_marker(sorted(STARTERS), marked=True) is None


def test_a_unit_test_without_starters_needs_no_marker() -> None:
    assert missing_marker(["tmp_path", "port", "certs"], marked=False) is None


def test_every_starter_is_a_fixture_some_test_module_defines() -> None:
    """A renamed fixture must not drop out of the check unnoticed."""
    from pathlib import Path

    sources = "\n".join(p.read_text() for p in Path(__file__).parent.rglob("*.py"))
    for name in STARTERS:
        assert f"def {name}(" in sources, name


def test_the_check_runs_on_this_very_session(request: pytest.FixtureRequest) -> None:
    """The hook is installed: conftest's setup hook is what enforces the rule."""
    hooks = request.config.pluginmanager.hook.pytest_runtest_setup.get_hookimpls()
    assert any(getattr(h.plugin, "__name__", "").endswith("tests.conftest") for h in hooks)
