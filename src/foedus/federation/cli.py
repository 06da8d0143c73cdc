"""The federation's commands, added to ``foedus`` by :func:`add_commands`:

* services: ``foedus coordinator --config coordinator.yaml``, ``foedus site --config site.yaml``;
* a whole federation on this machine: ``federation demo`` (:mod:`foedus.federation.demo`);
* users (HTTPS to the coordinator, with a bearer token): ``submit``, ``jobs``, ``logs``,
  ``cancel``, ``sites``, ``users add``, ``result JOB --out FILE`` (the final model),
  ``ledger SITE`` (a site's privacy budgets, admin);
* at a site, reading its own files: ``site-audit --config site.yaml`` (its audit log).

Where the coordinator is and who the user is come from options or the environment
(``FOEDUS_COORDINATOR``, ``FOEDUS_TOKEN`` or ``FOEDUS_TOKEN_FILE``, ``FOEDUS_CA``), so scripts
set them once. A refusal by the coordinator is printed as one line with its reason and exit
status 2, like every user mistake in foedus.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from foedus.core.errors import ConfigError, require
from foedus.plugins import load_plugins

__all__ = ["COMMANDS", "add_commands", "run_command"]

COMMANDS = ("coordinator", "site", "submit", "jobs", "logs", "cancel", "sites", "users",
            "federation",
            "result", "site-audit", "ledger")


def _user_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--coordinator", default=os.environ.get("FOEDUS_COORDINATOR"),
                        help="the coordinator's URL (default: $FOEDUS_COORDINATOR)")
    parser.add_argument("--token-file", default=os.environ.get("FOEDUS_TOKEN_FILE"),
                        help="a file holding your token (default: $FOEDUS_TOKEN_FILE, or the "
                             "token itself in $FOEDUS_TOKEN)")
    parser.add_argument("--ca", default=os.environ.get("FOEDUS_CA"),
                        help="the federation's CA certificate (default: $FOEDUS_CA)")


#: what every user command's --help ends with
USER_EPILOG = ("Exit status 0 on success; 2 with one line naming the reason when the "
               "coordinator refuses or a setting is wrong. Docs: docs/federation.md.")


def add_commands(sub: Any) -> None:
    """Add the federation's subcommands to ``foedus``'s subparsers. Each says in its --help
    what it does and where its settings are, not only its options' names."""
    coordinator = sub.add_parser(
        "coordinator", help="run the federation's coordinator service",
        description="Run the coordinator service (its HTTPS API, the web console at "
                    "/console/, the jobs' server processes) until SIGTERM or Ctrl-C. Jobs "
                    "survive a restart. Keys of coordinator.yaml: docs/federation.md.")
    coordinator.add_argument("--config", required=True, help="coordinator.yaml")
    site = sub.add_parser(
        "site", help="run a site agent (runs the jobs' client actors here)",
        description="Run a site agent until SIGTERM or Ctrl-C: it connects out to the "
                    "coordinator with its certificate (its name is the certificate's CN), "
                    "checks each job offered against its policy, catalog and privacy budget, "
                    "and runs the jobs it accepts. A site started again rejoins its jobs. "
                    "Keys of site.yaml: docs/federation.md.")
    site.add_argument("--config", required=True, help="site.yaml")

    submit = sub.add_parser(
        "submit", help="submit a job file to the coordinator", epilog=USER_EPILOG,
        description="Check a job file at the coordinator and queue it; prints the job's id. "
                    "Exit status 0 means queued: the sites answer after, and a site's refusal "
                    "shows in `foedus jobs` and `foedus logs JOB`; with --wait it follows the "
                    "job and its exit status says how the job ended.")
    submit.add_argument("job", help="path to a YAML job file (data.dataset: a catalog entry)")
    submit.add_argument("--sites", help="comma-separated sites, client-000 first (default: "
                                        "the online sites, by name)")
    submit.add_argument("--dry-run", action="store_true",
                        help="check only: every check of a submit, and which sites would "
                             "accept the job and why not; nothing is queued (exit status 1 "
                             "when a site it would go to is expected to refuse)")
    submit.add_argument("--wait", action="store_true",
                        help="follow the job to its end (its events and rounds on stderr); "
                             "exit status 0 when it finished, 1 when it failed or was "
                             "cancelled")
    jobs = sub.add_parser("jobs", help="list the coordinator's jobs", epilog=USER_EPILOG,
                          description="Every job: its state (queued, running, finished, "
                                      "failed, cancelled), owner, sites, rounds done, final "
                                      "accuracy and the reason it failed.")
    jobs.add_argument("--json", action="store_true", help="print JSON instead of a table")
    logs = sub.add_parser("logs", help="a job's per-round records and events", epilog=USER_EPILOG,
                          description="A job's events (submitted, each site's answer and "
                                      "actor state, sites offline, the end), then one line "
                                      "per round.")
    logs.add_argument("job_id", help="the id `foedus submit` printed")
    logs.add_argument("--json", action="store_true", help="print JSON instead of lines")
    cancel = sub.add_parser("cancel", help="cancel a job: every actor of it is stopped",
                            epilog=USER_EPILOG,
                            description="Cancel a queued or running job (yours, or anyone's "
                                        "as an admin): its server and every site's actor are "
                                        "stopped. Prints the new state.")
    cancel.add_argument("job_id", help="the id `foedus submit` printed")
    sites = sub.add_parser("sites", help="list the federation's sites", epilog=USER_EPILOG,
                           description="Every site that ever connected: online or offline "
                                       "(from its heartbeats), version, catalog entries.")
    sites.add_argument("--json", action="store_true",
                       help="print JSON instead of a table (with each site's policy)")
    users = sub.add_parser("users", help="manage users (admin): `users add NAME --role ROLE`",
                           epilog=USER_EPILOG,
                           description="Create a user (admins only) and print their token, "
                                       "once: the coordinator keeps only its hash. viewer: "
                                       "lists jobs, sites, logs; submitter: also submits and "
                                       "cancels its own jobs; admin: also cancels any job and "
                                       "creates users.")
    users.add_argument("action", choices=["add"], help="add: create NAME")
    users.add_argument("name", help="the user's name")
    users.add_argument("--role", required=True, choices=["viewer", "submitter", "admin"],
                       help="what the user may do")
    users.add_argument("--replace", action="store_true",
                       help="NAME exists: give them a new token (the old one stops working) "
                            "and this role")
    result = sub.add_parser("result", help="download a finished job's final model",
                            epilog=USER_EPILOG,
                            description="Download a finished job's final model; the file is "
                                        "written only once all of it arrived.")
    result.add_argument("job_id", help="the id `foedus submit` printed")
    result.add_argument("--out", required=True, help="the model file to write (the foedus "
                                                     "model-file format)")
    ledger = sub.add_parser("ledger", help="a site's privacy budgets: spent and reserved "
                                           "(admin)", epilog=USER_EPILOG,
                            description="What the site's privacy-budget ledger last reported "
                                        "to the coordinator: per budgeted catalog entry, the "
                                        "lifetime budget, what ended jobs spent and that with "
                                        "running jobs' reservations (epsilons composed by "
                                        "RDP at the budget's delta); then one line per job. "
                                        "Admins only.")
    ledger.add_argument("site", help="the site's name")
    ledger.add_argument("--json", action="store_true", help="print JSON instead of tables")
    audit = sub.add_parser("site-audit", help="print this site's audit log (every job offered)",
                           description="At a site, from its own files: every job offered "
                                       "here, the decision and its reason, the privacy spent "
                                       "and how the actor ended. Exit status 2 if the log's "
                                       "hash chain is broken (it names the first bad entry).")
    audit.add_argument("--config", required=True, help="site.yaml")
    audit.add_argument("--json", action="store_true", help="print JSON instead of a table")
    for parser in (submit, jobs, logs, cancel, sites, users, result, ledger):
        _user_options(parser)
    federation = sub.add_parser("federation", help="a whole federation on this machine",
                                description="A whole federation on this machine, for a "
                                            "first look: `foedus federation demo`.")
    demo = federation.add_subparsers(dest="federation_command", required=True).add_parser(
        "demo", help="start a coordinator and sites on loopback, run a job, stop them all",
        description="Start a coordinator and site agents on loopback (a fresh CA, configs and "
                    "databases in a temporary directory), submit a job on the bundled digits "
                    "data, print its events and rounds, and stop everything. Exit status 0 "
                    "when the job finished with a model.")
    demo.add_argument("--rounds", type=int, default=3, help="the job's rounds (default 3)")
    demo.add_argument("--sites", type=int, default=3, help="site agents (default 3)")
    demo.add_argument("--keep", metavar="DIR", help="leave the federation's files (configs, "
                                                    "certificates, database, logs) in DIR")


class Unreachable(ConfigError):
    """The coordinator did not answer (down, restarting, the network): one line for a single
    command; ``submit --wait`` retries it, since the job goes on."""


class Api:
    """A user's HTTPS client to the coordinator. Every mistake in where it is and who the
    user is ends in one line naming the option (or variable) to fix, never a traceback."""

    def __init__(self, args: argparse.Namespace) -> None:
        if not args.coordinator:
            raise ConfigError("--coordinator: required (or set FOEDUS_COORDINATOR)")
        if not args.coordinator.startswith("https://"):
            raise ConfigError(f"--coordinator: expected an https:// URL (the coordinator "
                              f"serves HTTPS only), got {args.coordinator!r}")
        token = os.environ.get("FOEDUS_TOKEN")
        #: where the token came from, named when the coordinator does not know it
        self.token_source = "$FOEDUS_TOKEN"
        if args.token_file:
            try:
                token = Path(args.token_file).expanduser().read_text().strip()
            except OSError as exc:
                raise ConfigError(f"--token-file: cannot read {args.token_file!r}: "
                                  f"{exc.strerror}") from exc
            self.token_source = f"the token in {args.token_file!r} (--token-file or " \
                                "$FOEDUS_TOKEN_FILE)"
        if not token:
            raise ConfigError("--token-file: required (or set FOEDUS_TOKEN_FILE or FOEDUS_TOKEN)")
        httpx = require("httpx", "federation")
        self.httpx = httpx
        self.ca = args.ca
        verify: Any = True
        if args.ca:
            import ssl

            try:
                verify = ssl.create_default_context(cafile=str(Path(args.ca).expanduser()))
            except (OSError, ssl.SSLError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                raise ConfigError(f"--ca: cannot load {args.ca!r} as a CA certificate: "
                                  f"{reason}") from exc
        self.client = httpx.Client(base_url=args.coordinator.rstrip("/"), verify=verify,
                                   headers={"Authorization": f"Bearer {token}"}, timeout=30.0)

    def _unreachable(self, exc: Exception) -> ConfigError:
        text = f"cannot reach the coordinator at {self.client.base_url}: {exc}"
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return ConfigError(
                text + (f" (its certificate is not signed by the CA given: "
                        f"{self.ca!r}; pass the federation's CA with --ca or $FOEDUS_CA)"
                        if self.ca else " (pass the federation's CA with --ca or $FOEDUS_CA)"))
        return Unreachable(text)

    def _refused(self, status: int, reason: Any) -> ConfigError:
        if status == 401 and reason == "unknown token":
            reason = f"unknown token: the coordinator has no user with {self.token_source}"
        return ConfigError(f"refused ({status}): {reason}")

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = self.client.request(method, path, json=body)
        except self.httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        try:
            data = response.json()
        except ValueError as exc:
            raise ConfigError(f"the coordinator answered {response.status_code} without "
                              "JSON") from exc
        if response.status_code != 200:
            raise self._refused(response.status_code,
                                data.get("error", data) if isinstance(data, dict) else data)
        return data

    def download(self, path: str) -> bytes:
        """The bytes a GET returns (a refusal is JSON with its reason, as for :meth:`call`)."""
        try:
            response = self.client.get(path)
        except self.httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code != 200:
            try:
                reason = response.json().get("error")
            except ValueError:
                reason = None
            raise self._refused(response.status_code, reason or response.text)
        content: bytes = response.content
        return content


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def _accuracy(job: dict[str, Any]) -> str:
    value = (job.get("result") or {}).get("final_accuracy")
    return f"{value:.4f}" if isinstance(value, float) else "-"


def _check_yaml(path: str, text: str) -> None:
    """A job file that is not YAML, or not a mapping, is refused here, naming the file and
    the line: the coordinator's refusal can only quote the parser on a text with no name."""
    import yaml

    try:
        job = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).replace("\n", " ")
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from exc
    if not isinstance(job, dict):
        raise ConfigError(f"{path}: expected a job file (a mapping of settings such as "
                          f"rounds, data, model), got {type(job).__name__}")


def _warn(answer: dict[str, Any]) -> None:
    """Print what the coordinator warned of on accepting a job file (a literal credential in
    it, docs/security.md): the job is not refused, so the warning must not be lost."""
    for warning in answer.get("warnings") or []:
        print(f"foedus: warning: {warning}", file=sys.stderr)


def _dry_run(found: dict[str, Any], sites: list[str] | None) -> int:
    """Print a dry run's verdict per site; 0 when every site the job would be offered to
    (``--sites``, else every online one) is expected to accept it, 1 otherwise."""
    rows = [["SITE", "STATE", "ACCEPTS", "WHY"]]
    for v in found["sites"]:
        accepts = {True: "yes", False: "no", None: "unknown"}[v["accepts"]]
        rows.append([v["site"], "online" if v["online"] else "offline", accepts, v["reason"]])
    print(_table(rows))
    chosen = [v for v in found["sites"]
              if (v["site"] in sites if sites else v["online"])]
    ok = bool(chosen) and all(v["accepts"] is not False for v in chosen)
    print(f"foedus: {found['job_id']}: every check of a submit passed; "
          + ("the sites it would go to are expected to accept it" if ok
             else "a site it would go to is expected to refuse it")
          + " (a forecast from what the sites last reported; nothing was queued)",
          file=sys.stderr)
    return 0 if ok else 1


#: seconds between two looks at a job `submit --wait` follows
WAIT_POLL_S = 1.0
#: how long `submit --wait` waits for a coordinator that stopped answering (a restart takes
#: seconds) before it gives up with exit status 2
WAIT_UNREACHABLE_S = 120.0
TERMINAL = ("finished", "failed", "cancelled")


def _wait(api: Api, job_id: str) -> int:
    """Follow a submitted job to its end, printing its events and rounds on stderr as they
    come; the exit status says how it ended (0 finished, 1 failed or cancelled), so a script
    can run ``foedus submit --wait JOB && ...``. Ctrl-C stops following, not the job."""
    events = rounds = 0
    lost: float | None = None  # since when the coordinator has not answered
    try:
        while True:
            try:
                job = api.call("GET", f"/v1/jobs/{job_id}")
                new_rounds: list[dict[str, Any]] = []
                if job["rounds_done"] > rounds:
                    new_rounds = api.call("GET",
                                          f"/v1/jobs/{job_id}/rounds")["rounds"][rounds:]
            except Unreachable as exc:  # a restarting coordinator loses no job: wait for it
                if lost is None:
                    lost = time.monotonic()
                    print(f"foedus: {exc}; retrying for up to {WAIT_UNREACHABLE_S:g}s (the job "
                          "goes on)", file=sys.stderr, flush=True)
                elif time.monotonic() - lost > WAIT_UNREACHABLE_S:
                    raise
                time.sleep(WAIT_POLL_S)  # until the coordinator answers again, bounded above
                continue
            lost = None
            rounds += len(new_rounds)
            seen = job["events"][events:]
            events = len(job["events"])
            lines = [f"{time.strftime('%H:%M:%S', time.localtime(e['at']))}  {e['text']}"
                     for e in seen]
            # rounds carry no time: they go after this look's events, except the job's end
            # ("finished", "failed: ...") and what followed it (the actors' exits)
            ended = job["state"] in TERMINAL
            end = next((i for i, e in enumerate(seen)
                        if str(e["text"]).split(":")[0] in TERMINAL), len(lines))
            lines[end:end] = map(_round_line, new_rounds)
            for line in lines:
                print(line, file=sys.stderr, flush=True)
            if ended:
                break
            time.sleep(WAIT_POLL_S)  # the API has no push; one look a second is cheap for it
    except KeyboardInterrupt:
        print(f"foedus: stopped following {job_id}; the job goes on (foedus logs {job_id}, "
              f"foedus cancel {job_id})", file=sys.stderr)
        return 130
    print(f"foedus: job {job_id} {job['state']}"
          + (f": {job['reason']}" if job["reason"] else "")
          + (f" (final accuracy {_accuracy(job)})" if _accuracy(job) != "-" else ""),
          file=sys.stderr)
    return 0 if job["state"] == "finished" else 1


def _round_line(r: dict[str, Any]) -> str:
    metrics = "  ".join(f"{k} {v:.4f}" for k, v in sorted(r.get("metrics", {}).items()))
    return f"round {r['round']:>3}  {r.get('status', '')}  updates {r.get('accepted')}  {metrics}"


def run_command(args: argparse.Namespace) -> int:
    """Run one federation command; user mistakes and refusals raise ``FoedusError`` (the
    caller prints them in one line, exit status 2)."""
    if args.command in ("coordinator", "site", "federation"):
        load_plugins()  # FOEDUS_PLUGINS too: the services check and run job files
    if args.command == "coordinator":
        from foedus.federation.coordinator import CoordinatorConfig, serve

        config = CoordinatorConfig.load(args.config)
        asyncio.run(serve(config, ready=lambda url: print(
            f"foedus coordinator: listening on {url}", file=sys.stderr, flush=True)))
        return 0
    if args.command == "site":
        from foedus.federation.site import SiteConfig, run_site

        return run_site(SiteConfig.load(args.config))
    if args.command == "site-audit":
        from foedus.federation.audit import main_site_audit

        return main_site_audit(args.config, args.json)
    if args.command == "federation":
        from foedus.federation.demo import run_demo

        return run_demo(args.rounds, args.sites, keep=args.keep)
    api = Api(args)
    if args.command == "submit":
        try:
            text = Path(args.job).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read job file {args.job!r}: {exc.strerror}") from exc
        _check_yaml(args.job, text)
        body: dict[str, Any] = {"job_yaml": text}
        if args.sites:
            body["sites"] = [s.strip() for s in args.sites.split(",") if s.strip()]
        if args.dry_run:
            checked = api.call("POST", "/v1/jobs?dry_run=1", body)
            _warn(checked)
            return _dry_run(checked, body.get("sites"))
        submitted = api.call("POST", "/v1/jobs", body)
        _warn(submitted)
        job_id = submitted["id"]
        print(job_id, flush=True)
        return _wait(api, job_id) if args.wait else 0
    if args.command == "jobs":
        jobs = api.call("GET", "/v1/jobs")["jobs"]
        if args.json:
            print(json.dumps(jobs, indent=2))
            return 0
        rows = [["JOB", "STATE", "OWNER", "SITES", "ROUNDS", "ACCURACY", "REASON"]]
        rows += [[j["id"], j["state"], j["owner"], ",".join(j["sites"]), str(j["rounds_done"]),
                  _accuracy(j), j["reason"] or ""] for j in jobs]
        print(_table(rows))
        return 0
    if args.command == "logs":
        job = api.call("GET", f"/v1/jobs/{args.job_id}")
        rounds = api.call("GET", f"/v1/jobs/{args.job_id}/rounds")["rounds"]
        if args.json:
            print(json.dumps({"job": job, "rounds": rounds}, indent=2))
            return 0
        for event in job["events"]:
            stamp = time.strftime("%H:%M:%S", time.localtime(event["at"]))
            print(f"{stamp}  {event['text']}")
        for r in rounds:
            print(_round_line(r))
        return 0
    if args.command == "cancel":
        print(api.call("POST", f"/v1/jobs/{args.job_id}/cancel")["state"])
        return 0
    if args.command == "sites":
        sites = api.call("GET", "/v1/sites")["sites"]
        if args.json:
            print(json.dumps(sites, indent=2))
            return 0
        rows = [["SITE", "STATE", "VERSION", "CATALOG"]]
        rows += [[s["name"], "online" if s["online"] else "offline", s["version"],
                  ",".join(s["offers"].get("catalog", []))] for s in sites]
        print(_table(rows))
        return 0
    if args.command == "ledger":
        found = api.call("GET", f"/v1/sites/{args.site}/ledger")
        if args.json:
            print(json.dumps(found, indent=2))
            return 0
        # no "left" column: epsilons compose by RDP, not by subtraction; a refusal gives
        # the composed figures of a job that would not fit
        rows = [["DATASET", "BUDGET", "SPENT", "WITH RESERVED"]]
        jobs = [["DATASET", "JOB", "STATE", "ROUNDS", "EPSILON", "NOTE"]]
        for name, entry in sorted(found["datasets"].items()):
            budget = entry["budget"]
            rows.append([name, f"epsilon {budget['epsilon']:g} at delta {budget['delta']:g}",
                         f"{entry['spent']:.3f}", f"{entry['reserved_and_spent']:.3f}"])
            jobs += [[name, j["job_id"], j["state"], str(j["rounds"]),
                      f"{j['epsilon']:.3f}", j.get("note") or ""] for j in entry["jobs"]]
        print(_table(rows))
        if len(jobs) > 1:
            print()
            print(_table(jobs))
        return 0
    if args.command == "result":
        model = api.download(f"/v1/jobs/{args.job_id}/model")
        out = Path(args.out)
        tmp = out.with_name(out.name + ".part")
        try:
            tmp.write_bytes(model)
            tmp.replace(out)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ConfigError(f"--out: cannot write {args.out!r}: {exc.strerror}") from exc
        print(f"{out}: {len(model)} bytes")
        return 0
    if args.command == "users":
        made = api.call("POST", "/v1/users", {"name": args.name, "role": args.role,
                                              "replace": args.replace})
        if made.get("replaced"):
            print(f"foedus: {args.name}'s earlier token no longer works (was a "
                  f"{made['replaced']['role']}, now a {args.role})", file=sys.stderr)
        print(made["token"])
        return 0
    raise ConfigError(f"unknown federation command {args.command!r}")
