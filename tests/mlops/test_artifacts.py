"""Checkpoints and models in an S3 bucket, against a real S3 server (moto) on loopback."""

from __future__ import annotations

import logging
import socket
import time
import uuid

import numpy as np
import pytest

from foedus.core.errors import ConfigError, TransportError
from foedus.mlops.artifacts import S3Checkpointer, S3Store, s3_checkpointer
from foedus.roles.checkpoint import CheckpointError
from tests.mlops.conftest import build_job, run_graphs_of

pytestmark = pytest.mark.integration

BUCKET = "foedus-tests"


@pytest.fixture
def store(s3_endpoint: str) -> S3Store:
    return S3Store(BUCKET, prefix=f"run-{uuid.uuid4().hex[:8]}", endpoint_url=s3_endpoint,
                   access_key="test", secret_key="test", create_bucket=True)


def _save(ckpt: S3Checkpointer, rnd: int) -> dict[str, np.ndarray]:
    params = {"w": np.full((2, 3), float(rnd)), "b": np.arange(3.0) * rnd}
    ckpt.save(rnd, params, {"momentum": np.ones(3) * rnd, "steps": rnd}, [{"round": rnd}])
    return params


def test_a_bucket_without_checkpoints_loads_nothing(store: S3Store) -> None:
    assert S3Checkpointer(store, "empty-job").load() is None


def test_load_returns_the_newest_round_with_params_and_aggregator_state(store: S3Store) -> None:
    ckpt = S3Checkpointer(store, "job-a", keep=2)
    for rnd in (1, 2, 3):
        last = _save(ckpt, rnd)
    fresh = S3Checkpointer(store, "job-a")  # another process: nothing local
    loaded = fresh.load()
    assert loaded is not None and loaded.round == 3
    np.testing.assert_array_equal(loaded.params["w"], last["w"])
    np.testing.assert_array_equal(loaded.aggregator_state["momentum"], np.ones(3) * 3)
    assert loaded.aggregator_state["steps"] == 3
    assert loaded.history == [{"round": 3}]
    kept = store.list(ckpt.checkpoint_prefix)
    assert sorted(k.rsplit("/", 1)[1] for k in kept) == ["round-00000002.ckpt",
                                                         "round-00000003.ckpt"]


def test_an_unreadable_newest_checkpoint_falls_back_to_the_previous_one(store: S3Store) -> None:
    ckpt = S3Checkpointer(store, "job-b")
    _save(ckpt, 1)
    store.put(f"{ckpt.checkpoint_prefix}/round-00000002.ckpt", b"FOED but truncated")
    loaded = S3Checkpointer(store, "job-b").load()
    assert loaded is not None and loaded.round == 1


def test_published_models_are_found_newest_first(store: S3Store) -> None:
    ckpt = S3Checkpointer(store, "job-c")
    assert ckpt.latest_model() is None
    ckpt.publish_model({"w": np.zeros(2)}, 1)
    url = ckpt.publish_model({"w": np.ones(2)}, 2)
    assert url.startswith(f"s3://{BUCKET}/") and url.endswith("round-00000002.foedus")
    latest = ckpt.latest_model()
    assert latest is not None
    assert latest[0] == 2
    np.testing.assert_array_equal(latest[1]["w"], np.ones(2))


def test_checkpointer_from_url_uses_the_bucket_and_prefix(s3_endpoint: str) -> None:
    ckpt = s3_checkpointer(f"s3://{BUCKET}/from-url/{uuid.uuid4().hex[:6]}", "job-d",
                           endpoint_url=s3_endpoint, access_key="test", secret_key="test")
    _save(ckpt, 5)
    assert ckpt.store.bucket == BUCKET
    loaded = ckpt.load()
    assert loaded is not None and loaded.round == 5
    with pytest.raises(ConfigError, match="s3://"):
        s3_checkpointer("/local/dir", "job-d")


async def test_a_restarted_server_resumes_from_the_latest_checkpoint_in_the_bucket(
    store: S3Store,
) -> None:
    first = build_job("resume-job", rounds=2, checkpointer=S3Checkpointer(store, "resume-job"))
    await run_graphs_of(first)
    assert [r.round for r in first.server.history] == [1, 2]

    # a new server process (new checkpointer, new staging dir) asked for 4 rounds
    second = build_job("resume-job", rounds=4, checkpointer=S3Checkpointer(store, "resume-job"))
    await run_graphs_of(second)
    assert [r.round for r in second.server.history] == [1, 2, 3, 4]
    assert second.server.history[:2] == first.server.history  # restored, not re-run
    assert all(c.rounds_trained == 2 for c in second.clients)  # only rounds 3 and 4 ran


def test_when_every_object_is_invalid_loading_refuses_naming_the_bucket(store: S3Store) -> None:
    ckpt = S3Checkpointer(store, "job-all-junk")
    store.put(f"{ckpt.checkpoint_prefix}/round-00000001.ckpt", b"FOED but truncated")
    store.put(f"{ckpt.checkpoint_prefix}/round-00000002.ckpt",
              ckpt.encode(2, {"w": np.full(3, np.nan)}, {}, []))  # CRC-valid, NaN
    with pytest.raises(CheckpointError) as refused:
        S3Checkpointer(store, "job-all-junk").load()
    message = str(refused.value)
    assert "\n" not in message and f"s3://{BUCKET}/{ckpt.checkpoint_prefix}/" in message
    assert "2 in" in message and "refusing to start over from round 1" in message


def test_junk_under_high_round_numbers_never_evicts_valid_checkpoints(
    store: S3Store, caplog: pytest.LogCaptureFixture,
) -> None:
    ckpt = S3Checkpointer(store, "job-junk", keep=2)
    prefix = ckpt.checkpoint_prefix
    _save(ckpt, 1)
    junk = [f"{prefix}/round-99999998.ckpt", f"{prefix}/round-99999999.ckpt"]
    store.put(junk[0], b"junk")
    store.put(junk[1], store.get(f"{prefix}/round-00000001.ckpt") or b"")  # a copy: wrong round
    for rnd in (2, 3):
        _save(ckpt, rnd)
    names = sorted(store.list(prefix))
    assert names == sorted([f"{prefix}/round-00000002.ckpt", f"{prefix}/round-00000003.ckpt",
                            *junk])  # 2 valid kept; junk took no place and is left alone
    with caplog.at_level(logging.ERROR):
        loaded = S3Checkpointer(store, "job-junk").load(like={"w": np.zeros((2, 3)),
                                                             "b": np.zeros(3)})
    assert loaded is not None and loaded.round == 3
    refusals = [r.getMessage() for r in caplog.records]
    assert any("round-99999999.ckpt" in m and "holds round 1, its name says 99999999" in m
               for m in refusals), refusals
    assert any("round-99999998.ckpt" in m for m in refusals)


def test_a_checkpoint_of_another_model_is_refused(store: S3Store) -> None:
    ckpt = S3Checkpointer(store, "job-shapes")
    _save(ckpt, 1)
    with pytest.raises(CheckpointError, match="not this job's model"):
        S3Checkpointer(store, "job-shapes").load(like={"w": np.zeros(5)})


@pytest.mark.parametrize("keep", [0, -1, "3", 1.5, True])
def test_keep_must_be_a_positive_integer(store: S3Store, keep: object) -> None:
    with pytest.raises(ConfigError, match="keep: expected an integer >= 1"):
        S3Checkpointer(store, "job-keep", keep=keep)  # type: ignore[arg-type]


def refusing_url() -> tuple[str, socket.socket]:
    """An http URL on loopback whose port refuses connections: bound, never listening."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return f"http://127.0.0.1:{sock.getsockname()[1]}", sock


def test_an_unreachable_endpoint_is_one_error_within_3_seconds() -> None:
    """boto retried for ~11 s (five attempts with backoff) before the first call failed; the
    check makes one attempt with a 2 s connect timeout. So does create_bucket's probe."""
    url, sock = refusing_url()
    with sock:
        store = S3Store(BUCKET, endpoint_url=url, access_key="test", secret_key="test")
        began = time.monotonic()
        with pytest.raises(TransportError, match=rf"^s3://{BUCKET}: cannot reach the S3 "
                                                 rf"endpoint at {url} \(.*\); start it, or fix"):
            store.check()
        with pytest.raises(TransportError, match="cannot reach the S3 endpoint"):
            S3Store(BUCKET, endpoint_url=url, access_key="test", secret_key="test",
                    create_bucket=True)
        assert time.monotonic() - began < 3


def test_the_check_names_a_missing_bucket(s3_endpoint: str) -> None:
    store = S3Store(f"missing-{uuid.uuid4().hex[:8]}", endpoint_url=s3_endpoint,
                    access_key="test", secret_key="test")
    with pytest.raises(TransportError, match=r"^s3://missing-\w+: no such bucket at "
                                             r"http://127.0.0.1:\d+ \(create it, or set "
                                             r"create_bucket: true\)$"):
        store.check()
    store.ensure_bucket()
    store.check()  # now it exists
