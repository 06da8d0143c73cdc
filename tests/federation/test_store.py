"""The coordinator's store, specified once and run against both backends: an SQLite file and a
real PostgreSQL server (the ``postgres`` fixture). Same migrations, same answers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from foedus.core.errors import ConfigError
from foedus.federation import store as store_module
from foedus.federation.store import MIGRATIONS, Store
from tests.federation.postgres_fixtures import Postgres

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=BACKENDS)
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a fresh, empty database is: an SQLite path or a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "coordinator.db")
    url: str = request.getfixturevalue("postgres").new_database()
    return url


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def open_store(where: str, clock: Clock) -> Iterator[Callable[[], Store]]:
    opened: list[Store] = []

    def make() -> Store:
        opened.append(Store(where, clock=clock))
        return opened[-1]

    yield make
    for s in opened:
        s.close()


@pytest.fixture
def store(open_store: Callable[[], Store]) -> Store:
    return open_store()


def test_migrations_run_once_and_bring_an_old_database_up_to_date(
        where: str, open_store: Callable[[], Store], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS[:1])
    old = open_store()  # a database a first release made
    assert old.schema_version() == 1
    old.add_user("ann", "viewer", "t0")
    old.close()
    monkeypatch.undo()
    upgraded = open_store()
    assert upgraded.schema_version() == len(MIGRATIONS)
    assert upgraded.user_by_token("t0") == ("ann", "viewer")  # rows kept
    upgraded.add_job("j-1", "ann", "job_id: j-1\n", {"client-000": "a"}, "/c", 30.0)
    assert upgraded.job("j-1") is not None
    upgraded.close()
    again = open_store()  # reopening applies nothing twice
    assert again.schema_version() == len(MIGRATIONS)


def test_users_tokens_are_hashed_roles_checked_and_re_adding_replaces(store: Store) -> None:
    assert not store.has_admin()
    store.add_user("ann", "admin", "secret-token")
    assert store.user_by_token("secret-token") == ("ann", "admin")
    assert store.has_admin()
    store.add_user("ann", "viewer", "new-token")
    assert store.user_by_token("secret-token") is None
    assert store.user_by_token("new-token") == ("ann", "viewer")
    with pytest.raises(ValueError, match="role: got 'root'; allowed: viewer, submitter, admin"):
        store.add_user("bob", "root", "x")


def test_sites_are_online_while_they_heartbeat(store: Store, clock: Clock) -> None:
    store.heartbeat("site-b", "1", {"catalog": ["digits"]})
    store.heartbeat("site-a", "1", {})
    clock.now += 10
    store.heartbeat("site-a", "2", {"catalog": ["wine"]})
    sites = store.sites(online_within=5)
    assert [(s["name"], s["online"], s["version"]) for s in sites] == [
        ("site-a", True, "2"), ("site-b", False, "1")]
    assert sites[0]["offers"] == {"catalog": ["wine"]}


def test_a_job_is_queued_with_one_offer_per_actor_and_ends_once(
        store: Store, clock: Clock) -> None:
    store.add_job("j-1", "ann", "job_id: j-1\n", {"client-000": "a", "client-001": "b"},
                  "/ckpt", queue_timeout=30)
    job = store.job("j-1")
    assert job is not None and job.state == "queued" and job.sites == ["a", "b"]
    assert job.queue_deadline == clock.now + 30
    assert [a["state"] for a in store.assignments(job_id="j-1")] == ["offered", "offered"]
    assert store.set_assignment("j-1", "a", "client-000", "accepted", only_from=("offered",))
    # a site touches its own assignments only, and only from the states named
    assert not store.set_assignment("j-1", "a", "client-001", "accepted")
    assert not store.set_assignment("j-1", "a", "client-000", "refused", "no",
                                    only_from=("offered",))
    store.set_job("j-1", state="running", server_pid=42, event="server started")
    assert [j.id for j in store.jobs(states=("running",))] == ["j-1"]
    assert store.finish_job("j-1", "failed", "a reason")
    assert not store.finish_job("j-1", "cancelled", "too late")
    ended = store.job("j-1")
    assert ended is not None and (ended.state, ended.reason) == ("failed", "a reason")
    # a failed job's actors are told to stop; a finished job's end by themselves
    assert {a["actor"]: a["state"] for a in store.assignments(job_id="j-1")} == {
        "client-000": "stop", "client-001": "stop"}
    store.add_job("j-2", "ann", "job_id: j-2\n", {"client-000": "a"}, "/c")
    assert store.finish_job("j-2", "finished", None, {"final_accuracy": 0.9})
    done = store.job("j-2")
    assert done is not None and done.result == {"final_accuracy": 0.9}
    assert done.queue_deadline is None
    assert store.assignments(site="a", job_id=None)[-1]["state"] == "offered"


def test_rounds_are_kept_once_per_round_and_events_in_order(store: Store, clock: Clock) -> None:
    store.add_job("j-1", "ann", "job_id: j-1\n", {"client-000": "a"}, "/c")
    store.add_round("j-1", {"round": 2, "accepted": 1})
    store.add_round("j-1", {"round": 1, "accepted": 1})
    store.add_round("j-1", {"round": 1, "accepted": 2})  # a round re-read after a restart
    assert store.rounds("j-1") == [{"round": 1, "accepted": 2}, {"round": 2, "accepted": 1}]
    clock.now += 1
    store.add_event("j-1", "site a offline")
    assert [e["text"] for e in store.events("j-1")] == ["submitted by ann", "site a offline"]


def test_the_latest_round_of_every_job_is_read_at_once(store: Store) -> None:
    for job_id in ("j-1", "j-2", "j-3"):
        store.add_job(job_id, "ann", f"job_id: {job_id}\n", {"client-000": "a"}, "/c")
    for record in ({"round": 1, "accepted": 2}, {"round": 3, "accepted": 1},
                   {"round": 2, "accepted": 2}):
        store.add_round("j-1", record)
    store.add_round("j-2", {"round": 1, "accepted": 0})
    assert store.latest_rounds() == {"j-1": {"round": 3, "accepted": 1},
                                     "j-2": {"round": 1, "accepted": 0}}  # j-3: none yet

def test_a_postgresql_url_that_cannot_connect_is_one_line_naming_the_key(
        tmp_path: Path) -> None:
    from tests.conftest import free_port

    with pytest.raises(ConfigError, match=r"^database: cannot connect to PostgreSQL: "):
        Store(f"postgresql://nobody@127.0.0.1:{free_port()}/none")


@pytest.mark.integration
def test_a_broken_postgresql_connection_is_opened_again(postgres: Postgres) -> None:
    import psycopg

    store = Store(postgres.new_database() + "&application_name=the-broken-one")
    try:
        store.add_user("ann", "admin", "t")
        with psycopg.connect(postgres.url(), autocommit=True) as admin:  # as a restart would
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = 'the-broken-one'")
        with pytest.raises(psycopg.OperationalError):
            store.has_admin()  # the call that finds the connection gone fails...
        assert store.has_admin()  # ...and the next one reconnects
    finally:
        store.close()


def test_a_heartbeat_does_not_wait_for_the_disk_and_leaves_later_commits_durable(
        tmp_path: Path) -> None:
    store = Store(tmp_path / "coordinator.db")
    try:
        sqlite = store.db._db  # type: ignore[attr-defined]
        assert sqlite.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        store.heartbeat("site-a", "1", {})
        assert sqlite.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL again
        assert [s["name"] for s in store.sites(online_within=60)] == ["site-a"]
    finally:
        store.close()


def test_console_sessions_are_kept_by_hash_across_reopening_until_idle_or_closed(
        open_store: Callable[[], Store], clock: Clock) -> None:
    store = open_store()
    store.add_user("ann", "submitter", "tok-ann")
    assert store.open_session("sid-1", "not a token") is None
    assert store.open_session("sid-1", "tok-ann") == ("ann", "submitter")
    assert store.open_session("sid-2", "tok-ann") is not None
    store.close_session("sid-2")
    clock.now += 50
    again = open_store()  # a restarted coordinator
    assert again.session("sid-1", idle_s=60) == ("ann", "submitter", clock.now - 50)
    assert again.session("sid-2", idle_s=60) is None
    again.touch_session("sid-1")
    clock.now += 59
    assert again.session("sid-1", idle_s=60) is not None
    clock.now += 61
    assert again.close_idle_sessions(60) == 1
    assert again.session("sid-1", idle_s=3600) is None
