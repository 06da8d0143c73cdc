"""A site's local policy and data catalog, as pure functions: every rule refuses with its
reason, and a job's data is filled from the catalog, never from the job."""

from __future__ import annotations

import pytest

from foedus.core.errors import ConfigError
from foedus.federation.policy import Policy, check_policy, fill_data, parse_catalog
from foedus.federation.store import Store

JOB = {"job_id": "j", "rounds": 5, "model": {"type": "sklearn-sgd"}, "aggregator": "fedavg",
       "transport": {"type": "mqtt"}, "pipeline": [{"type": "clip", "params": {}}],
       "data": {"dataset": "hospital"}}


def test_an_empty_policy_accepts_anything() -> None:
    assert check_policy(JOB, Policy(), running=10) is None


@pytest.mark.parametrize(("raw", "reason"), [
    ({"models": ["torch-mlp"]}, "model type 'sklearn-sgd' is not accepted here"),
    ({"aggregators": ["median"]}, "aggregator 'fedavg' is not accepted here"),
    ({"transports": ["kafka"]}, "transport 'mqtt' is not accepted here"),
    ({"stages": []}, "pipeline stage 'clip' is not accepted here"),
    ({"require_stages": ["gaussian"]}, "requires pipeline stage 'gaussian'"),
    ({"max_rounds": 4}, "5 rounds is more than this site allows (4)"),
    ({"max_jobs": 2}, "already runs 2 jobs"),
])
def test_each_rule_refuses_with_its_reason(raw: dict[str, object], reason: str) -> None:
    refused = check_policy(JOB, Policy.from_dict(raw), running=2)
    assert refused is not None and reason in refused


def test_a_policy_mistake_is_one_line_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"policy.max_round: unknown key"):
        Policy.from_dict({"max_round": 3})
    with pytest.raises(ConfigError, match=r"policy.models: expected a list"):
        Policy.from_dict({"models": "sklearn-sgd"})


def test_a_catalog_entry_naming_no_registered_loader_is_refused_at_load() -> None:
    # a misspelt loader used to start the service and fail every job naming the entry
    with pytest.raises(ConfigError, match=r"^catalog.digits.dataset: unknown dataset 'digitz'; "
                                          r"allowed: .*\bdigits\b"):
        parse_catalog({"digits": {"dataset": "digitz"}})


def test_the_catalog_fills_the_data_and_the_job_names_only_an_entry() -> None:
    catalog = parse_catalog({"hospital": {"dataset": "csv", "options": {"path": "/srv/a.csv"}}})
    filled = fill_data(JOB, catalog)
    assert filled["data"] == {"dataset": "csv", "options": {"path": "/srv/a.csv"}}
    assert JOB["data"] == {"dataset": "hospital"}  # the offered job is not changed
    with pytest.raises(ConfigError, match="no data catalog entry 'other'"):
        fill_data({**JOB, "data": {"dataset": "other"}}, catalog)


def test_tokens_are_stored_hashed_and_the_schema_migrates_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = Store(tmp_path / "db")
    store.add_user("ann", "viewer", "secret-token")
    assert store.user_by_token("secret-token") == ("ann", "viewer")
    assert b"secret-token" not in (tmp_path / "db").read_bytes()
    store.close()
    again = Store(tmp_path / "db")  # reopening applies no migration twice
    assert again.user_by_token("secret-token") == ("ann", "viewer")
    again.close()
