"""The federation tests' fixtures: a real PostgreSQL server (``postgres``) for the store's
specification and the coordinator's real-process tests."""

from __future__ import annotations

from tests.federation.postgres_fixtures import postgres

__all__ = ["postgres"]  # a fixture, used by name
