"""The console's routes in process: login and the session cookie, the session used on the
coordinator's own API (with CSRF for changes), role-aware pages, short error pages, the dry
run, a site's ledger and audit log as pages, sessions across a restart."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from foedus.federation.audit import AuditLog
from foedus.federation.coordinator import Coordinator
from foedus.federation.ledger import Budget, Ledger, mechanisms_of
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


def report_site_a(coordinator: Coordinator, tmp_path: Path) -> list[dict[str, Any]]:
    """site-a's heartbeats bring its audit log (a real one: one job accepted and ended, one
    refused) and its ledger report (a real one: the accepted job's reservation settled)."""
    pytest.importorskip("dp_accounting")
    job = {"job_id": "dp-1", "rounds": 5, "clients": {"count": 2},
           "data": {"dataset": "digits"},
           "pipeline": [{"type": "central-dp", "params": {
               "clip_norm": 1.0, "noise_multiplier": 5.0, "clients_per_round": 2}}]}
    budget = Budget(8.0, 1e-5)
    ledger = Ledger(tmp_path / "ledger.db")
    assert ledger.reserve("digits", budget, "dp-1", mechanisms_of(job), 5)[0] is None
    ledger.settle("dp-1", 3, "exited")
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.offered(job_id="dp-1", actor="client_0", submitter="ann", job_yaml="rounds: 5\n",
                  reason=None, stages=["central-dp"], dataset="digits", epsilon=0.9,
                  delta=1e-5)
    audit.offered(job_id="big-2", actor="client_1", submitter="bob", job_yaml="rounds: 900\n",
                  reason="900 rounds is more than this site allows (60)", stages=[],
                  dataset="digits", epsilon=None, delta=None)
    audit.ended(job_id="dp-1", actor="client_0", outcome="exited", reason=None,
                updates_sent=3, epsilon=0.7)
    entries = audit.entries()
    coordinator.reports.receive("site-a", {"audit": entries,
                                           "ledger": ledger.report({"digits": budget})})
    return entries


async def test_an_admin_reads_a_sites_ledger_and_audit_log_as_pages_linked_from_its_row(
        client: Client, coordinator: Coordinator, tmp_path: Path) -> None:
    entries = report_site_a(coordinator, tmp_path)
    admin = await log_in(client)
    federation = await (await client.get("/console/", headers=admin)).text()
    assert '<a href="/console/sites/site-a/ledger">ledger</a>' in federation
    assert '<a href="/console/sites/site-a/audit">audit log</a>' in federation
    ledger = await (await client.get("/console/sites/site-a/ledger", headers=admin)).text()
    assert "Dataset digits" in ledger and "epsilon 8.000 at delta 1e-05" in ledger
    assert '<tr data-job="dp-1">' in ledger and "settled" in ledger and "exited" in ledger
    assert '<a href="/v1/sites/site-a/ledger">as JSON</a>' in ledger
    audit = await (await client.get("/console/sites/site-a/audit", headers=admin)).text()
    assert "Hash chain verified: all 3 entries link up." in audit
    assert audit.count("<tr data-job=") == 2  # one row per job, its end folded in
    assert "refused: 900 rounds is more than this site allows (60)" in audit
    assert f'title="{entries[0]["job_sha256"]}"' in audit  # the job file's hash, whole
    # site-b sent nothing: each page says so in a sentence
    quiet = await (await client.get("/console/sites/site-b/ledger", headers=admin)).text()
    assert "site-b has not sent a ledger yet." in quiet
    none = await (await client.get("/console/sites/site-b/audit", headers=admin)).text()
    assert "No entry yet: no job has been offered to site-b." in none
    assert "Hash chain" not in none  # no chain to speak of, not "all 0 entries link up"
    # a copy changed at the coordinator no longer verifies, and the page says where
    copy = coordinator.config.state_dir / "sites/site-a/audit.jsonl"
    lines = copy.read_text().splitlines()
    copy.write_text("\n".join([lines[0], lines[1].replace("bob", "eve"), lines[2]]) + "\n")
    broken = await (await client.get("/console/sites/site-a/audit", headers=admin)).text()
    assert "Hash chain broken at 2: the copy was changed" in broken
    unknown = await client.get("/console/sites/nowhere/ledger", headers=admin)
    assert unknown.status == 404
    assert "No site named &#39;nowhere&#39; has ever connected." in await unknown.text()


async def test_a_viewer_sees_no_ledger_or_audit_log_as_the_api_shows_them_only_to_admins(
        client: Client, coordinator: Coordinator) -> None:
    coordinator.store.add_user("vera", "viewer", "tok-vera")
    viewer = await log_in(client, "tok-vera")
    federation = await (await client.get("/console/", headers=viewer)).text()
    assert "/ledger" not in federation and "/audit" not in federation
    for page in ("ledger", "audit"):
        refused = await client.get(f"/console/sites/site-a/{page}", headers=viewer)
        text = await refused.text()
        assert refused.status == 403 and "needs the admin role." in text
        assert (await client.get(f"/v1/sites/site-a/{page}", headers=viewer)).status == 403


async def test_a_dry_run_says_which_sites_budget_would_refuse_a_dp_job(
        client: Client, coordinator: Coordinator, tmp_path: Path) -> None:
    report_site_a(coordinator, tmp_path)  # site-a: 8.0 at 1e-05 on digits, 3 rounds spent
    dp = JOB.replace("rounds: 80", "rounds: 50") + (
        "pipeline: [{type: central-dp, params: {clip_norm: 1.0, noise_multiplier: 0.5, "
        "clients_per_round: 2}}]\n")
    answer = await client.post("/v1/jobs?dry_run=1", json={"job_yaml": dp},
                               headers=await log_in(client))
    assert answer.status == 200
    verdicts = {v["site"]: (v["accepts"], v["reason"]) for v in (await answer.json())["sites"]}
    accepts, reason = verdicts["site-a"]
    assert accepts is False
    assert reason.startswith("dataset 'digits': privacy budget epsilon 8 at delta 1e-05; "
                             "spent ")
    assert verdicts["site-b"] == (True, "its policy and catalog accept the job")  # no ledger
    assert coordinator.store.jobs() == []


async def test_a_restarted_coordinator_keeps_a_logged_in_session_and_not_a_logged_out_one(
        client: Client, coordinator: Coordinator) -> None:
    kept, ended = await log_in(client), await log_in(client)
    out = await client.post("/console/logout", data={"csrf": ended["X-CSRF-Token"]},
                            headers={"Cookie": ended["Cookie"]}, allow_redirects=False)
    assert out.status == 303
    coordinator.stop_all()  # the coordinator stops; a new one starts on its state
    restarted = Coordinator(coordinator.config)
    async with TestClient(TestServer(restarted.app())) as again:
        page = await again.get("/console/jobs", headers=kept, allow_redirects=False)
        assert page.status == 200 and '<span id="who">admin' in await page.text()
        change = await again.post("/v1/jobs/x/cancel", headers=kept)  # its CSRF token holds
        assert change.status == 404 and (await change.json())["error"] == "no job 'x'"
        cookie = {"Cookie": ended["Cookie"]}
        login = await again.get("/console/jobs", headers=cookie, allow_redirects=False)
        assert login.status == 303 and login.headers["Location"].startswith("/console/login")
        assert (await again.get("/v1/jobs", headers=cookie)).status == 401
    restarted.stop_all()


async def test_a_job_id_too_long_for_the_coordinators_suffix_is_refused_by_the_check_in_one_line(
        client: Client, coordinator: Coordinator) -> None:
    headers = await log_in(client)
    longest = "j" * 94  # with "-xxxxxx", 101 characters: the most a job id may have
    fits = await client.post("/v1/jobs?dry_run=1", headers=headers,
                             json={"job_yaml": JOB.replace("job_id: j", f"job_id: {longest}")})
    assert fits.status == 200
    expected = ("job file: job_id: at most 94 characters in a federation (the coordinator "
                "appends '-' and 6 hex digits, and a job id has at most 101), got 95")
    for dry_run in ("?dry_run=1", ""):
        answer = await client.post(f"/v1/jobs{dry_run}", headers=headers, json={
            "job_yaml": JOB.replace("job_id: j", f"job_id: {longest}j")})
        assert answer.status == 400 and (await answer.json())["error"] == expected
    assert coordinator.store.jobs() == []  # nothing queued (it was queued, and then a 500)


async def test_a_call_with_an_ended_session_says_the_session_ended_not_that_a_token_is_missing(
        client: Client) -> None:
    headers = await log_in(client)
    out = await client.post("/console/logout", data={"csrf": headers["X-CSRF-Token"]},
                            headers={"Cookie": headers["Cookie"]}, allow_redirects=False)
    assert out.status == 303
    expected = ("your console session has ended (logged out, unused for 8 hours, or your token "
                "was replaced); log in again")
    for method, path in (("GET", "/v1/jobs"), ("POST", "/v1/jobs?dry_run=1")):
        answer = await client.request(method, path, headers=headers, json={"job_yaml": JOB})
        assert answer.status == 401 and (await answer.json())["error"] == expected
    # logged out in another tab: the browser dropped the cookie, the page still sends its token
    tab = await client.post("/v1/jobs?dry_run=1", json={"job_yaml": JOB},
                            headers={"X-CSRF-Token": headers["X-CSRF-Token"]})
    assert tab.status == 401 and (await tab.json())["error"] == expected
    # a page's live fragment is not redirected to the login page (it would be shown inside
    # the page): it answers 401, and the page's script goes to the login page itself
    fragment = await client.get("/console/jobs?part=live", headers=headers,
                                allow_redirects=False)
    assert fragment.status == 401


async def test_a_job_file_that_is_not_yaml_is_refused_naming_the_line_without_parser_internals(
        client: Client) -> None:
    headers = await log_in(client)
    cases = {
        JOB.replace("rounds: 80", "rounds: 80: 3"): "job file: not valid YAML at line 2, "
                                                    "column 11: mapping values are not allowed "
                                                    "here",
        "": "job file: expected a mapping of settings such as rounds, data, model; got nothing",
        "- rounds: 3\n": "job file: expected a mapping of settings such as rounds, data, model; "
                         "got list",
    }
    for text, expected in cases.items():
        answer = await client.post("/v1/jobs?dry_run=1", headers=headers,
                                   json={"job_yaml": text})
        assert answer.status == 400 and (await answer.json())["error"] == expected


async def test_a_page_loaded_before_logging_in_again_is_told_to_reload_not_about_csrf_tokens(
        client: Client) -> None:
    old_page = await log_in(client)  # the submit page, open while its session ended
    await client.post("/console/logout", data={"csrf": old_page["X-CSRF-Token"]},
                      headers={"Cookie": old_page["Cookie"]}, allow_redirects=False)
    new_session = await log_in(client)  # logged in again, in another tab
    answer = await client.post("/v1/jobs?dry_run=1", json={"job_yaml": JOB}, headers={
        "Cookie": new_session["Cookie"], "X-CSRF-Token": old_page["X-CSRF-Token"]})
    assert answer.status == 403
    assert (await answer.json())["error"] == ("this page was loaded before you last logged in; "
                                              "reload it (nothing was done)")


async def test_the_login_page_says_why_when_a_session_ended_and_not_on_a_first_visit(
        client: Client) -> None:
    first = await (await client.get("/console/login")).text()
    assert "session has ended" not in first
    headers = await log_in(client)
    await client.post("/console/logout", data={"csrf": headers["X-CSRF-Token"]},
                      headers={"Cookie": headers["Cookie"]}, allow_redirects=False)
    page = await client.get("/console/jobs", headers={"Cookie": headers["Cookie"]})
    assert page.url.path == "/console/login"  # followed the redirect, with the old cookie
    assert ("your console session has ended (logged out, unused for 8 hours, or your token "
            "was replaced); log in again") in await page.text()


async def test_the_jobs_page_shows_each_jobs_latest_round_and_its_metrics(
        client: Client, coordinator: Coordinator) -> None:
    first = coordinator.submit("admin", JOB, None)
    second = coordinator.submit("admin", JOB.replace("rounds: 80", "rounds: 5"), None)
    for n in (1, 2):
        coordinator.store.add_round(first, {"round": n, "metrics": {"accuracy": 0.5 + n / 10}})
    page = await (await client.get("/console/jobs?part=live", headers=await log_in(client))).text()
    rows = {m.group(1): m.group(0) for m in re.finditer(r'<tr data-job="([^"]+)".*?</tr>',
                                                        page, re.S)}
    assert '<td class="num">2/80</td>' in rows[first] and "0.7000" in rows[first]
    assert '<td class="num">0/5</td>' in rows[second]


async def test_a_job_file_too_large_for_the_coordinator_is_refused_in_one_json_line(
        client: Client) -> None:
    answer = await client.post("/v1/jobs?dry_run=1", headers=await log_in(client),
                               json={"job_yaml": JOB + "# " + "x" * (5 << 20) + "\n"})
    assert answer.status == 413
    assert (await answer.json())["error"] == ("the request is larger than the coordinator "
                                              "takes (4 MiB)")


async def test_the_consoles_scripts_and_styles_are_revalidated_so_an_upgrade_is_seen_at_once(
        client: Client) -> None:
    for path in ("/console/static/console.js", "/console/static/console.css",
                 "/console/static/vendor/uplot/uPlot.iife.min.js"):
        answer = await client.get(path)
        assert answer.status == 200 and answer.headers["Cache-Control"] == "no-cache", path
        again = await client.get(path, headers={
            "If-Modified-Since": answer.headers["Last-Modified"]})
        assert again.status == 304  # revalidated: nothing sent again while unchanged
