"""Console sessions: a user's bearer token exchanged for a session cookie.

The browser never keeps the token: the login form sends it once, and the coordinator answers
with a random session id in a cookie the page's scripts cannot read (``HttpOnly``), sent over
HTTPS only (``Secure``) and never with a request another site starts (``SameSite=Strict``).
Every session also has a CSRF token, which the pages send back with each ``POST`` (a form
field or the ``X-CSRF-Token`` header): SameSite already stops cross-site requests in current
browsers, the token stops them in the others. It is derived from the session id (an HMAC),
so it needs no storage and is the same after a restart.

Sessions live in the coordinator's store (:meth:`~foedus.federation.store.Store.
open_session`), so a restarted coordinator keeps everyone logged in, and a logged-out session
stays ended. The store keeps only the session id's SHA-256 (like the users' tokens) and never
the user's token: a stolen database opens no session. Each request re-reads the session's
user, so a user given another role is seen at once and a re-keyed one is logged out; a session
unused for ``idle_s`` ends. Its last use is written at most once a minute
(:data:`TOUCH_S`), not on each of the pages' polls.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from foedus.federation.store import Store

__all__ = ["COOKIE", "REQUEST_USER", "TOUCH_S", "Session", "Sessions"]

#: the session cookie's name
COOKIE = "foedus_session"
#: the key under which the console's middleware hands a session's ``(user, role)`` to the
#: coordinator's API handlers (a request's own mapping, which no client can set); a typed key
#: where aiohttp is installed (the federation extra), which nothing serves requests without
REQUEST_USER: Any
try:
    from aiohttp.web import RequestKey

    REQUEST_USER = RequestKey("console_user", tuple)
except ImportError:  # pragma: no cover
    REQUEST_USER = "console_user"
#: a session's last use is stored again only when older than this (seconds)
TOUCH_S = 60.0


@dataclass
class Session:
    user: str
    role: str
    csrf: str

    def csrf_ok(self, sent: str | None) -> bool:
        """Whether a request carries this session's CSRF token (compared in constant time)."""
        return sent is not None and hmac.compare_digest(sent, self.csrf)


def csrf_of(session_id: str) -> str:
    """The CSRF token of a session: only whoever holds the session id can compute it."""
    return hmac.new(session_id.encode(), b"foedus console csrf", hashlib.sha256).hexdigest()


class Sessions:
    """The console's sessions, kept in the coordinator's store."""

    def __init__(self, store: Store, idle_s: float = 8 * 3600) -> None:
        self.store = store
        self.idle_s = idle_s

    def login(self, token: str) -> tuple[str, Session] | None:
        """A new session for the token's user (its id and the session), or None for a token
        that is no user's."""
        self.store.close_idle_sessions(self.idle_s)
        session_id = secrets.token_urlsafe(32)
        found = self.store.open_session(session_id, token.strip())
        if found is None:
            return None
        return session_id, Session(found[0], found[1], csrf_of(session_id))

    def get(self, session_id: str | None) -> Session | None:
        """The session of a cookie's value, or None (unknown, ended, idle too long, or its
        user re-keyed)."""
        if not session_id:
            return None
        found = self.store.session(session_id, self.idle_s)
        if found is None:
            return None
        user, role, last_used = found
        if self.store.clock() - last_used > TOUCH_S:
            self.store.touch_session(session_id)
        return Session(user, role, csrf_of(session_id))

    def logout(self, session_id: str | None) -> None:
        if session_id:
            self.store.close_session(session_id)
