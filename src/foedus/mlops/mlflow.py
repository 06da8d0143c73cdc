"""MLflow tracking and model registry: one MLflow run per federated job.

The tracker logs the job's parameters once, each round's metrics as one batch (server
evaluation, the clients' weighted training metrics, accepted/rejected/failed counts, round time
and, when it can see the links, bytes on the wire), the global model as an artifact every
``checkpoint_every`` rounds and at the end, and registers the final model in the registry with
lineage tags (job, spec hash, rounds, parent version, trigger) so a registered model can always
be traced back to the job that produced it.

Two ways to attach it (see ``docs/mlops.md``):

* as a **pod** on the server graph, its ``events`` input fed by ``server.events``;
* as a **round listener**: ``tracker.attach(server)``, or
  ``run_job(spec, on_round=tracker.listener())`` then ``tracker.finish(result.params)``. MLflow
  calls then run on a private worker thread so the server's event loop never waits on HTTP.

It talks to MLflow through ``MlflowClient`` only (no global ``mlflow.start_run`` state), so several
trackers can live in one process. The client side needs only ``mlflow-skinny`` (extra ``mlflow``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from foedus.core.errors import ConfigError, FoedusError, require
from foedus.core.message import Message
from foedus.core.params import Params
from foedus.core.pod import Pod, Wire
from foedus.mlops.events import graph_links, record_from_event, wire_bytes
from foedus.mlops.modelfile import MODEL_FILE, decode_model, encode_model
from foedus.mlops.pyfunc import DATA_DIR, ModelRecipe, save_model
from foedus.roles.server import RoundRecord, ServerPod

log = logging.getLogger("foedus.mlops.mlflow")

ParamsSource = Callable[[], Params]

#: the checkpoint's extra-state entry holding the MLflow run (a resumed server reopens it)
CHECKPOINT_STATE = "mlops:mlflow"
#: how long a checkpoint waits for the listener thread to have created the run
_OPEN_WAIT_S = 60.0
#: how long :meth:`MlflowTracker.check` waits to connect to a tracking server
CONNECT_TIMEOUT_S = 5.0


class TrackingError(FoedusError):
    """MLflow could not be used: its tracking server is unreachable, or its client refused the
    tracking URI or a call. One line naming ``mlops.mlflow`` (the command line prints it)."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:700]}{'...' if len(text) > 700 else ''}"


@dataclass(frozen=True)
class RegisteredModel:
    """A model version created in the registry by :meth:`MlflowTracker.finish`."""

    name: str
    version: str
    run_id: str
    source: str
    tags: dict[str, str]


def job_params(spec: Any) -> dict[str, str]:
    """Flatten a job spec (a dataclass such as :class:`JobSpec`, or a mapping) to MLflow params:
    nested keys joined with dots (``clients.count``), values as strings."""
    raw = asdict(spec) if is_dataclass(spec) and not isinstance(spec, type) else spec
    if not isinstance(raw, Mapping):
        raise ConfigError(f"job params must be a dataclass or a mapping, got {type(spec).__name__}")
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, list | tuple) and value and all(
            isinstance(v, Mapping) for v in value
        ):
            for i, v in enumerate(value):
                walk(f"{prefix}.{i}", v)
        else:
            flat[prefix] = json.dumps(value, default=str) if not isinstance(value, str) else value

    walk("", dict(raw))
    return flat


def spec_digest(params: Mapping[str, str]) -> str:
    """A short stable hash of the job's parameters, used as a lineage tag."""
    text = json.dumps(dict(sorted(params.items())), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def round_metrics(record: RoundRecord) -> dict[str, float]:
    """The numbers of one round, named as they appear in MLflow."""
    out: dict[str, float] = {f"server_{k}": float(v) for k, v in record.metrics.items()}
    out.update({f"clients_{k}": float(v) for k, v in record.client_metrics.items()})
    out["updates_accepted"] = float(record.accepted)
    out["updates_rejected"] = float(sum(record.rejected.values()))
    for reason, count in record.rejected.items():
        out[f"updates_rejected_{reason}"] = float(count)
    out["clients_failed"] = float(len(record.failed_clients))
    out["clients_missing"] = float(record.missing_clients)
    out["round_duration_s"] = float(record.duration_s)
    out["no_quorum"] = 0.0 if record.status == "ok" else 1.0
    return out


class MlflowTracker(Pod):
    """Tracks one federated job as one MLflow run (pod on ``server.events``, or a listener).

    ``model_source`` returns the current global model for the model artifacts; when the server's
    events carry parameters they are used instead. ``links`` are pods whose byte counters to log
    (by default, the links of the graph the tracker runs in, found when it starts); without
    links, the bytes each :class:`RoundRecord` carries (filled by the runner) are summed.
    ``recipe`` says how to rebuild the model adapter: with it, models are logged as MLflow
    models (``mlflow.pyfunc.load_model`` works on them, see :mod:`foedus.mlops.pyfunc`).
    """

    inputs: ClassVar[tuple[Wire, ...]] = (Wire("events"),)
    blocking: ClassVar[bool] = True

    def __init__(
        self, *, tracking_uri: str, job_id: str, experiment: str = "foedus",
        params: Mapping[str, Any] | Any | None = None, run_name: str | None = None,
        registered_model: str | None = None, checkpoint_every: int = 0,
        tags: Mapping[str, str] | None = None, model_source: ParamsSource | None = None,
        links: list[Pod] | None = None, recipe: ModelRecipe | None = None,
        name: str = "mlflow",
    ) -> None:
        super().__init__(name)
        if not tracking_uri:
            raise ConfigError("mlflow.tracking_uri: expected a URI such as http://127.0.0.1:5000")
        if checkpoint_every < 0:
            raise ConfigError(f"mlflow.checkpoint_every: expected >= 0, got {checkpoint_every}")
        self.tracking_uri = tracking_uri
        self.job_id = job_id
        self.experiment = experiment
        self.params = job_params(params) if params is not None else {}
        self.run_name = run_name or job_id
        self.registered_model = registered_model
        self.checkpoint_every = checkpoint_every
        self.tags = dict(tags or {})
        self.model_source = model_source
        self.links = links
        self.recipe = recipe
        self.run_id: str | None = None
        self.rounds_logged = 0
        #: cumulative bytes of the records (used when the tracker sees no links)
        self.record_bytes = [0, 0]
        #: a run to reopen instead of creating one (set from a checkpoint on resume)
        self.resume_run_id: str | None = None
        self._opened = threading.Event()
        self._client: Any = None
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []
        #: set while :meth:`check` runs and left set when it fails (MLflow cannot be used)
        self.unusable = False
        #: rounds not logged because the tracking server did not answer then
        self.rounds_skipped: list[int] = []

    # ---- run lifecycle --------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The ``MlflowClient`` (created on first use; imports mlflow lazily)."""
        if self._client is None:
            tracking = require("mlflow.tracking", "mlflow")
            self._client = tracking.MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def check(self, timeout: float = CONNECT_TIMEOUT_S) -> None:
        """Fail now, before round 1, if MLflow cannot be used with ``tracking_uri``.

        Without it the run is created by the first round's logging on the worker thread, and
        a mistake surfaced only when the job ended: a refused tracking URI (MLflow 3 refuses a
        ``file:`` store unless told otherwise) as a traceback after training, and an unreachable
        server after MLflow's own retries, minutes per call. So the client is created here
        (it checks the URI and store locally), and an ``http(s)`` server must accept a TCP
        connection within ``timeout`` seconds (skipped when a proxy is configured for the URI,
        which MLflow would use). Raises :class:`TrackingError`.
        """
        self.unusable = True  # until proven otherwise: finish() then leaves MLflow alone
        try:
            _ = self.client
        except FoedusError:
            raise
        except Exception as exc:  # MlflowException and whatever its store builders raise
            raise TrackingError(f"mlops.mlflow.tracking_uri: MLflow refuses "
                                f"{self.tracking_uri!r}: {_one_line(exc)}") from exc
        problem = self.unanswered(timeout)
        if problem is not None:
            raise TrackingError(
                f"mlops.mlflow.tracking_uri: cannot reach the MLflow server at "
                f"{self.tracking_uri} ({problem}); start it, or fix the URI")
        self.unusable = False

    def unanswered(self, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
        """Why the ``http(s)`` tracking server does not accept a TCP connection within
        ``timeout`` seconds, or None when it does (and for a URI that is not such a server,
        or that goes through a proxy, which MLflow would use). Asked before each call to the
        server after :meth:`check`: MLflow retries a call to a server that is gone for minutes
        (246 s measured), on the tracker's thread, and the job's end waited for every one."""
        parts = urllib.parse.urlsplit(self.tracking_uri)
        if not (parts.scheme in ("http", "https") and parts.hostname
                and not (parts.scheme in urllib.request.getproxies()
                         and not urllib.request.proxy_bypass(parts.hostname))):
            return None
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout).close()
        except OSError as exc:
            return _one_line(exc)
        return None

    def open(self) -> str:
        """Create the run (once) and log the job's parameters; returns the run id."""
        with self._lock:
            if self.run_id is not None:
                return self.run_id
            client = self.client
            if self.resume_run_id is not None and self._reopen(self.resume_run_id):
                return self.resume_run_id
            found = client.get_experiment_by_name(self.experiment)
            experiment_id = (
                found.experiment_id if found is not None
                else client.create_experiment(self.experiment)
            )
            tags = {"foedus.job_id": self.job_id, "foedus.role": "server", **self.tags}
            if self.params:
                tags["foedus.spec_sha256"] = spec_digest(self.params)
            run = client.create_run(experiment_id, run_name=self.run_name, tags=tags)
            self.run_id = str(run.info.run_id)
            if self.params:
                entities = require("mlflow.entities", "mlflow")
                items = [entities.Param(k, v) for k, v in self.params.items()]
                for start in range(0, len(items), 100):  # MLflow's batch limit is 100 params
                    client.log_batch(self.run_id, params=items[start:start + 100])
            log.info("mlflow run %s for job %s", self.run_id, self.job_id)
            self._opened.set()
            return self.run_id

    def _reopen(self, run_id: str) -> bool:
        """Continue ``run_id`` (a resumed job): mark it running again, log no params twice.
        A run that is gone or belongs to another job is not reused (a new one is made)."""
        exceptions = require("mlflow.exceptions", "mlflow")
        try:
            run = self.client.get_run(run_id)
        except exceptions.MlflowException as exc:
            log.warning("mlflow run %s of job %s cannot be resumed (%s); starting a new run",
                        run_id, self.job_id, exc)
            return False
        if run.data.tags.get("foedus.job_id") != self.job_id:
            log.warning("mlflow run %s is not job %s's; starting a new run", run_id, self.job_id)
            return False
        resumed = int(run.data.tags.get("foedus.resumed", "0")) + 1
        self.client.update_run(run_id, status="RUNNING")
        self.client.set_tag(run_id, "foedus.resumed", str(resumed))
        self.run_id = run_id
        log.info("mlflow run %s of job %s resumed (time %d)", run_id, self.job_id, resumed)
        self._opened.set()
        return True

    def log_round(self, record: RoundRecord, params: Params | None = None) -> None:
        """Log one round's metrics (step = round) and, at checkpoint rounds, the model."""
        if self._executor is not None:  # listener mode: never block the caller's event loop
            wanted = params is not None and self._checkpoint_round(record.round)
            snapshot = _copy(params) if wanted and params is not None else None
            self._submit(lambda: self._log_round(record, snapshot))
        else:
            self._log_round(record, params)

    def log_model(self, params: Params, *, round: int, artifact_path: str | None = None) -> str:
        """Upload a global model as an artifact; returns its artifact URI."""
        run_id = self.open()
        path = artifact_path or f"models/round-{round:04d}"
        with tempfile.TemporaryDirectory(prefix="foedus-mlflow-") as tmp:
            if self.recipe is not None:  # an MLflow model: MLmodel, signature, data/foedus/
                model_dir = Path(tmp) / "model"
                save_model(model_dir, params, self.recipe, job_id=self.job_id, round=round)
                self.client.log_artifacts(run_id, str(model_dir), artifact_path=path)
                return f"{self.client.get_run(run_id).info.artifact_uri}/{path}"
            (Path(tmp) / MODEL_FILE).write_bytes(
                encode_model(params, job_id=self.job_id, round=round)
            )
            (Path(tmp) / "model.json").write_text(json.dumps({
                "job_id": self.job_id, "round": round,
                "arrays": {k: [str(np.asarray(v).dtype), list(np.shape(v))]
                           for k, v in params.items()},
            }))
            self.client.log_artifacts(run_id, tmp, artifact_path=path)
        return f"{self.client.get_run(run_id).info.artifact_uri}/{path}"

    def finish(
        self, params: Params | None = None, *, status: str = "FINISHED",
        lineage: Mapping[str, str] | None = None,
    ) -> RegisteredModel | None:
        """End the run: log the final model, register it (if ``registered_model`` is set) with
        lineage tags, and mark the run ``status``. Returns the new model version, if any.

        A run ending with any status but ``FINISHED`` logs no final model and registers
        nothing, whatever ``params`` or ``model_source`` hold: the global model of a failed
        job (no round with quorum, or a crash) is not a model anyone should deploy.

        After a failed :meth:`check` it does nothing: there is no run, and trying to make one
        would only wait out MLflow's retries before failing again."""
        if self.unusable:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            return None
        try:
            self.flush()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
        problem = self.unanswered()
        if problem is not None:
            raise TrackingError(
                f"mlops.mlflow: cannot finish the run: the tracking server at "
                f"{self.tracking_uri} does not answer ({problem}); run "
                f"{self.run_id or '(not created)'} is left as it was, and no final model was "
                "logged or registered")
        if self.rounds_skipped:
            log.warning("mlops.mlflow: rounds %s were not logged (the tracking server did not "
                        "answer then)", self.rounds_skipped)
        run_id = self.open()
        version: RegisteredModel | None = None
        final = None
        if status == "FINISHED":
            final = params if params is not None else (
                self.model_source() if self.model_source is not None else None
            )
        try:
            if final is not None:
                source = self.log_model(
                    final, round=self.rounds_logged, artifact_path="models/final"
                )
                if self.registered_model:
                    version = self.register(source, lineage=lineage)
        except Exception:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id, status=status)
        return version

    def register(self, source: str, *, lineage: Mapping[str, str] | None = None) -> RegisteredModel:
        """Create a version of ``registered_model`` from an artifact URI, tagged with lineage."""
        if not self.registered_model:
            raise ConfigError("mlflow.registered_model: set a model name to register models")
        run_id = self.open()
        client = self.client
        exceptions = require("mlflow.exceptions", "mlflow")
        try:
            client.get_registered_model(self.registered_model)
        except exceptions.MlflowException:
            client.create_registered_model(
                self.registered_model, description="Global models trained by foedus jobs.",
            )
        tags = {
            "foedus.job_id": self.job_id, "foedus.run_id": run_id,
            "foedus.rounds": str(self.rounds_logged), **self.tags, **dict(lineage or {}),
        }
        if self.params:
            tags["foedus.spec_sha256"] = spec_digest(self.params)
        mv = client.create_model_version(
            self.registered_model, source=source, run_id=run_id, tags=tags,
            description=f"foedus job {self.job_id}, {self.rounds_logged} rounds",
        )
        return RegisteredModel(self.registered_model, str(mv.version), run_id, source, tags)

    # ---- listener mode --------------------------------------------------------------------
    def listener(self) -> Callable[[RoundRecord], None]:
        """A round listener (for ``run_job(on_round=...)``) that logs on a worker thread."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="foedus-mlflow")
        return self.log_round

    def attach(self, server: ServerPod) -> None:
        """Track ``server`` as a round listener, with the exact global model of every round.
        Checks first that MLflow can be used (:meth:`check`), so a job that cannot be tracked
        does not train first."""
        self.check()
        self.listener()
        if self.model_source is None:
            self.model_source = lambda: server.params
        server.round_listeners.append(lambda rec: self.log_round(rec, server.params))
        self.checkpoint_with(server)

    def checkpoint_with(self, server: ServerPod) -> None:
        """Save the run id with ``server``'s checkpoints, so a server that resumes from one
        continues the same MLflow run (one run per job, however often its server restarts)."""
        server.state_hooks[CHECKPOINT_STATE] = (self.checkpoint_state, self.restore_state)

    def checkpoint_state(self) -> dict[str, Any]:
        """The run and the tracker's counters, as saved with a checkpoint."""
        if self.run_id is None and self._executor is not None:
            # the run is created by the first round's logging on the worker thread: a
            # checkpoint without it could not be resumed into the same run
            self._opened.wait(_OPEN_WAIT_S)
        return {"run_id": self.run_id or "", "rounds_logged": self.rounds_logged,
                "record_bytes": list(self.record_bytes)}

    def restore_state(self, state: dict[str, Any]) -> None:
        """Take the run back from a checkpoint (called before the resumed job's first round;
        the run is reopened lazily, on the worker thread, with its first log call)."""
        run_id = state.get("run_id")
        if isinstance(run_id, str) and run_id and self.run_id is None:
            self.resume_run_id = run_id
        self.rounds_logged = max(self.rounds_logged, int(state.get("rounds_logged", 0)))
        saved = state.get("record_bytes")
        if isinstance(saved, list) and len(saved) == 2:
            self.record_bytes = [int(saved[0]), int(saved[1])]

    def flush(self) -> None:
        """Wait until every round handed to the listener has been logged; re-raise failures."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def _submit(self, work: Callable[[], None]) -> None:
        assert self._executor is not None
        self._pending.append(self._executor.submit(work))

    # ---- pod mode -------------------------------------------------------------------------
    async def start(self) -> None:
        if self.links is None:
            self.links = graph_links(self)  # the server graph's uplinks and downlinks
        await asyncio.to_thread(self.open)

    def on_events(self, msg: Message) -> None:
        record = record_from_event(msg)
        params = msg.params or (self.model_source() if self.model_source is not None else None)
        self._log_round(record, params)

    # ---- internals ------------------------------------------------------------------------
    def _log_round(self, record: RoundRecord, params: Params | None) -> None:
        problem = self.unanswered()
        if problem is not None:  # skipped at once, not after minutes of MLflow's retries
            self.rounds_skipped.append(record.round)
            log.warning("mlops.mlflow: round %d not logged: the tracking server at %s does "
                        "not answer (%s)", record.round, self.tracking_uri, problem)
            return
        run_id = self.open()
        entities = require("mlflow.entities", "mlflow")
        values = round_metrics(record)
        if self.links:
            wb = wire_bytes(self.links)
            values.update(bytes_in=float(wb.bytes_in), bytes_out=float(wb.bytes_out))
        elif record.bytes_in or record.bytes_out or any(self.record_bytes):
            self.record_bytes[0] += record.bytes_in
            self.record_bytes[1] += record.bytes_out
            values.update(bytes_in=float(self.record_bytes[0]),
                          bytes_out=float(self.record_bytes[1]))
        stamp = int(1000 * time.time())
        self.client.log_batch(run_id, metrics=[
            entities.Metric(k, v, stamp, record.round) for k, v in values.items()
        ])
        self.rounds_logged = max(self.rounds_logged, record.round)
        if params is not None and self._checkpoint_round(record.round):
            self.log_model(params, round=record.round)

    def _checkpoint_round(self, round: int) -> bool:
        return bool(self.checkpoint_every) and round % self.checkpoint_every == 0


def load_model_version(tracking_uri: str, name: str, version: str) -> dict[str, np.ndarray]:
    """Download a registered foedus model and decode its arrays (e.g. to warm-start a job)."""
    tracking = require("mlflow.tracking", "mlflow")
    client = tracking.MlflowClient(tracking_uri=tracking_uri)
    mv = client.get_model_version(name, version)
    artifacts = require("mlflow.artifacts", "mlflow")
    exceptions = require("mlflow.exceptions", "mlflow")
    with tempfile.TemporaryDirectory(prefix="foedus-mlflow-") as tmp:
        for inside in (f"data/{DATA_DIR}/{MODEL_FILE}", MODEL_FILE):  # MLflow model, or plain
            try:
                local = artifacts.download_artifacts(
                    artifact_uri=f"{mv.source}/{inside}", dst_path=tmp,
                    tracking_uri=tracking_uri,
                )
            except (exceptions.MlflowException, OSError):
                continue
            return decode_model(Path(local).read_bytes())
    raise ConfigError(f"model {name} version {version} holds no foedus model ({mv.source})")


def _copy(params: Params) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in params.items()}
