"""Console sessions: a user's bearer token exchanged for a session cookie.

The browser never keeps the token: the login form sends it once, and the coordinator answers
with a random session id in a cookie the page's scripts cannot read (``HttpOnly``), sent over
HTTPS only (``Secure``) and never with a request another site starts (``SameSite=Strict``).
Every session also has a CSRF token, which the pages send back with each ``POST`` (a form
field or the ``X-CSRF-Token`` header): SameSite already stops cross-site requests in current
browsers, the token stops them in the others.

Sessions live in the coordinator's memory: a restarted coordinator asks everyone to log in
again, which loses no work, and logging out really ends a session. Each request re-reads the
token's user, so a user re-keyed or given another role is seen at once; a session unused for
``idle_s`` ends.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["COOKIE", "Session", "Sessions"]

#: the session cookie's name
COOKIE = "foedus_session"


@dataclass
class Session:
    user: str
    role: str
    token: str  # the user's bearer token: the pages' API calls are made with it
    csrf: str
    last_used: float

    def csrf_ok(self, sent: str | None) -> bool:
        """Whether a request carries this session's CSRF token (compared in constant time)."""
        return sent is not None and hmac.compare_digest(sent, self.csrf)


class Sessions:
    """The open sessions; ``lookup`` maps a token to ``(user, role)`` or None (the store's
    :meth:`~foedus.federation.store.Store.user_by_token`)."""

    def __init__(self, lookup: Callable[[str], tuple[str, str] | None],
                 idle_s: float = 8 * 3600, clock: Callable[[], float] = time.monotonic) -> None:
        self.lookup = lookup
        self.idle_s = idle_s
        self.clock = clock
        self._open: dict[str, Session] = {}

    def login(self, token: str) -> tuple[str, Session] | None:
        """A new session for the token's user (its id and the session), or None for a token
        that is no user's."""
        found = self.lookup(token.strip())
        if found is None:
            return None
        self._forget_idle()
        session_id = secrets.token_urlsafe(32)
        session = Session(found[0], found[1], token.strip(), secrets.token_urlsafe(24),
                          self.clock())
        self._open[session_id] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The session of a cookie's value, or None (unknown, idle too long, or its user's
        token no longer valid)."""
        if not session_id:
            return None
        session = self._open.get(session_id)
        if session is None:
            return None
        now = self.clock()
        found = self.lookup(session.token)
        if found is None or now - session.last_used > self.idle_s:
            del self._open[session_id]
            return None
        session.user, session.role, session.last_used = found[0], found[1], now
        return session

    def logout(self, session_id: str | None) -> None:
        if session_id:
            self._open.pop(session_id, None)

    def _forget_idle(self) -> None:
        now = self.clock()
        for key in [k for k, s in self._open.items() if now - s.last_used > self.idle_s]:
            del self._open[key]
