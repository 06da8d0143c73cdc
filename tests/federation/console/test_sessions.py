"""Console sessions: a token is exchanged for a session kept in the coordinator's store (only
its hash); the session follows its user, ends when idle, and survives the store's reopening."""

from __future__ import annotations

from pathlib import Path

from foedus.federation.console.sessions import TOUCH_S, Sessions
from foedus.federation.store import Store, hash_token


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def store_with_ann(path: Path, clock: Clock | None = None) -> Store:
    store = Store(path / "coordinator.db", clock=clock or Clock())
    store.add_user("ann", "submitter", "tok-ann")
    return store


def test_only_a_users_token_opens_a_session_and_logout_closes_it(tmp_path: Path) -> None:
    sessions = Sessions(store_with_ann(tmp_path))
    assert sessions.login("nobody's") is None
    made = sessions.login(" tok-ann\n")  # pasted with whitespace
    assert made is not None
    session_id, session = made
    assert (session.user, session.role) == ("ann", "submitter")
    assert sessions.get(session_id) == session
    assert sessions.get("another id") is None and sessions.get(None) is None
    sessions.logout(session_id)
    assert sessions.get(session_id) is None


def test_the_store_keeps_only_the_session_ids_hash_and_never_the_users_token(
        tmp_path: Path) -> None:
    store = store_with_ann(tmp_path)
    session_id, _ = Sessions(store).login("tok-ann") or ("", None)
    with store._tx() as cur:
        cur.execute("SELECT * FROM console_sessions")
        (row,) = cur.fetchall()
    assert hash_token(session_id) in row and session_id not in row
    assert "tok-ann" not in row


def test_a_session_ends_when_idle_and_when_its_user_is_re_keyed(tmp_path: Path) -> None:
    clock = Clock()
    store = store_with_ann(tmp_path, clock)
    sessions = Sessions(store, idle_s=3 * TOUCH_S)
    first, _ = sessions.login("tok-ann") or ("", None)
    for _ in range(3):
        clock.now += 2 * TOUCH_S
        assert sessions.get(first) is not None  # use keeps it open ...
    clock.now += 3 * TOUCH_S + 1
    assert sessions.get(first) is None  # ... idleness ends it
    second, _ = sessions.login("tok-ann") or ("", None)
    store.add_user("ann", "admin", "tok-ann")
    found = sessions.get(second)
    assert found is not None and found.role == "admin"  # a new role is seen at once
    store.add_user("ann", "admin", "tok-ann-2")  # re-keyed: her sessions end
    assert sessions.get(second) is None


def test_sessions_survive_reopening_the_store_and_a_logout_stays_a_logout(
        tmp_path: Path) -> None:
    clock = Clock()
    store = store_with_ann(tmp_path, clock)
    before = Sessions(store)
    kept, session = before.login("tok-ann") or ("", None)
    ended, _ = before.login("tok-ann") or ("", None)
    before.logout(ended)
    store.close()
    after = Sessions(Store(tmp_path / "coordinator.db", clock=clock))
    assert after.get(kept) == session  # same user, role and CSRF token
    assert after.get(ended) is None


def test_the_csrf_token_is_the_sessions_own(tmp_path: Path) -> None:
    sessions = Sessions(store_with_ann(tmp_path))
    _, one = sessions.login("tok-ann") or ("", None)
    _, two = sessions.login("tok-ann") or ("", None)
    assert one is not None and two is not None
    assert one.csrf != two.csrf
    assert one.csrf_ok(one.csrf)
    assert not one.csrf_ok(two.csrf) and not one.csrf_ok(None) and not one.csrf_ok("")
