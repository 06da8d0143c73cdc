"""Checkpoints and global models in an S3-compatible bucket (AWS S3, MinIO, Ceph, moto...).

Plain S3 through boto3 with an ``endpoint_url``, path-style addressing, so the same code runs
against MinIO in production and against a local test server. :class:`S3Checkpointer` has the
interface of :class:`~foedus.roles.checkpoint.Checkpointer` (``save`` / ``load``), so a
:class:`ServerPod` given one resumes from the newest checkpoint in the bucket after a restart,
on any machine.

Layout under ``s3://BUCKET/PREFIX/JOB_ID/``::

    checkpoints/round-00000012.ckpt   one object per saved round (newest ``keep`` kept)
    models/round-00000012.foedus      global models published with publish_model()

An object PUT is atomic in S3: a crash while saving leaves the previous checkpoint readable.
Loading is the local checkpointer's (:meth:`Checkpointer.load`): every object is decoded and
checked (sane round, agreeing with its key; finite parameters of the job's shapes; the history's
schema); an invalid one is refused with its reason in an ERROR line and the one before it is
tried; when objects exist but none is valid, loading raises
:class:`~foedus.roles.checkpoint.CheckpointError` naming the bucket, never starting over
silently. Only objects that parse count towards ``keep``: junk under a high round number never
pushes a valid checkpoint out (junk is left alone, for its owner to look at).
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import numpy as np

from foedus.core.errors import CodecError, ConfigError, TransportError, require
from foedus.core.params import Params
from foedus.mlops.modelfile import decode_model, encode_model
from foedus.roles.checkpoint import Checkpointer, Source

log = logging.getLogger("foedus.mlops.artifacts")

_ROUND_KEY = re.compile(r"round-(\d{8})\.(ckpt|foedus)$")
#: the bounds of :meth:`S3Store.check` (one attempt): an endpoint that does not accept a
#: connection within this many seconds is unreachable...
CHECK_CONNECT_TIMEOUT_S = 2.0
#: ... and one that accepts but does not answer the listing within this many is too
CHECK_READ_TIMEOUT_S = 5.0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


class S3Store:
    """A bucket and key prefix, spoken to with boto3 (extra ``s3``)."""

    def __init__(
        self, bucket: str, *, prefix: str = "", endpoint_url: str | None = None,
        region: str = "us-east-1", access_key: str | None = None,
        secret_key: str | None = None, create_bucket: bool = False, client: Any = None,
    ) -> None:
        if not bucket:
            raise ConfigError("s3 bucket: expected a bucket name")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self._options: dict[str, Any] = {
            "endpoint_url": endpoint_url, "region_name": region,
            "aws_access_key_id": access_key, "aws_secret_access_key": secret_key}
        self._given_client = client is not None
        #: the client of real work (uploads, listings): boto's own retries and timeouts
        self.client = client if client is not None else self._new_client()
        if create_bucket:
            self.ensure_bucket()

    def _new_client(self, **config: Any) -> Any:
        boto3 = require("boto3", "s3")
        config_cls = require("botocore.config", "s3").Config
        return boto3.client("s3", config=config_cls(s3={"addressing_style": "path"}, **config),
                            **self._options)

    @property
    def where(self) -> str:
        """The endpoint, as errors name it."""
        return self.endpoint_url or "the default AWS endpoint"

    def _probe(self) -> str | None:
        """List one key of the bucket, once, within :data:`CHECK_CONNECT_TIMEOUT_S` to connect;
        the error code S3 answered (``NoSuchBucket``, ``AccessDenied``...), or None when it
        worked. An endpoint that cannot be reached raises :class:`TransportError` at once: the
        store's own client would first retry for ~11 s. A client given to the store is used
        as it is."""
        errors = require("botocore.exceptions", "s3")
        client = self.client if self._given_client else self._new_client(
            connect_timeout=CHECK_CONNECT_TIMEOUT_S, read_timeout=CHECK_READ_TIMEOUT_S,
            retries={"total_max_attempts": 1})
        try:
            client.list_objects_v2(Bucket=self.bucket, MaxKeys=1,
                                   Prefix=f"{self.prefix}/" if self.prefix else "")
        except errors.ClientError as exc:
            return str(exc.response.get("Error", {}).get("Code") or exc)
        except (errors.ConnectionError, errors.HTTPClientError) as exc:
            raise TransportError(f"s3://{self.bucket}: cannot reach the S3 endpoint at "
                                 f"{self.where} ({_one_line(exc)}); start it, or fix "
                                 "endpoint_url") from exc
        except errors.BotoCoreError as exc:  # no credentials, a malformed endpoint...
            raise TransportError(f"s3://{self.bucket}: {_one_line(exc)}") from exc
        return None

    def check(self) -> None:
        """Fail now, within seconds, if the bucket cannot be used: the endpoint does not
        answer, the bucket does not exist, or S3 refuses the credentials (raises
        :class:`TransportError` naming which). Only this check is bounded (one attempt, a
        2 s connect timeout); uploads keep boto's retries, which ride out a short outage."""
        code = self._probe()
        if code in ("NoSuchBucket", "404"):
            raise TransportError(f"s3://{self.bucket}: no such bucket at {self.where} (create "
                                 "it, or set create_bucket: true)")
        if code is not None:
            raise TransportError(f"s3://{self.bucket}: S3 at {self.where} refuses to list the "
                                 f"bucket: {code} (check access_key and secret_key, and the "
                                 "bucket's policy)")

    @classmethod
    def from_url(cls, url: str, **options: Any) -> S3Store:
        """``s3://bucket/some/prefix`` -> a store; ``options`` as for the constructor."""
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ConfigError(f"expected an s3://BUCKET/PREFIX url, got {url!r}")
        return cls(parsed.netloc, prefix=parsed.path, **options)

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist yet (asked as :meth:`check` asks: an
        endpoint that cannot be reached fails within seconds)."""
        if self._probe() in ("NoSuchBucket", "404"):
            self._call("create bucket", "", lambda: self.client.create_bucket(Bucket=self.bucket))

    def put(self, key: str, data: bytes) -> None:
        self._call("put", key, lambda: self.client.put_object(
            Bucket=self.bucket, Key=key, Body=data,
        ))

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or ``None`` if there is no such key."""
        errors = require("botocore.exceptions", "s3")
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except errors.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise TransportError(f"s3://{self.bucket}/{key}: get failed: {exc}") from exc
        data: bytes = response["Body"].read()
        return data

    def list(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (all pages)."""
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in self._call("list", prefix, lambda: list(paginator.paginate(
            Bucket=self.bucket, Prefix=prefix.rstrip("/") + "/",
        ))):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return keys

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=key))

    def _call(self, what: str, key: str, fn: Any) -> Any:
        errors = require("botocore.exceptions", "s3")
        try:
            return fn()
        except (errors.ClientError, errors.BotoCoreError) as exc:
            raise TransportError(f"s3://{self.bucket}/{key}: {what} failed: {exc}") from exc


def _rounds(keys: list[str], suffix: str) -> list[tuple[int, str]]:
    """(round, key) pairs of round-numbered objects ending in ``suffix``, newest first."""
    found = [(int(m.group(1)), k) for k in keys
             if (m := _ROUND_KEY.search(k)) and m.group(2) == suffix]
    return sorted(found, reverse=True)


class S3Checkpointer(Checkpointer):
    """A :class:`Checkpointer` whose checkpoints live in a bucket.

    Each checkpoint is written in the ordinary checkpoint format to a private staging file, then
    uploaded as its own object; the newest ``keep`` are kept. ``load`` returns the newest one
    that decodes, so a server resumes where the job stopped, wherever it restarts.
    """

    def __init__(self, store: S3Store, job_id: str, *, keep: int = 3) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ConfigError(f"keep: expected an integer >= 1 (checkpoints to keep), got "
                              f"{keep!r:.60}")
        self._staging = tempfile.TemporaryDirectory(prefix="foedus-s3ckpt-")
        super().__init__(self._staging.name, job_id, backups=0)  # the bucket keeps history
        self.store = store
        self.keep = keep
        self._verdicts: dict[str, bool] = {}  # key -> whether it parses, each read once

    @property
    def checkpoint_prefix(self) -> str:
        return self.store.key(self.job_id, "checkpoints")

    @property
    def model_prefix(self) -> str:
        return self.store.key(self.job_id, "models")

    @property
    def where(self) -> str:
        return f"s3://{self.store.bucket}/{self.checkpoint_prefix}/"

    def sources(self) -> list[Source]:
        """Every round-numbered object, newest first; each must hold the round its key names."""
        def fetch(key: str) -> Callable[[], bytes | None]:
            return lambda: self.store.get(key)
        return [(f"s3://{self.store.bucket}/{key}", fetch(key), rnd)
                for rnd, key in _rounds(self.store.list(self.checkpoint_prefix), "ckpt")]

    def save(
        self, round: int, params: Params, aggregator_state: dict[str, Any],
        history: list[dict[str, Any]], extra_state: dict[str, Any] | None = None,
    ) -> None:
        key = f"{self.checkpoint_prefix}/round-{round:08d}.ckpt"
        self.store.put(key, self.encode(round, params, aggregator_state, history, extra_state))
        self._verdicts[key] = True
        valid = [k for rnd, k in _rounds(self.store.list(self.checkpoint_prefix), "ckpt")
                 if self._parses_key(k, rnd)]
        for old in valid[self.keep:]:
            self.store.delete(old)
            self._verdicts.pop(old, None)

    def _parses_key(self, key: str, rnd: int) -> bool:
        """Whether ``key`` holds a checkpoint of this job (read once per process)."""
        if key not in self._verdicts:
            data = self.store.get(key)
            try:
                if data is None:
                    return False
                self.parse(data, key, round=rnd)
                self._verdicts[key] = True
            except (CodecError, ConfigError) as exc:
                log.warning("s3://%s/%s is not a valid checkpoint (%.200s); it takes no place "
                            "among the %d kept", self.store.bucket, key, exc, self.keep)
                self._verdicts[key] = False
        return self._verdicts[key]

    # ---- global models ----------------------------------------------------------------------
    def publish_model(self, params: Params, round: int) -> str:
        """Store a global model (foedus wire format); returns its ``s3://`` URL."""
        key = f"{self.model_prefix}/round-{round:08d}.foedus"
        self.store.put(key, encode_model(params, job_id=self.job_id, round=round))
        return f"s3://{self.store.bucket}/{key}"

    def latest_model(self) -> tuple[int, dict[str, np.ndarray]] | None:
        """The newest published global model and its round, or ``None``."""
        for round, key in _rounds(self.store.list(self.model_prefix), "foedus"):
            data = self.store.get(key)
            if data is not None:
                return round, decode_model(data)
        return None


def s3_checkpointer(url: str, job_id: str, **options: Any) -> S3Checkpointer:
    """``s3_checkpointer("s3://bucket/prefix", job)``; the endpoint and credentials come from
    ``options`` (``endpoint_url=...``) or boto3's usual environment (``AWS_ENDPOINT_URL``...)."""
    keep = options.pop("keep", 3)  # checked by S3Checkpointer
    return S3Checkpointer(S3Store.from_url(url, **options), job_id, keep=keep)

