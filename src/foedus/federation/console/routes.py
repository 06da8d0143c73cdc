"""The console's pages, and the middleware that joins them to the coordinator's own API.

:func:`mount` adds to the coordinator's aiohttp app:

* ``/console/login`` (a token exchanged for a session cookie, :mod:`.sessions`) and
  ``/console/logout``;
* the pages ``/console/`` (the federation: sites, policies), ``/console/jobs``,
  ``/console/jobs/{job_id}``, ``/console/submit``, and a site's privacy-budget ledger and
  audit log, ``/console/sites/{name}/ledger`` and ``/audit``, for the roles the API lets read
  them (:data:`foedus.federation.openapi.ROUTES` says which); each page is rendered here
  (Jinja2) and kept live by its script, which polls either a fragment of the page
  (``?part=live``) or the coordinator's JSON API (``/v1/...``) itself (a finished job's
  model is the API's ``/v1/jobs/{job_id}/model``);
* ``/console/static/``: the styles, the scripts and the vendored chart library.

The middleware lets those scripts call ``/v1/`` with the session: a request with the session's
cookie and no ``Authorization`` header is passed on as made by the session's user (the API
reads it where it reads a bearer token's user), so the API's own checks (roles, owners)
decide, and the console has no second set of rules. A request that changes something
(anything but GET) must also carry the session's CSRF token. Console pages never show a
Python traceback: an error is logged here and the page says, in one short sentence, that
something went wrong.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from foedus.core.errors import require
from foedus.federation.console import views
from foedus.federation.console.sessions import COOKIE, REQUEST_USER, Session, Sessions
from foedus.federation.openapi import ROUTES
from foedus.federation.store import JOB_STATES, ROLES

if TYPE_CHECKING:
    from foedus.federation.coordinator import Coordinator

log = logging.getLogger("foedus.federation.console")

__all__ = ["PREFIX", "mount"]

PREFIX = "/console"
HERE = Path(__file__).parent
#: sent with every console response: only the coordinator's own scripts, styles and images,
#: never framed by another site, no job id leaking to another site in a referrer (same-origin: a
#: browser then still sends the Origin a POST is checked against)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
#: the console's pages of a site's reports: (label, page, the API route it shows)
SITE_PAGES = (("ledger", "ledger", "/v1/sites/{name}/ledger"),
              ("audit log", "audit", "/v1/sites/{name}/audit"))

Handler = Callable[[Any], Awaitable[Any]]


def _can(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


class Console:
    """The console of one coordinator: its sessions, templates and page handlers."""

    def __init__(self, coordinator: Coordinator) -> None:
        jinja2 = require("jinja2", "federation")
        self.web = require("aiohttp.web", "federation")
        self.coordinator = coordinator
        self.sessions = Sessions(coordinator.store)
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=jinja2.select_autoescape(["html"]),
            undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)

    # ---- helpers -------------------------------------------------------------------------

    def render(self, template: str, request: Any, session: Session | None,
               http_status: int = 200, **context: Any) -> Any:
        page = self.templates.get_template(template).render(
            prefix=PREFIX, session=session, path=request.path, **context)
        return self.web.Response(text=page, status=http_status, content_type="text/html")

    def session(self, request: Any) -> Session:
        """The request's session, or a redirect to the login page (which comes back here)."""
        found = self.sessions.get(request.cookies.get(COOKIE))
        if found is None:
            # a page's script asking for a fragment goes to the login page itself: a redirect
            # would show the login page inside the page, and come back to the bare fragment
            if request.query.get("part") == "live":
                raise self.web.HTTPUnauthorized()
            raise self.web.HTTPSeeOther(f"{PREFIX}/login?next={quote(request.path_qs)}")
        return found

    def error(self, request: Any, status: int, message: str) -> Any:
        """A short error page; it shows the navigation when the session still reads (the
        store that failed the page may fail this lookup too)."""
        try:
            session = self.sessions.get(request.cookies.get(COOKIE))
        except Exception:
            session = None
        return self.render("error.html", request, session, http_status=status,
                           status_code=status, message=message)

    def ended(self) -> str:
        """What an API call of a page whose session ended is told (in the page's own words)."""
        return (f"your console session has ended (logged out, unused for "
                f"{self.sessions.idle_s / 3600:g} hours, or your token was replaced); log in "
                f"again")

    @staticmethod
    def same_origin(request: Any) -> bool:
        """Whether a browser's ``Origin`` (sent with every POST) is this coordinator."""
        origin = request.headers.get("Origin")
        return origin is None or origin == f"{request.scheme}://{request.host}"

    # ---- log in and out ------------------------------------------------------------------

    async def login_form(self, request: Any) -> Any:
        cookie = request.cookies.get(COOKIE)
        if self.sessions.get(cookie) is not None:
            raise self.web.HTTPSeeOther(_next(request.query.get("next")))
        # a cookie that opens no session: the user was working, and is told why this page
        return self.render("login.html", request, None, next=_next(request.query.get("next")),
                           message=self.ended() if cookie else None)

    async def login(self, request: Any) -> Any:
        form = await request.post()
        target = _next(form.get("next"))
        if not self.same_origin(request):
            return self.error(request, 403, "This login came from another site; log in from "
                                            "the console's own page.")
        token = form.get("token")
        made = self.sessions.login(token) if isinstance(token, str) and token.strip() else None
        if made is None:
            message = ("unknown token" if isinstance(token, str) and token.strip()
                       else "token: required (the token `foedus users add` printed)")
            return self.render("login.html", request, None, http_status=401, next=target,
                               message=message)
        session_id, _ = made
        response = self.web.HTTPSeeOther(target)
        response.set_cookie(COOKIE, session_id, httponly=True, secure=True, samesite="Strict",
                            path="/")
        raise response

    async def logout(self, request: Any) -> Any:
        session_id = request.cookies.get(COOKIE)
        session = self.sessions.get(session_id)
        form = await request.post()
        csrf = form.get("csrf")
        if session is not None and not session.csrf_ok(csrf if isinstance(csrf, str) else None):
            return self.error(request, 403, "This logout did not come from the console's own "
                                            "page; nothing was done.")
        self.sessions.logout(session_id)
        response = self.web.HTTPSeeOther(f"{PREFIX}/login")
        response.del_cookie(COOKIE, path="/")
        raise response

    # ---- pages ---------------------------------------------------------------------------

    async def federation(self, request: Any) -> Any:
        session = self.session(request)
        store = self.coordinator.store
        running: dict[str, list[str]] = {}
        for a in store.assignments():
            if a["state"] in ("accepted", "running"):
                running.setdefault(a["site"], []).append(a["job_id"])
        now = time.time()
        sites = [views.site_row(s, sorted(set(running.get(s["name"], []))), now)
                 for s in store.sites(self.coordinator.config.heartbeat_timeout)]
        links = {label: f"{PREFIX}/sites/{{site}}/{page}" for label, page, api in SITE_PAGES
                 if _can(session.role, _api_role("GET", api))}
        context: dict[str, Any] = {"sites": sites, "links": links, "version": _version()}
        if request.query.get("part") == "live":
            return self.render("_sites.html", request, session, **context)
        return self.render("federation.html", request, session, **context)

    async def jobs(self, request: Any) -> Any:
        session = self.session(request)
        status = views.status_filter(request.query.get("status"))
        store = self.coordinator.store
        found = store.jobs(states=(status,) if status else ())
        latest = store.latest_rounds()  # one query, not one per job: this is polled
        rows = [views.job_row(j.public(), latest.get(j.id)) for j in reversed(found)]
        for row in rows:
            row["can_cancel"] = row["active"] and _may_cancel(session, row["owner"])
        context: dict[str, Any] = {"rows": rows, "status": status, "states": JOB_STATES}
        if request.query.get("part") == "live":
            return self.render("_jobs.html", request, session, **context)
        return self.render("jobs.html", request, session, **context)

    async def job(self, request: Any) -> Any:
        session = self.session(request)
        job = self.coordinator.store.job(request.match_info["job_id"])
        if job is None:
            return self.error(request, 404, f"There is no job {request.match_info['job_id']!r}.")
        return self.render("job.html", request, session, job=job.shown(),
                           rounds=views.total_rounds(job.job_yaml),
                           can_cancel=_may_cancel(session, job.owner))

    async def submit(self, request: Any) -> Any:
        session = self.session(request)
        return self.render("submit.html", request, session,
                           may_submit=_can(session.role, "submitter"))

    async def site_report(self, request: Any) -> Any:
        """A site's ledger or audit log page, for the roles the API shows them to."""
        session = self.session(request)
        name, page = request.match_info["name"], request.match_info["page"]
        label, _, api = next(p for p in SITE_PAGES if p[1] == page)
        needed = _api_role("GET", api)
        if not _can(session.role, needed):
            return self.error(request, 403, f"User {session.user!r} is a {session.role}; a "
                                            f"site's {label} needs the {needed} role.")
        known = {s["name"] for s in self.coordinator.store.sites(
            self.coordinator.config.heartbeat_timeout)}
        if name not in known:
            return self.error(request, 404, f"No site named {name!r} has ever connected.")
        api_path = api.replace("{name}", quote(name, safe=""))
        reports = self.coordinator.reports
        if page == "ledger":
            ledger = reports.ledger(name)
            return self.render("ledger.html", request, session, site=name, api_path=api_path,
                               reported=ledger is not None,
                               datasets=views.ledger_datasets(ledger or {}))
        audit = reports.audit(name)
        return self.render("audit.html", request, session, site=name, api_path=api_path,
                           chain=audit["chain"], entries=len(audit["entries"]),
                           rows=views.audit_rows(audit))

    async def root(self, request: Any) -> Any:
        raise self.web.HTTPFound(f"{PREFIX}/")

    # ---- the middleware ------------------------------------------------------------------

    async def middleware(self, request: Any, handler: Handler) -> Any:
        path: str = request.path
        if path.startswith("/v1/") and not path.startswith("/v1/site/"):
            return await self._api(request, handler)
        if path != "/" and not path.startswith(PREFIX):
            return await handler(request)
        try:
            response = await handler(request)
        except self.web.HTTPException as exc:
            if exc.status < 400:  # a redirect
                exc.headers.update(SECURITY_HEADERS)
                raise
            response = self.error(request, exc.status, _STATUS_MESSAGES.get(
                exc.status, "This request cannot be served."))
        except Exception:  # a page shows a short message; the traceback goes to the log only
            log.exception("console: %s %s failed", request.method, path)
            response = self.error(request, 500, "The coordinator could not show this page. "
                                                "The error is in its log; try again later.")
        if not path.startswith(f"{PREFIX}/static/"):
            response.headers.update(SECURITY_HEADERS)
        elif response.status < 400:
            # asked again each time (a 304 while unchanged): without it a browser keeps a
            # script for a tenth of its age, so after an upgrade the new pages ran old scripts
            response.headers["Cache-Control"] = "no-cache"
        return response

    async def _api(self, request: Any, handler: Handler) -> Any:
        """A ``/v1/`` call: with the session's cookie and no token, made as the session's
        user (a change needs the session's CSRF token too); otherwise untouched."""
        if "Authorization" in request.headers:
            return await handler(request)
        cookie = request.cookies.get(COOKIE)
        session = self.sessions.get(cookie)
        if session is None:
            # a console page whose session ended: say so, not "no bearer token"; its cookie is
            # gone when it was logged out in another tab, and its CSRF token is still sent
            if cookie or "X-CSRF-Token" in request.headers:
                return self.web.json_response({"error": self.ended()}, status=401)
            return await handler(request)
        sent = request.headers.get("X-CSRF-Token")
        if request.method not in ("GET", "HEAD") and not (
                self.same_origin(request) and session.csrf_ok(sent)):
            # a token of another session: most likely the console's own page, loaded under
            # a session that ended before its user logged in again (in another tab)
            stale = self.same_origin(request) and sent is not None
            return self.web.json_response({"error": (
                "this page was loaded before you last logged in; reload it (nothing was done)"
                if stale else "a console request that changes anything needs the session's "
                              "CSRF token (X-CSRF-Token) and the console's origin")}, status=403)
        request[REQUEST_USER] = (session.user, session.role)  # the API's _user reads it
        return await handler(request)


_STATUS_MESSAGES = {404: "There is no such page.",
                    405: "This page does not take that kind of request."}


def _next(value: Any) -> str:
    """Where to go after logging in: a console page, never another site."""
    if isinstance(value, str) and value.startswith(f"{PREFIX}/") and "//" not in value \
            and not value.startswith(f"{PREFIX}/login"):
        return value
    return f"{PREFIX}/"


def _may_cancel(session: Session, owner: str) -> bool:
    """The API's rule (``POST /v1/jobs/{id}/cancel``), to offer the button only to those the
    API would let through: an admin, or a submitter who owns the job."""
    return session.role == "admin" or (session.role == "submitter" and owner == session.user)


def _api_role(method: str, path: str) -> str:
    """The role the API's description says a route needs (``admin`` if it names none)."""
    for m, p, who, _ in ROUTES:
        if (m, p) == (method, path) and who in ROLES:
            return who
    return "admin"


def _version() -> str:
    from foedus.federation.coordinator import VERSION

    return VERSION


def mount(app: Any, coordinator: Coordinator) -> Console:
    """Add the console to the coordinator's app (before it starts serving)."""
    web = require("aiohttp.web", "federation")
    console = Console(coordinator)
    add = app.router.add_route
    add("GET", "/", console.root)
    add("GET", PREFIX, console.root)
    add("GET", f"{PREFIX}/login", console.login_form)
    add("POST", f"{PREFIX}/login", console.login)
    add("POST", f"{PREFIX}/logout", console.logout)
    add("GET", f"{PREFIX}/", console.federation)
    add("GET", f"{PREFIX}/jobs", console.jobs)
    add("GET", f"{PREFIX}/jobs/{{job_id}}", console.job)
    add("GET", f"{PREFIX}/submit", console.submit)
    add("GET", f"{PREFIX}/sites/{{name}}/{{page:ledger|audit}}", console.site_report)
    app.router.add_static(f"{PREFIX}/static/", HERE / "static")

    @web.middleware  # type: ignore[untyped-decorator]
    async def middleware(request: Any, handler: Handler) -> Any:
        return await console.middleware(request, handler)

    app.middlewares.append(middleware)
    return console
