"""The ``mlops:`` section of a job file, turned into integrations attached to a server.

::

    mlops:
      mlflow: {tracking_uri: http://mlflow:5000, experiment: digits,
               registered_model: digits-fedavg, checkpoint_every: 5}
      s3: {url: s3://foedus/checkpoints, endpoint_url: http://minio:9000, keep: 3}
      prometheus: {port: 9400, host: 0.0.0.0, linger_s: 10}

:class:`MlopsSession` is what a runner needs (``foedus.config.parts`` uses it for every job
file with an ``mlops:`` section): ``checkpointer()`` before building the server,
``attach(server)`` once it exists (listener mode: nothing to wire), and
``finish(params, failed=...)`` after the job. Every key is checked up front, and each
integration's extra is imported only if its section is present.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from foedus.core.errors import ConfigError, FoedusError, TransportError
from foedus.core.params import Params
from foedus.data.datasets import DataSpec
from foedus.mlops.artifacts import S3Checkpointer, s3_checkpointer
from foedus.mlops.metrics import DEFAULT_LINGER_S, ServerMonitor
from foedus.mlops.mlflow import MlflowTracker, RegisteredModel, TrackingError, _one_line
from foedus.mlops.pyfunc import ModelRecipe
from foedus.roles.server import ServerPod

_KEYS: dict[str, tuple[str, ...]] = {
    "mlflow": ("tracking_uri", "experiment", "registered_model", "checkpoint_every", "run_name"),
    "s3": ("url", "endpoint_url", "region", "keep", "access_key", "secret_key",
           "create_bucket"),
    "prometheus": ("port", "host", "linger_s"),
}


def _section(raw: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(f"mlops.{name}: expected a mapping, got {value!r}")
    unknown = sorted(set(value) - set(_KEYS[name]))
    if unknown:
        raise ConfigError(f"mlops.{name}.{unknown[0]}: unknown key; allowed: "
                          f"{', '.join(_KEYS[name])}")
    return dict(value)


def recipe_of(job_params: Any, data_spec: DataSpec | None) -> ModelRecipe | None:
    """How to rebuild the job's model (for MLflow models), when the job says which it is."""
    model = getattr(job_params, "model", None)
    model_type = getattr(model, "type", None)
    if data_spec is None or not isinstance(model_type, str):
        return None
    return ModelRecipe(model_type, data_spec, dict(getattr(model, "params", {}) or {}),
                       int(getattr(job_params, "seed", 0)))


class MlopsSession:
    """The integrations one job asked for, built from its ``mlops:`` section.

    ``job_params`` is the job spec (logged as MLflow params); with ``data_spec`` too, models
    are logged as MLflow models that ``mlflow.pyfunc.load_model`` can load and predict with.
    """

    def __init__(self, config: Mapping[str, Any] | None, *, job_id: str,
                 job_params: Any = None, data_spec: DataSpec | None = None) -> None:
        raw = dict(config or {})
        unknown = sorted(set(raw) - set(_KEYS))
        if unknown:
            raise ConfigError(f"mlops.{unknown[0]}: unknown section; allowed: "
                              f"{', '.join(_KEYS)}")
        self.job_id = job_id
        self.tracker: MlflowTracker | None = None
        self.monitor: ServerMonitor | None = None
        self._s3 = _section(raw, "s3")
        self._checkpointer: S3Checkpointer | None = None
        self._prometheus = _section(raw, "prometheus")
        mlflow = _section(raw, "mlflow")
        if mlflow is not None:
            if "tracking_uri" not in mlflow:
                raise ConfigError("mlops.mlflow.tracking_uri: required")
            self.tracker = MlflowTracker(job_id=job_id, params=job_params,
                                         recipe=recipe_of(job_params, data_spec), **mlflow)
        if self._s3 is not None and "url" not in self._s3:
            raise ConfigError("mlops.s3.url: required (s3://BUCKET/PREFIX)")
        self.linger_s = DEFAULT_LINGER_S
        if self._prometheus is not None:
            linger = self._prometheus.get("linger_s", DEFAULT_LINGER_S)
            if isinstance(linger, bool) or not isinstance(linger, int | float) or linger < 0:
                raise ConfigError(f"mlops.prometheus.linger_s: expected seconds >= 0, "
                                  f"got {linger!r}")
            self.linger_s = float(linger)

    def checkpointer(self) -> S3Checkpointer | None:
        """The S3 checkpointer, if the job stores checkpoints in a bucket."""
        if self._s3 is not None and self._checkpointer is None:
            options = {k: v for k, v in self._s3.items() if k != "url"}
            try:  # before round 1, and in seconds: not when the server first lists the bucket
                checkpointer = s3_checkpointer(self._s3["url"], self.job_id, **options)
                checkpointer.store.check()
            except TransportError as exc:
                raise TransportError(f"mlops.s3: {exc}") from exc
            self._checkpointer = checkpointer
        return self._checkpointer

    def attach(self, server: ServerPod) -> None:
        """Start the integrations on ``server`` as round listeners."""
        if self.tracker is not None:
            self.tracker.attach(server)
        if self._prometheus is not None:
            self.monitor = ServerMonitor(job_id=self.job_id)
            self.monitor.attach(server)
            self.monitor.serve(int(self._prometheus.get("port", 9400)),
                               str(self._prometheus.get("host", "127.0.0.1")))

    def finish(self, params: Params | None = None, *, failed: bool = False,
               ) -> RegisteredModel | None:
        """End the MLflow run and stop the endpoint.

        A ``failed`` job (every round without quorum, or a crash) ends its run ``FAILED`` and
        registers no model. The endpoint first lingers until Prometheus has scraped it once
        after the last round (at most ``mlops.prometheus.linger_s``), so the job's last rounds
        are not lost with the process."""
        try:
            if self.tracker is not None:
                try:
                    return self.tracker.finish(None if failed else params,
                                               status="FAILED" if failed else "FINISHED")
                except FoedusError:
                    raise
                except Exception as exc:  # MLflow's own errors: one line, not a traceback
                    raise TrackingError(f"mlops.mlflow: the run could not be finished at "
                                        f"{self.tracker.tracking_uri}: {_one_line(exc)}"
                                        ) from exc
            return None
        finally:
            if self.monitor is not None:
                self.monitor.close(linger_s=self.linger_s)
