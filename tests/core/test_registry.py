"""A registry runs its loader once, before the first lookup, so it is complete when asked."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from foedus.core import registry as registry_module
from foedus.core.errors import ConfigError
from foedus.core.registry import Registry, ensure_loaded, set_finder, set_loader


@pytest.fixture(autouse=True)
def _no_loader() -> Iterator[None]:
    """Each test installs its own loader; the process's (foedus.plugins) has run already."""
    ensure_loaded()
    yield
    set_loader(None)


def test_the_loader_runs_once_before_the_first_lookup_of_any_kind() -> None:
    things: Registry[int] = Registry("thing")
    calls: list[int] = []

    def load() -> None:
        calls.append(1)
        things.register("late")(lambda: 7)

    set_loader(load)
    assert calls == []  # installing it loads nothing
    assert "late" in things and things.names() == ["late"] and things.create("late") == 7
    assert calls == [1]


def test_a_lookup_made_while_loading_does_not_load_again() -> None:
    things: Registry[int] = Registry("thing")
    calls: list[int] = []

    def load() -> None:
        calls.append(1)
        assert things.names() == []  # a plugin module asking while it is imported

    set_loader(load)
    things.names()
    assert calls == [1]


def test_a_failed_load_is_retried_and_fails_again_instead_of_answering_partially() -> None:
    things: Registry[int] = Registry("thing")

    def load() -> None:
        raise ConfigError("plugin 'x' cannot be imported")

    set_loader(load)
    for _ in range(2):
        with pytest.raises(ConfigError, match="plugin 'x'"):
            things.get("anything")
    assert registry_module._loader is load


@pytest.fixture
def finder_calls() -> Iterator[list[tuple[str, str | None]]]:
    """A finder that records its calls and registers ``late`` when asked for it by name;
    the process's finder is put back afterwards."""
    calls: list[tuple[str, str | None]] = []
    saved = registry_module._finder
    yield calls
    set_finder(saved)


def test_a_registered_name_is_answered_without_the_finder(
    finder_calls: list[tuple[str, str | None]],
) -> None:
    things: Registry[int] = Registry("thing")
    things.register("here")(lambda: 1)
    set_finder(lambda kind, name: finder_calls.append((kind, name)))
    assert "here" in things and things.create("here") == 1
    assert finder_calls == []


def test_a_missing_name_is_found_by_name_first_then_by_loading_everything(
    finder_calls: list[tuple[str, str | None]],
) -> None:
    things: Registry[int] = Registry("thing")

    def everywhere() -> int:
        return 2

    def late() -> int:
        return 7

    def find(kind: str, name: str | None) -> None:  # registering again is harmless
        finder_calls.append((kind, name))
        if name is None:
            things.register("everywhere")(everywhere)
        elif name == "late":
            things.register("late")(late)

    set_finder(find)
    assert things.create("late") == 7
    assert finder_calls == [("thing", "late")]  # found by name: nothing else imported
    assert "everywhere" in things  # not listed by name: everything is loaded, then it is found
    assert finder_calls[1:] == [("thing", "everywhere"), ("thing", None)]
    assert things.names() == ["everywhere", "late"]  # every name: everything, always
    assert finder_calls[-1] == ("thing", None)
    with pytest.raises(ConfigError, match="unknown thing 'nowhere'; allowed: everywhere, late"):
        things.get("nowhere")
