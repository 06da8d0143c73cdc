"""The web console in a real browser: headless Chromium driven by Selenium against a real
coordinator with two sites over Mosquitto (the federation of ``test_federation``), over HTTPS
with the test's own CA.

The browser trusts exactly the coordinator's key (``--ignore-certificate-errors-spki-list``
with its SPKI hash, nothing else) and talks to 127.0.0.1 only. Every wait is a
``WebDriverWait`` on a condition of the page. Set ``FOEDUS_CONSOLE_SCREENSHOTS=DIR`` to save a
screenshot of each page at the end (``scripts/console_screenshots.py`` does, into docs/console/).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import psycopg
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from foedus.mlops.modelfile import decode_model
from tests.federation.federation_fixtures import Federation, federation, job_file, wait_for
from tests.federation.postgres_fixtures import Postgres
from tests.transport.mqtt_fixtures import Mosquitto, mosquitto, mqtt_certs

__all__ = ["federation", "mosquitto", "mqtt_certs"]  # fixtures used by name

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (Path("/usr/bin/chromium").exists()
                            and Path("/usr/bin/chromedriver").exists()),
                       reason="needs Debian's chromium and chromium-driver"),
]

DESKTOP = (1280, 800)
PHONE = (390, 844)
WAIT_S = 90  # the longest a page condition may take (a job's processes start on a busy CI box)
SCREENSHOTS = os.environ.get("FOEDUS_CONSOLE_SCREENSHOTS")


def spki_hash(cert_pem: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)): what Chromium's
    ``--ignore-certificate-errors-spki-list`` pins."""
    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    der = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.fixture(scope="module")
def browser(federation: Federation, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[WebDriver]:
    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                f"--user-data-dir={profile}", f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
                # trust the coordinator's own key, and no other certificate error
                f"--ignore-certificate-errors-spki-list={spki_hash(federation.certs.server_cert)}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def viewer_token(federation: Federation) -> str:
    with federation.api() as api:
        made = api.post("/v1/users", json={"name": "vera", "role": "viewer"})
    assert made.status_code == 200, made.text
    token: str = made.json()["token"]
    return token


def until(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str,
          seconds: float = WAIT_S) -> Any:
    """Wait for a page condition (re-tried when the page re-renders the element meanwhile);
    a timeout says what the page showed instead."""
    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.1,
                             ignored_exceptions=(StaleElementReferenceException,)).until(
            condition)
    except TimeoutException:
        shown = driver.find_element(By.TAG_NAME, "main").text[:2000]
        logged = "\n".join(entry["message"] for entry in driver.get_log("browser"))
        raise AssertionError(f"timed out after {seconds}s waiting for {what} on "
                             f"{driver.current_url}; the page showed:\n{shown}\n"
                             f"the browser logged:\n{logged}") from None


def text_of(selector: str) -> Callable[[WebDriver], str]:
    """The text of the first element matching ``selector``, or '' when there is none yet."""
    def read(driver: WebDriver) -> str:
        found = driver.find_elements(By.CSS_SELECTOR, selector)
        return found[0].text if found and found[0].is_displayed() else ""
    return read


def sites_online(fed: Federation) -> None:
    """Wait until both sites are online: on a loaded machine the coordinator can miss their
    heartbeats for a while (e.g. while a cancel waits, up to 10 s, for the job's server to
    stop), and a check then says no site is online."""
    def online() -> bool:
        with fed.api() as api:
            return all(s["online"] for s in api.get("/v1/sites").json()["sites"])
    wait_for(online, WAIT_S, "both sites online")


def click(driver: WebDriver, selector: str, what: str) -> None:
    """Click an element of a region the page re-renders live (again if it was replaced)."""
    until(driver, lambda d: d.find_element(By.CSS_SELECTOR, selector).click() or True, what)


def log_in(driver: WebDriver, fed: Federation, token: str, page: str = "/console/",
           user: str = "admin") -> None:
    """Open ``page`` as ``user`` (whose token is ``token``): as is when that user is logged
    in already, else after logging out whoever is and logging in on the login page."""
    driver.get(fed.url + page)
    who = driver.find_elements(By.ID, "who")
    if who and who[0].text.split()[0] == user:
        return
    if who:
        driver.find_element(By.ID, "logout").click()
        until(driver, lambda d: d.find_elements(By.ID, "token"), "the login page")
        driver.get(fed.url + page)  # to the login page, which comes back here
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "login").click()
    until(driver, lambda d: d.find_elements(By.ID, "who"), "the console after logging in")


def paste_job(driver: WebDriver, path: Path) -> None:
    area = driver.find_element(By.ID, "job-yaml")
    area.clear()
    area.send_keys(path.read_text())


def test_a_token_logs_in_to_a_strict_session_cookie_and_logging_out_ends_it(
        federation: Federation, browser: WebDriver) -> None:
    browser.get(f"{federation.url}/console/jobs")
    assert "/console/login?next=/console/jobs" in browser.current_url  # a session is needed
    browser.find_element(By.ID, "token").send_keys("not-a-token")
    browser.find_element(By.ID, "login").click()
    assert until(browser, text_of("#login-error"), "the refusal") == "unknown token"

    browser.find_element(By.ID, "token").send_keys(federation.admin_token + Keys.ENTER)
    until(browser, lambda d: d.current_url.endswith("/console/jobs"), "the page asked for")
    cookie = browser.get_cookie("foedus_session")
    assert cookie is not None
    assert (cookie["httpOnly"], cookie["secure"], cookie["sameSite"]) == (True, True, "Strict")
    assert "foedus_session" not in browser.execute_script("return document.cookie")
    assert federation.admin_token not in browser.page_source  # the token is not kept

    browser.get(f"{federation.url}/console/")
    for site in ("site-a", "site-b"):
        row = until(browser, text_of(f'tr[data-site="{site}"]'), f"{site}'s row")
        assert "online" in row and "digits" in row
    assert "max rounds: 60" in until(browser, text_of('tr[data-site="site-b"] .policy'),
                                     "site-b's policy")

    browser.find_element(By.ID, "logout").click()
    until(browser, lambda d: d.find_elements(By.ID, "token"), "the login page")
    browser.get(f"{federation.url}/console/")
    assert "/console/login" in browser.current_url  # the session is gone


def test_a_mistake_in_a_job_file_is_shown_inline_as_the_cli_prints_it_and_nothing_is_queued(
        federation: Federation, browser: WebDriver, mosquitto: Mosquitto,
        tmp_path: Path) -> None:
    bad = job_file(mosquitto, tmp_path, "bad", rounds=2,
                   data={"dataset": "digits", "partition": "shards"})
    with federation.api() as api:
        before = len(api.get("/v1/jobs").json()["jobs"])
    log_in(browser, federation, federation.admin_token, "/console/submit")
    browser.find_element(By.ID, "job-upload").send_keys(str(bad))  # an upload is checked at once
    message = until(browser, text_of("#job-error"), "the inline error")
    assert message == ("job file: data.partition: got 'shards'; allowed: column, dirichlet, "
                       "files, iid, quantity")
    with federation.api() as api:  # the line `foedus submit` prints after "refused (400): "
        assert api.post("/v1/jobs", json={"job_yaml": bad.read_text()}).json()["error"] == message
    browser.find_element(By.ID, "submit").click()  # submitting anyway is stopped by the check
    until(browser, lambda d: d.find_element(By.ID, "submit").is_enabled(), "the check to end")
    assert browser.current_url.endswith("/console/submit")
    assert text_of("#job-error")(browser) == message
    with federation.api() as api:
        assert len(api.get("/v1/jobs").json()["jobs"]) == before


def test_the_sites_verdicts_come_before_the_submit_and_a_refusal_names_the_sites_reason(
        federation: Federation, browser: WebDriver, mosquitto: Mosquitto,
        tmp_path: Path) -> None:
    sites_online(federation)
    log_in(browser, federation, federation.admin_token, "/console/submit")
    paste_job(browser, job_file(mosquitto, tmp_path, "too-long", rounds=80))
    browser.find_element(By.ID, "check").click()
    refuses = until(browser, text_of('#verdicts li[data-site="site-b"]'), "site-b's verdict")
    assert refuses == "site-b would refuse: 80 rounds is more than this site allows (60)"
    assert text_of('#verdicts li[data-site="site-a"]')(browser).startswith("site-a would accept")

    browser.find_element(By.ID, "submit").click()  # the site decides: submit anyway
    until(browser, lambda d: "/console/jobs/too-long-" in d.current_url, "the job's page")
    until(browser, lambda d: text_of("#job-state")(d) == "failed", "the refusal")
    assert text_of("#job-reason")(browser) == ("site site-b refused client-001: 80 rounds is "
                                              "more than this site allows (60)")


def test_checking_a_job_file_that_holds_a_password_warns_that_every_site_receives_it(
        federation: Federation, browser: WebDriver, mosquitto: Mosquitto,
        tmp_path: Path) -> None:
    sites_online(federation)
    log_in(browser, federation, federation.admin_token, "/console/submit")
    paste_job(browser, job_file(mosquitto, tmp_path, "secretive", rounds=2, transport={
        "type": "mqtt", "params": {"host": "127.0.0.1", "port": mosquitto.plain_port,
                                   "password": "hunter2-of-the-broker"}}))
    browser.find_element(By.ID, "check").click()
    warning = until(browser, text_of("#job-warning"), "the warning")
    assert warning == ("the job file holds a literal secret (transport.params.password); every "
                       "site receives it, viewers see '***'")
    assert text_of('#verdicts li[data-site="site-a"]')(browser).startswith("site-a would accept")


def test_a_job_is_charted_round_by_round_as_it_runs_without_reloading_the_page(
        federation: Federation, browser: WebDriver, mosquitto: Mosquitto,
        tmp_path: Path) -> None:
    log_in(browser, federation, federation.admin_token, "/console/submit")
    paste_job(browser, job_file(mosquitto, tmp_path, "charted", rounds=3))
    browser.find_element(By.ID, "submit").click()
    until(browser, lambda d: "/console/jobs/charted-" in d.current_url, "the job's page")
    job_id = browser.current_url.rsplit("/", 1)[1]
    browser.execute_script("window.sameDocument = true")  # gone if the page reloads
    seen: list[int] = []

    def charted(driver: WebDriver) -> bool:
        points = driver.find_element(By.ID, "charts").get_attribute("data-points")
        seen.append(int(points or 0))
        return seen[-1] == 3 and text_of("#job-state")(driver) == "finished"
    until(browser, charted, "three rounds charted and the job finished")
    assert seen[0] < 3 and seen == sorted(seen)  # it grew while we watched
    assert browser.execute_script("return window.sameDocument") is True
    figures = browser.find_elements(By.CSS_SELECTOR, "#charts figure")
    names = [f.get_attribute("data-chart") for f in figures]
    assert names[:2] == ["accuracy", "loss"] and {"bytes", "time"} <= set(names)
    assert all(f.get_attribute("data-points") == "3" for f in figures)
    assert browser.find_elements(By.CSS_SELECTOR, "#charts figure canvas")  # uPlot drew
    assert text_of("#job-round")(browser) == "3"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#rounds tbody tr")) == 3
    sites = {r.get_attribute("data-site") for r in
             browser.find_elements(By.CSS_SELECTOR, "#participation tbody tr")}
    assert sites == {"site-a", "site-b"}
    assert "job_id: " + job_id in text_of("#job-file")(browser)

    link = browser.find_element(By.ID, "model")
    assert link.is_displayed()
    cookie = browser.get_cookie("foedus_session")
    assert cookie is not None
    ca = ssl.create_default_context(cafile=str(federation.certs.ca))
    with httpx.Client(verify=ca, cookies={"foedus_session": cookie["value"]}) as as_browser:
        answer = as_browser.get(str(link.get_attribute("href")))  # with the browser's session
    assert answer.status_code == 200
    assert decode_model(answer.content)  # the model file's arrays


def test_a_viewer_cannot_cancel_and_an_admin_cancels_a_running_job(
        federation: Federation, browser: WebDriver, mosquitto: Mosquitto, tmp_path: Path,
        viewer_token: str) -> None:
    path = job_file(mosquitto, tmp_path, "long", rounds=50, clients={"count": 2, "epochs": 100})
    with federation.api() as api:
        job_id = api.post("/v1/jobs", json={"job_yaml": path.read_text()}).json()["id"]
    wait_for(lambda: federation.job(job_id)["state"] == "running", WAIT_S, "the job to run")

    log_in(browser, federation, viewer_token, f"/console/jobs/{job_id}", user="vera")
    until(browser, lambda d: text_of("#job-state")(d) == "running", "the running job")
    assert browser.find_elements(By.ID, "cancel") == []  # not offered to a viewer
    forced = browser.execute_async_script(  # nor allowed when forced from the page
        "Console.api('POST', arguments[0]).then(arguments[arguments.length - 1])",
        f"/v1/jobs/{job_id}/cancel")
    assert forced["status"] == 403
    assert forced["error"] == "user 'vera' is a viewer; this needs the submitter role"
    browser.get(f"{federation.url}/console/submit")
    assert text_of("#not-allowed")(browser) == ("user 'vera' is a viewer; submitting needs the "
                                                "submitter role")
    assert federation.job(job_id)["state"] == "running"

    # no timed refresh on the jobs page: the cancel's own outcome must show without one
    frozen = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                                     {"source": "window.setInterval = () => 0;"})
    try:
        log_in(browser, federation, federation.admin_token, "/console/jobs?status=running")
        click(browser, f'button[data-cancel="{job_id}"]', "the job's cancel button")
        assert until(browser, text_of("#action-message"),
                     "the answer") == f"Job {job_id} cancelled."
        until(browser, lambda d: not d.find_elements(By.CSS_SELECTOR,
                                                     f'tr[data-job="{job_id}"]'),
              "the job to leave the running filter", seconds=30)
    finally:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument",
                                {"identifier": frozen["identifier"]})
    job = federation.job(job_id)
    assert (job["state"], job["reason"]) == ("cancelled", "cancelled by admin")


def test_every_page_reads_at_desktop_and_phone_width_and_starts_with_a_skip_link(
        federation: Federation, browser: WebDriver, mosquitto: Mosquitto,
        tmp_path: Path) -> None:
    path = job_file(mosquitto, tmp_path, "pages", rounds=1)
    with federation.api() as api:  # its own finished job: no other test's is assumed to exist
        finished = api.post("/v1/jobs", json={"job_yaml": path.read_text()}).json()["id"]
    wait_for(lambda: federation.job(finished)["state"] == "finished", WAIT_S, "the job to finish")
    pages = {"federation": "/console/", "jobs": "/console/jobs",
             "job": f"/console/jobs/{finished}", "submit": "/console/submit",
             "ledger": "/console/sites/site-a/ledger", "audit": "/console/sites/site-a/audit"}
    log_in(browser, federation, federation.admin_token)
    for (width, height), suffix in ((DESKTOP, ""), (PHONE, "-phone")):
        browser.set_window_size(width, height)
        for name, page in pages.items():
            browser.get(federation.url + page)
            browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
            assert browser.switch_to.active_element.get_attribute("class") == "skip", name
            browser.execute_script("document.activeElement.blur()")
            if name == "job":
                until(browser, lambda d: d.find_element(By.ID, "charts")
                      .get_attribute("data-points") != "0", "the charts")
            if name == "audit":  # the coordinator's copy of site-a's log, checked
                assert text_of("#chain")(browser).startswith("Hash chain verified: all ")
            if name == "submit":  # with the sites' verdicts on a job file
                sites_online(federation)
                paste_job(browser, job_file(mosquitto, tmp_path, "digits-fed", rounds=80))
                browser.find_element(By.ID, "check").click()
                until(browser, lambda d: text_of("#verdicts")(d) or text_of("#job-error")(d),
                      "the check's answer")
                assert not text_of("#job-error")(browser)
                browser.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
            overflow = browser.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{name} scrolls sideways at {width}px"
            if SCREENSHOTS:
                Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
                browser.save_screenshot(str(Path(SCREENSHOTS) / f"{name}{suffix}.png"))
    browser.set_window_size(*DESKTOP)
    if SCREENSHOTS:
        browser.find_element(By.ID, "logout").click()
        until(browser, lambda d: d.find_elements(By.ID, "token"), "the login page")
        browser.save_screenshot(str(Path(SCREENSHOTS) / "login.png"))


def test_a_live_region_keeps_the_keyboard_focus_when_it_is_re_rendered(
        federation: Federation, browser: WebDriver) -> None:
    log_in(browser, federation, federation.admin_token)
    ledger = 'tr[data-site="site-a"] a[href="/console/sites/site-a/ledger"]'
    until(browser, lambda d: d.find_element(By.CSS_SELECTOR, ledger), "site-a's ledger link")
    browser.execute_script("const link = document.querySelector(arguments[0]);"
                           "link.dataset.before = 'yes'; link.focus()", ledger)
    until(browser, lambda d: d.execute_script(
        "return document.querySelector('[data-before]') === null"), "the sites to re-render")
    assert browser.execute_script("return document.activeElement.matches(arguments[0])", ledger)


def test_a_page_whose_session_ended_elsewhere_goes_to_the_login_page_and_back_after_it(
        federation: Federation, browser: WebDriver) -> None:
    log_in(browser, federation, federation.admin_token, "/console/jobs")
    cookie = browser.get_cookie("foedus_session")
    assert cookie is not None
    csrf = browser.execute_script(
        "return document.querySelector('meta[name=\"csrf-token\"]').content")
    ca = ssl.create_default_context(cafile=str(federation.certs.ca))
    with httpx.Client(verify=ca, cookies={"foedus_session": cookie["value"]},
                      follow_redirects=True) as other_tab:
        out = other_tab.post(f"{federation.url}/console/logout", data={"csrf": csrf})
    assert out.status_code == 200 and "Log in" in out.text  # redirected to the login page
    # the page's next refresh finds the session ended: the login page, in place of the page
    until(browser, lambda d: d.current_url == f"{federation.url}/console/login?next="
          "/console/jobs", "the login page", seconds=30)
    assert browser.find_elements(By.ID, "jobs") == []  # not inside the jobs page
    assert text_of("#login-error")(browser).startswith("your console session has ended")
    browser.find_element(By.ID, "token").send_keys(federation.admin_token + Keys.ENTER)
    until(browser, lambda d: d.current_url.endswith("/console/jobs")
          and d.find_elements(By.ID, "jobs"), "the jobs page again")


def test_a_page_says_while_it_cannot_reach_the_coordinator_and_goes_on_when_it_is_back(
        federation: Federation, browser: WebDriver) -> None:
    log_in(browser, federation, federation.admin_token)
    banner = text_of("#connection")
    assert banner(browser) == ""
    federation.stop("coordinator")  # restarted: sessions are in its database
    try:
        shown = until(browser, banner, "the page to say the coordinator is out of reach",
                      seconds=30)
        assert shown.startswith("Cannot reach the coordinator since ")
        assert shown.endswith(": this page shows what it last read, and keeps trying.")
    finally:
        federation.start_coordinator()
    until(browser, lambda d: not banner(d), "the banner to go", seconds=30)
    assert browser.find_elements(By.ID, "who")  # still logged in
    sites_online(federation)  # for the tests after this one


def test_a_long_user_name_with_html_in_it_is_shown_as_text_and_never_widens_the_page(
        federation: Federation, browser: WebDriver, mosquitto: Mosquitto,
        tmp_path: Path) -> None:
    name = "<img src=x onerror=window.injected=1>" + "n" * 120
    with federation.api() as api:
        made = api.post("/v1/users", json={"name": name, "role": "submitter"})
    assert made.status_code == 200, made.text
    token = made.json()["token"]
    path = job_file(mosquitto, tmp_path, "refused", rounds=80)  # site-b refuses it at once
    with federation.api(token) as api:
        job_id = api.post("/v1/jobs", json={"job_yaml": path.read_text()}).json()["id"]
    wait_for(lambda: federation.job(job_id)["state"] == "failed", WAIT_S, "the refusal")
    log_in(browser, federation, token, user=name.split()[0])
    try:
        for width, height in (DESKTOP, PHONE):
            browser.set_window_size(width, height)
            for page in ("/console/jobs", f"/console/jobs/{job_id}"):
                browser.get(federation.url + page)
                assert text_of("#who")(browser).replace("\n", "") == f"{name} (submitter)"
                if page != "/console/jobs":  # its owner, and the event naming them
                    until(browser, text_of("#events"), "the job's events")
                    assert f"submitted by {name}" in text_of(".summary")(browser)
                overflow = browser.execute_script(
                    "return document.documentElement.scrollWidth - window.innerWidth")
                assert overflow <= 0, f"{page} scrolls sideways at {width}px"
        assert browser.execute_script("return window.injected") is None
    finally:
        browser.set_window_size(*DESKTOP)


def test_a_job_file_uploaded_again_after_an_edit_is_read_again(
        federation: Federation, browser: WebDriver, mosquitto: Mosquitto,
        tmp_path: Path) -> None:
    path = job_file(mosquitto, tmp_path, "edited", rounds=80)
    log_in(browser, federation, federation.admin_token, "/console/submit")
    upload = browser.find_element(By.ID, "job-upload")
    upload.send_keys(str(path))
    until(browser, lambda d: "rounds: 80" in str(d.find_element(By.ID, "job-yaml")
                                                  .get_attribute("value")), "the upload")
    path.write_text(path.read_text().replace("rounds: 80", "rounds: 8"))  # fixed in an editor
    upload.send_keys(str(path))  # the same file chosen again
    until(browser, lambda d: "rounds: 8\n" in str(d.find_element(By.ID, "job-yaml")
                                                   .get_attribute("value")),
          "the edited file in the form", seconds=30)


def test_the_sites_verdicts_are_withdrawn_when_the_job_file_changes_after_the_check(
        federation: Federation, browser: WebDriver, mosquitto: Mosquitto,
        tmp_path: Path) -> None:
    sites_online(federation)
    log_in(browser, federation, federation.admin_token, "/console/submit")
    paste_job(browser, job_file(mosquitto, tmp_path, "verdicts", rounds=8))
    browser.find_element(By.ID, "check").click()
    until(browser, text_of('#verdicts li[data-site="site-b"]'), "site-b's verdict")
    browser.find_element(By.ID, "job-yaml").send_keys("\npipeline: [{type: clip}]")
    until(browser, lambda d: not d.find_element(By.ID, "verdicts-section").is_displayed(),
          "the verdicts on the old text to go", seconds=30)
    assert text_of("#check-status")(browser) == ("The job file changed since the check; Check "
                                                 "again for the sites' verdicts.")


def test_a_page_says_while_the_coordinator_answers_only_errors_and_goes_on_when_it_recovers(
        federation: Federation, browser: WebDriver, postgres: Postgres) -> None:
    log_in(browser, federation, federation.admin_token)
    banner = text_of("#connection")
    url = yaml.safe_load((federation.root / "coordinator.yaml").read_text())["database"]
    schema = parse_qs(urlsplit(url).query)["options"][0].removeprefix("-csearch_path=")
    with psycopg.connect(postgres.url(), autocommit=True) as db:
        # the coordinator's tables are gone from under it: every page and API call fails
        db.execute(f"ALTER SCHEMA {schema} RENAME TO {schema}_away")
        try:
            shown = until(browser, banner, "the page to say the coordinator fails", seconds=30)
        finally:
            db.execute(f"ALTER SCHEMA {schema}_away RENAME TO {schema}")
    assert shown.startswith("The coordinator answers only with errors (its log says why) "
                            "since ")
    assert shown.endswith(": this page shows what it last read, and keeps trying.")
    until(browser, lambda d: not banner(d), "the banner to go", seconds=30)
    sites_online(federation)  # for the tests after this one
