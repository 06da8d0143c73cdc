"""The console's routes in process: login and the session cookie, the session used on the
coordinator's own API (with CSRF for changes), role-aware pages, short error pages, the dry
run."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from foedus.federation.console import mount
from foedus.federation.coordinator import Coordinator
from tests.federation.console.conftest import ADMIN

Client = TestClient  # type: ignore[type-arg]
JOB = ("job_id: j\nrounds: 80\ndata: {dataset: digits}\nclients: {count: 2}\n"
       "transport: {type: mqtt, params: {host: 127.0.0.1, port: 1883}}\n")


async def log_in(client: Client, token: str = ADMIN) -> dict[str, str]:
    """Headers of a logged-in browser: the session cookie (sent by hand: aiohttp's client
    keeps no Secure cookie over the test's plain HTTP) and the page's CSRF token."""
    answer = await client.post("/console/login", data={"token": token},
                               allow_redirects=False)
    assert answer.status == 303
    cookie = {"Cookie": f"foedus_session={answer.cookies['foedus_session'].value}"}
    page = await (await client.get("/console/", headers=cookie)).text()
    found = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert found is not None
    return {**cookie, "X-CSRF-Token": found.group(1)}


async def test_logging_in_sets_a_strict_http_only_secure_cookie_and_goes_where_asked(
        client: Client) -> None:
    away = await client.get("/console/jobs?status=running", allow_redirects=False)
    assert away.status == 303
    back = URL(away.headers["Location"])
    assert (back.path, back.query["next"]) == ("/console/login", "/console/jobs?status=running")
    refused = await client.post("/console/login", data={"token": "not-a-token"})
    assert refused.status == 401 and "unknown token" in await refused.text()
    made = await client.post("/console/login", allow_redirects=False,
                             data={"token": ADMIN, "next": "/console/jobs?status=running"})
    assert made.status == 303 and made.headers["Location"] == "/console/jobs?status=running"
    cookie = made.headers["Set-Cookie"]
    assert all(flag in cookie for flag in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/"))
    elsewhere = await client.post("/console/login", allow_redirects=False,
                                  data={"token": ADMIN, "next": "https://evil.example/"})
    assert elsewhere.headers["Location"] == "/console/"  # never to another site


async def test_a_login_posted_from_another_site_is_refused(client: Client) -> None:
    answer = await client.post("/console/login", data={"token": ADMIN},
                               headers={"Origin": "https://evil.example"})
    assert answer.status == 403 and "foedus_session" not in answer.cookies


async def test_the_session_calls_the_api_and_a_change_needs_its_csrf_token(
        client: Client) -> None:
    headers = await log_in(client)
    cookie_only = {"Cookie": headers["Cookie"]}
    listed = await client.get("/v1/jobs", headers=cookie_only)
    assert listed.status == 200 and listed.headers["Content-Type"].startswith("application/json")
    forged = await client.post("/v1/jobs/x/cancel", headers=cookie_only)
    assert forged.status == 403 and "CSRF" in (await forged.json())["error"]
    wrong = await client.post("/v1/jobs/x/cancel",
                              headers={**cookie_only, "X-CSRF-Token": "guessed"})
    assert wrong.status == 403
    other_site = await client.post("/v1/jobs/x/cancel",
                                   headers={**headers, "Origin": "https://evil.example"})
    assert other_site.status == 403
    passed = await client.post("/v1/jobs/x/cancel", headers=headers)
    assert passed.status == 404 and (await passed.json())["error"] == "no job 'x'"  # the API's


async def test_logout_needs_the_csrf_token_and_ends_the_session(client: Client) -> None:
    headers = await log_in(client)
    cookie_only = {"Cookie": headers["Cookie"]}
    kept = await client.post("/console/logout", headers=cookie_only, allow_redirects=False)
    assert kept.status == 403
    assert (await client.get("/v1/jobs", headers=cookie_only)).status == 200
    gone = await client.post("/console/logout", data={"csrf": headers["X-CSRF-Token"]},
                             headers=cookie_only, allow_redirects=False)
    assert gone.status == 303 and gone.headers["Location"] == "/console/login"
    after = await client.get("/v1/jobs", headers=cookie_only)
    assert after.status == 401  # the cookie opens nothing any more


async def test_a_dry_run_queues_nothing_and_says_which_sites_would_accept(
        client: Client, coordinator: Coordinator) -> None:
    headers = await log_in(client)
    answer = await client.post("/v1/jobs?dry_run=1", json={"job_yaml": JOB}, headers=headers)
    assert answer.status == 200
    verdicts = {v["site"]: (v["accepts"], v["reason"]) for v in (await answer.json())["sites"]}
    assert verdicts == {"site-a": (True, "its policy and catalog accept the job"),
                        "site-b": (False, "80 rounds is more than this site allows (60)")}
    bad = await client.post("/v1/jobs?dry_run=1", headers=headers,
                            json={"job_yaml": JOB.replace("rounds: 80", "rounds: many")})
    assert bad.status == 400
    assert (await bad.json())["error"].startswith("job file: rounds: ")
    assert coordinator.store.jobs() == []


async def test_pages_offer_only_what_the_role_may_do(
        client: Client, coordinator: Coordinator) -> None:
    job_id = coordinator.submit("admin", JOB, None)
    coordinator.store.add_user("vera", "viewer", "tok-vera")
    admin = await log_in(client)
    viewer = await log_in(client, "tok-vera")
    for headers, may in ((admin, True), (viewer, False)):
        job_page = await (await client.get(f"/console/jobs/{job_id}", headers=headers)).text()
        jobs_page = await (await client.get("/console/jobs", headers=headers)).text()
        submit_page = await (await client.get("/console/submit", headers=headers)).text()
        assert ('id="cancel"' in job_page) is may
        assert (f'data-cancel="{job_id}"' in jobs_page) is may
        assert ('id="submit-form"' in submit_page) is may
    assert "user 'vera' is a viewer; submitting needs the submitter role" in submit_page


async def test_a_failing_page_shows_a_short_message_and_never_a_traceback(
        client: Client, coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    headers = await log_in(client)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the secret internals of the store")
    monkeypatch.setattr(coordinator.store, "sites", broken)
    answer = await client.get("/console/", headers=headers)
    page = await answer.text()
    assert answer.status == 500
    assert "The coordinator could not show this page." in page
    assert "Traceback" not in page and "secret internals" not in page
    assert "secret internals" in caplog.text  # the operator finds it in the log
    missing = await client.get("/console/no-such-page", headers=headers)
    assert missing.status == 404 and "There is no such page." in await missing.text()
    assert missing.headers["Content-Security-Policy"].startswith("default-src 'self'")


async def test_admins_see_links_to_the_sites_ledger_and_audit_log_when_the_api_has_them(
        coordinator: Coordinator) -> None:
    async def ledger(request: Any) -> Any:
        return web.json_response({"site": request.match_info["name"]})
    app = web.Application()
    app.router.add_get("/v1/sites/{name}/ledger", ledger)  # an API with a ledger, no audit
    mount(app, coordinator)
    coordinator.store.add_user("vera", "viewer", "tok-vera")
    async with TestClient(TestServer(app)) as client:
        admin = await (await client.get("/console/", headers=await log_in(client))).text()
        viewer = await (await client.get("/console/",
                                         headers=await log_in(client, "tok-vera"))).text()
    assert '<a href="/v1/sites/site-a/ledger">ledger</a>' in admin
    assert "audit log" not in admin
    assert "/ledger" not in viewer
