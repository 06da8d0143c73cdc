"""The coordinator's API, described as OpenAPI 3.1 (served at ``/openapi.json``).

Kept beside the handlers and checked by a test against the routes the app really has, so the
description cannot drift from the service.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ROUTES", "openapi"]

_ERROR = {"description": "refused; `error` names the reason",
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_JSON = {"content": {"application/json": {"schema": {"type": "object"}}}}

#: (method, path, who may call it, summary)
ROUTES: list[tuple[str, str, str, str]] = [
    ("GET", "/openapi.json", "anyone", "this description"),
    ("GET", "/v1/health", "anyone", "the service is up"),
    ("POST", "/v1/users", "admin", "create a user, or re-key one with replace: true; "
                                    "returns its token once"),
    ("GET", "/v1/sites", "viewer", "registered sites: online, version, what each offers"),
    ("POST", "/v1/jobs", "submitter", "submit a job file (`job_yaml`, optional `sites`); with "
     "`?dry_run=1` only check it (nothing is queued) and say which sites would accept it; "
     "`warnings` when the file holds a literal credential"),
    ("GET", "/v1/jobs", "viewer", "every job with its state and reason; its job file with "
     "each credential shown as `***`, and `job_sha256` of the exact file"),
    ("GET", "/v1/jobs/{job_id}", "viewer", "one job: state, assignments, events, result; "
     "credentials shown as `***`"),
    ("GET", "/v1/jobs/{job_id}/rounds", "viewer", "the job's per-round records"),
    ("GET", "/v1/jobs/{job_id}/model", "viewer",
     "a finished job's final model (application/octet-stream, the foedus model file)"),
    ("GET", "/v1/sites/{name}/audit", "admin",
     "the site's audit log as last reported: entries, one row per job, hash chain state"),
    ("GET", "/v1/sites/{name}/ledger", "admin",
     "the site's privacy-budget ledger as last reported: budget, spent, reserved, per job"),
    ("POST", "/v1/jobs/{job_id}/cancel", "submitter",
     "cancel a job (its owner or an admin); every actor of it is stopped"),
    ("POST", "/v1/site/heartbeat", "site (client certificate)",
     "a site's heartbeat and its actors' states; returns its assignments"),
    ("POST", "/v1/site/answer", "site (client certificate)",
     "a site accepts or refuses (with its reason) an assignment offered to it"),
]


def openapi(version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, path, who, summary in ROUTES:
        op: dict[str, Any] = {"summary": summary, "description": f"Who: {who}.",
                              "responses": {"200": {"description": "ok", **_JSON},
                                            "4XX": _ERROR}}
        if who.startswith("site"):
            op["security"] = [{"clientCertificate": []}]
        elif who != "anyone":
            op["security"] = [{"bearer": []}]
        for name in ("job_id", "name"):
            if "{" + name + "}" in path:
                op["parameters"] = [{"name": name, "in": "path", "required": True,
                                     "schema": {"type": "string"}}]
        if method == "POST":
            op["requestBody"] = {"required": path != "/v1/jobs/{job_id}/cancel", **_JSON}
        paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "foedus coordinator", "version": version,
                 "description": "Sites, users and jobs of a foedus federation "
                                "(docs/federation.md)."},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "clientCertificate": {"type": "mutualTLS",
                                      "description": "the site's name is its certificate's CN"},
            },
            "schemas": {"Error": {"type": "object", "required": ["error"],
                                  "properties": {"error": {"type": "string"}}}},
        },
    }
