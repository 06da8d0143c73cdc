"""Console sessions: a token is exchanged for a session; the session follows its user."""

from __future__ import annotations

from foedus.federation.console.sessions import Sessions

USERS = {"tok-ann": ("ann", "submitter")}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_only_a_users_token_opens_a_session_and_logout_closes_it() -> None:
    sessions = Sessions(USERS.get)
    assert sessions.login("nobody's") is None
    made = sessions.login(" tok-ann\n")  # pasted with whitespace
    assert made is not None
    session_id, session = made
    assert (session.user, session.role) == ("ann", "submitter")
    assert sessions.get(session_id) is session
    assert sessions.get("another id") is None and sessions.get(None) is None
    sessions.logout(session_id)
    assert sessions.get(session_id) is None


def test_a_session_ends_when_idle_and_when_its_token_stops_being_valid() -> None:
    users = dict(USERS)
    clock = Clock()
    sessions = Sessions(users.get, idle_s=60, clock=clock)
    first, _ = sessions.login("tok-ann") or ("", None)
    clock.now += 59
    assert sessions.get(first) is not None  # use keeps it open ...
    clock.now += 59
    assert sessions.get(first) is not None
    clock.now += 61
    assert sessions.get(first) is None  # ... idleness ends it
    second, _ = sessions.login("tok-ann") or ("", None)
    users["tok-ann"] = ("ann", "admin")
    found = sessions.get(second)
    assert found is not None and found.role == "admin"  # a new role is seen at once
    del users["tok-ann"]  # re-keyed: the old token is no one's
    assert sessions.get(second) is None


def test_the_csrf_token_is_the_sessions_own() -> None:
    sessions = Sessions(USERS.get)
    _, one = sessions.login("tok-ann") or ("", None)
    _, two = sessions.login("tok-ann") or ("", None)
    assert one is not None and two is not None
    assert one.csrf != two.csrf
    assert one.csrf_ok(one.csrf)
    assert not one.csrf_ok(two.csrf) and not one.csrf_ok(None) and not one.csrf_ok("")
