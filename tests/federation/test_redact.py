"""What viewers see of a job file: every credential replaced by the marker, paths and
settings left as they are, the exact text untouched when it holds no secret."""

from __future__ import annotations

import hashlib

import pytest
import yaml

from foedus.federation.redact import MARK, is_secret_key, redact, scrub


@pytest.mark.parametrize("name", ["password", "sasl_password", "session_secret", "secret_key",
                                  "access_key", "api_key", "api-token", "client_secret",
                                  "credentials", "PASSWORD", "private_key"])
def test_credential_names_are_secret(name: str) -> None:
    assert is_secret_key(name)


@pytest.mark.parametrize("name", ["key", "cert", "ca", "username", "sasl_username", "host",
                                  "tracking_uri", "keep", "require_client_cert", 3])
def test_paths_and_settings_are_not_secret(name: object) -> None:
    # a bare `key` is TLS's private-key path: where the file is, not what is in it
    assert not is_secret_key(name)


def test_every_transport_and_mlops_credential_is_hidden_and_the_rest_kept() -> None:
    job = {
        "job_id": "j", "rounds": 2,
        "transport": {"type": "mqtt", "params": {
            "host": "broker", "username": "fl", "password": "hunter2-mqtt",
            "session_secret": "s" * 20, "tls": {"ca": "/ca.pem", "key": "/k.pem"}}},
        "mlops": {"s3": {"url": "s3://b/p", "access_key": "AKIA1234", "secret_key": "wJal+/xyz"},
                  "mlflow": {"tracking_uri": "https://bob:pa%40ss@mlflow:5000/x"}},
        "pipeline": [{"type": "t", "params": {"credentials": {"user": "u", "pass": "p4ss"}}}],
    }
    shown = redact(yaml.safe_dump(job, sort_keys=False))
    seen = yaml.safe_load(shown.text)
    params = seen["transport"]["params"]
    assert (params["password"], params["session_secret"]) == (MARK, MARK)
    assert params["username"] == "fl" and params["tls"] == {"ca": "/ca.pem", "key": "/k.pem"}
    assert seen["mlops"]["s3"] == {"url": "s3://b/p", "access_key": MARK, "secret_key": MARK}
    assert seen["mlops"]["mlflow"]["tracking_uri"] == f"https://bob:{MARK}@mlflow:5000/x"
    assert seen["pipeline"][0]["params"]["credentials"] == MARK
    for secret in ("hunter2-mqtt", "AKIA1234", "wJal+/xyz", "pa%40ss", "pa@ss", "p4ss"):
        assert secret not in shown.text
    assert shown.places == ["mlops.mlflow.tracking_uri (password in the URL)",
                            "mlops.s3.access_key", "mlops.s3.secret_key",
                            "pipeline[0].params.credentials", "transport.params.password",
                            "transport.params.session_secret"]


def test_a_kafka_bootstrap_url_keeps_its_settings_but_not_its_password() -> None:
    text = yaml.safe_dump({"transport": {"type": "kafka", "params": {
        "bootstrap": "kafkas://b1:9093,b2:9093?sasl_mechanism=PLAIN&sasl_username=fl"
                     "&sasl_password=k%26pw"}}})
    shown = yaml.safe_load(redact(text).text)["transport"]["params"]["bootstrap"]
    assert shown == (f"kafkas://b1:9093,b2:9093?sasl_mechanism=PLAIN&sasl_username=fl"
                     f"&sasl_password={MARK}")


def test_a_file_without_secrets_is_shown_exactly_so_its_hash_is_the_sites() -> None:
    text = "rounds: 3\nmodel: {type: sklearn-sgd}  # a comment\ntransport: {params: {key: /k}}\n"
    shown = redact(text)
    assert shown.text == text and shown.secrets == ()
    assert shown.sha256 == hashlib.sha256(text.encode()).hexdigest()


def test_an_unset_secret_shows_that_it_is_unset() -> None:
    seen = yaml.safe_load(redact("password: null\ntoken: ''\nrequire_token: true\n").text)
    assert seen == {"password": None, "token": "", "require_token": True}


def test_scrub_hides_secrets_quoted_in_free_text() -> None:
    secrets = redact("password: hunter2-mqtt\ntoken: ab\n").values
    event = {"text": "bootstrap URL 'x?sasl_password=hunter2-mqtt' is bad; ab stays",
             "at": 1.0}
    assert scrub(event, secrets) == {"text": f"bootstrap URL 'x?sasl_password={MARK}' is bad; "
                                             "ab stays", "at": 1.0}
