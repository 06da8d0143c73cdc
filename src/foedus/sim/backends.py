"""Where simulated clients train: a thread pool, a process pool, or a Ray cluster.

A backend receives the round's global model and a list of client indices and returns updates as
they complete. The thread backend hands messages over in memory (set ``codec=True`` to push
every message through the wire format anyway); process and Ray workers necessarily serialise, and
every backend counts the bytes a real deployment would move. Models are *materialized in the
workers only*: each worker builds one model adapter and reuses it for every client it trains, so
memory grows with the number of workers, never with the number of clients. Each client's local
round is reseeded from (job seed, client, round) through ``ModelAdapter.begin_round``, so results
do not depend on which worker trained whom.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures as cf
import os
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from foedus.codec import decode, encode
from foedus.config.spec import JobSpec
from foedus.core.errors import ConfigError, require
from foedus.core.filter import MODEL_WIRE, Filter, wants_model
from foedus.core.message import Kind, Message
from foedus.core.params import nbytes
from foedus.data.datasets import Dataset
from foedus.models.base import ModelAdapter, task_seed


@dataclass
class ClientWork:
    """What a worker needs to train one virtual client: built once per worker."""

    shares: Sequence[Dataset]
    ids: Sequence[str]
    epochs: int
    seed: int
    make_model: Callable[[], ModelAdapter]
    make_filters: Callable[[], list[Filter]]


def train_client(
    work: ClientWork, model: ModelAdapter, filters: list[Filter], model_msg: Message, index: int,
) -> Message | None:
    """One client's local round, as a ClientPod would do it. Returns the filtered update, or
    an error message (errors travel as values), or None if a filter dropped it on purpose."""
    client = work.ids[index]
    try:
        for f in filters:
            if wants_model(f):  # as the topology's model wire would
                f.handler(MODEL_WIRE)(model_msg)
        model.set_params(model_msg.params)
        model.begin_round(task_seed(work.seed, client, model_msg.round))
        train_metrics = model.fit(work.shares[index], epochs=work.epochs)
        update: Message | None = model_msg.reply(
            Kind.UPDATE, client, params=model.get_params(), num_examples=len(work.shares[index]),
            metrics={f"train_{k}": v for k, v in train_metrics.items()},
        )
        for f in filters:
            if update is None:
                return None
            update = f.process(update)
        return update
    except Exception as exc:
        return model_msg.reply(Kind.ERROR, client, error=f"{type(exc).__name__}: {exc}")


class Backend(abc.ABC):
    """Trains batches of virtual clients."""

    name: str = "backend"

    @abc.abstractmethod
    def start(self, work: ClientWork, spec: JobSpec) -> None: ...

    bytes_down = 0
    bytes_up = 0

    @abc.abstractmethod
    def train(self, model_msg: Message, indices: Sequence[int]) -> AsyncIterator[list[Message]]:
        """Updates, in batches, as they complete."""

    def close(self) -> None:
        pass


def _batches(indices: Sequence[int], workers: int) -> list[list[int]]:
    """Split the round's clients into a few batches per worker: few hand-offs, good balance."""
    count = max(1, min(len(indices), workers * 4))
    size = -(-len(indices) // count)
    return [list(indices[i : i + size]) for i in range(0, len(indices), size)]


class ThreadBackend(Backend):
    """A thread pool; each thread keeps one model. Right for torch and scikit-learn, whose
    numeric kernels release the GIL."""

    name = "thread"

    def __init__(self, workers: int | None = None, codec: bool = False) -> None:
        self.workers = workers or 1
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")
        self.codec = codec
        self._local = threading.local()
        self._filters: dict[int, list[Filter]] = {}
        self._pool: cf.ThreadPoolExecutor | None = None
        self._work: ClientWork | None = None

    def start(self, work: ClientWork, spec: JobSpec) -> None:
        self._work = work
        self._pool = cf.ThreadPoolExecutor(self.workers, thread_name_prefix="foedus-sim")

    def _train_one(self, model_msg: Message, index: int) -> Message | None:
        """Train client ``index`` on this thread's model; its update (or error, or None)."""
        assert self._work is not None
        model = getattr(self._local, "model", None)
        if model is None:
            model = self._local.model = self._work.make_model()
        filters = self._filters.get(index)
        if filters is None:  # per-client filter state (e.g. error feedback) lives here
            filters = self._filters[index] = self._work.make_filters()
        update = train_client(self._work, model, filters, model_msg, index)
        if update is None:
            return None
        if self.codec:
            payload = encode(update)
            self.bytes_up += len(payload)
            return decode(payload)
        self.bytes_up += nbytes(update.params)
        return update

    async def train(
        self, model_msg: Message, indices: Sequence[int]
    ) -> AsyncIterator[list[Message]]:
        """Updates one at a time, each as soon as it is trained.

        Memory: an update is a model-sized copy, so none waits for the rest of a batch. The
        server folds each in (and may let it go) while the next clients train; a worker
        holds only the update it is producing.
        """
        assert self._pool is not None
        if self.codec:
            payload = encode(model_msg)
            self.bytes_down += len(payload) * len(indices)
            model_msg = decode(payload)
        else:
            self.bytes_down += nbytes(model_msg.params) * len(indices)
        if self.workers == 1:
            # one worker: train right here, in order; a hop to a single thread buys nothing
            # (the server only waits) and costs a context switch per client
            for index in indices:
                update = self._train_one(model_msg, index)
                if update is not None:
                    yield [update]
                await asyncio.sleep(0)  # let the server fold this update in
            return
        loop = asyncio.get_running_loop()
        ready: asyncio.Queue[Message | None] = asyncio.Queue()

        def run_batch(batch: list[int]) -> None:
            for index in batch:
                update = self._train_one(model_msg, index)
                if update is not None:
                    loop.call_soon_threadsafe(ready.put_nowait, update)

        futures = [loop.run_in_executor(self._pool, run_batch, batch)
                   for batch in _batches(indices, self.workers)]
        for future in futures:  # after the batch's last update: both go through the loop
            future.add_done_callback(lambda _: ready.put_nowait(None))
        running = len(futures)
        while running:
            update = await ready.get()
            if update is None:
                running -= 1
            else:
                yield [update]
        for future in futures:
            future.result()  # a worker's unexpected failure surfaces here

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


# ---- processes --------------------------------------------------------------------------------
_PROCESS_STATE: dict[str, Any] = {}


#: how long a started worker waits for the pool's other workers to be ready
WARM_TIMEOUT_S = 600.0


def _process_init(spec: JobSpec, ready: Any = None) -> None:
    """Runs once in each worker process: rebuild the job's data and one model from the spec.
    ``ready``: the pool's barrier (see :func:`_warm`)."""
    from foedus.config.parts import build_parts
    from foedus.sim.engine import client_work

    # a worker runs no server: no evaluation set to read, no MLOps integration to start
    parts = build_parts(spec, server_data=False)
    _PROCESS_STATE["work"] = client_work(spec, parts)
    # the model build_parts made for its pairing check becomes this worker's one model
    # (each client's round loads the global model into it first): one model build fewer
    _PROCESS_STATE["model"] = parts.evaluator()
    _PROCESS_STATE["ready"] = ready


def _warm(_: int) -> None:
    """Build this worker's model, then wait at the pool's barrier until every worker has:
    otherwise the first worker up could take every warm-up task while another still starts,
    and that one's start-up (imports, data, model) would land in the first round."""
    work: ClientWork = _PROCESS_STATE["work"]
    if _PROCESS_STATE["model"] is None:
        _PROCESS_STATE["model"] = work.make_model()
    ready = _PROCESS_STATE.get("ready")
    if ready is not None:
        ready.wait(WARM_TIMEOUT_S)


def _process_batch(model_payload: bytes, batch: list[int]) -> list[bytes]:
    """A batch from payload bytes to update bytes (the Ray workers' path)."""
    work: ClientWork = _PROCESS_STATE["work"]
    if _PROCESS_STATE["model"] is None:
        _PROCESS_STATE["model"] = work.make_model()
    model_msg = decode(model_payload)
    out = []
    for index in batch:
        update = train_client(work, _PROCESS_STATE["model"], work.make_filters(), model_msg, index)
        if update is not None:
            out.append(encode(update))
    return out


def _shared_dir() -> str:
    """Where model and update payloads are shared: memory-backed ``/dev/shm`` on Linux."""
    import tempfile

    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def _map(path: str) -> memoryview:
    """The file's bytes, mapped read-only: the pages the writer wrote, not a copy."""
    import mmap

    with open(path, "rb") as f:
        return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))


def _share(payload: bytes | memoryview, directory: str) -> str:
    """Write ``payload`` to a new file in ``directory``; its path."""
    import tempfile

    fd, path = tempfile.mkstemp(prefix="foedus-sim-", dir=directory)
    with os.fdopen(fd, "wb") as f:
        f.write(payload)
    return path


def _process_batch_shared(model_path: str, batch: list[int], directory: str) -> list[str]:
    """A batch in a worker process: the model is read from the shared file the parent wrote
    (mapped, no copy through a pipe), each update is written to a shared file of its own;
    only the files' paths cross the pipe."""
    work: ClientWork = _PROCESS_STATE["work"]
    if _PROCESS_STATE["model"] is None:
        _PROCESS_STATE["model"] = work.make_model()
    model_msg = decode(_map(model_path))
    out = []
    for index in batch:
        update = train_client(work, _PROCESS_STATE["model"], work.make_filters(), model_msg, index)
        if update is not None:
            out.append(_share(encode(update), directory))
    return out


def _receive(path: str) -> tuple[Message, int]:
    """Decode a worker's update from its shared file, zero-copy (the arrays are views of the
    mapped pages, which live as long as they do); the file's name is removed at once."""
    try:
        view = _map(path)
    finally:
        os.unlink(path)
    return decode(view), view.nbytes


#: numeric frameworks a forkserver imports once for all the workers it forks, when the parent
#: has imported them (the job's model uses them: its evaluator was built before the pool)
_PRELOADABLE = ("torch", "sklearn", "keras", "tensorflow", "xgboost", "lightgbm")


#: how a process pool's workers may start (``None``: forkserver where available)
START_METHODS = ("forkserver", "spawn")


def _worker_context(method: str | None = None) -> Any:
    """How worker processes start: ``method``, or ``forkserver`` where available, else
    ``spawn``.

    A spawned worker starts a fresh interpreter and imports foedus and the model's framework
    itself: every worker, every job (torch: about 2 s of CPU each, two workers on two cores
    compete for them). A forkserver imports them once, the first time a pool starts in this
    process, and forks each worker from that warm interpreter; never from this process, whose
    threads (the event loop's, the aggregator's, torch's) a plain fork would copy mid-flight.
    The preload list is fixed by the first pool of the process (Python's forkserver is one
    per process); a worker imports whatever it lacks.
    """
    import multiprocessing
    import sys

    if method == "spawn" or "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(
        ["foedus.sim.engine", *(m for m in _PRELOADABLE if m in sys.modules)])
    return context


class ProcessBackend(Backend):
    """A process pool (workers forked by a forkserver that has imported the model's framework
    once, see :func:`_worker_context`): true parallelism for Python-heavy training. Client
    filters are rebuilt per batch, so stateful client filters (error feedback) need the thread
    or Ray backend.

    Models and updates do not travel through the pool's pipes (pickled, copied in and out of
    the kernel for every task): the round's model is written once to a memory-backed file that
    every worker maps, and each update is written by its worker to a file of its own, which
    the server maps and decodes in place. Only file names are pickled.
    """

    name = "process"

    def __init__(self, workers: int | None = None, start_method: str | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")
        if start_method is not None and start_method not in START_METHODS:
            raise ConfigError(f"start_method must be one of {', '.join(START_METHODS)}, "
                              f"not {start_method!r}")
        self.start_method = start_method
        self._pool: cf.ProcessPoolExecutor | None = None
        self._directory = _shared_dir()

    def start(self, work: ClientWork, spec: JobSpec) -> None:
        context = _worker_context(self.start_method)
        self._pool = cf.ProcessPoolExecutor(
            self.workers, mp_context=context,
            initializer=_process_init, initargs=(spec, context.Barrier(self.workers)),
        )
        # start every worker now (imports, data, model) so the first round is not the slow
        # one: each warm-up task waits at the barrier, so each worker takes exactly one
        list(self._pool.map(_warm, range(self.workers)))

    async def train(
        self, model_msg: Message, indices: Sequence[int]
    ) -> AsyncIterator[list[Message]]:
        assert self._pool is not None
        payload = encode(model_msg)
        size = len(payload)
        model_path = _share(payload, self._directory)
        del payload
        loop = asyncio.get_running_loop()
        self.bytes_down += size * len(indices)
        futures = [
            loop.run_in_executor(self._pool, _process_batch_shared, model_path, batch,
                                 self._directory)
            for batch in _batches(indices, self.workers)
        ]
        try:
            for next_done in asyncio.as_completed(futures):
                for path in await next_done:
                    update, nbytes_up = _receive(path)
                    self.bytes_up += nbytes_up
                    yield [update]
        finally:
            os.unlink(model_path)
            for future in futures:  # a round cut short: remove what its batches still wrote
                if future.done() and not future.cancelled() and future.exception() is None:
                    for path in future.result():
                        if os.path.exists(path):
                            os.unlink(path)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


# ---- Ray --------------------------------------------------------------------------------------
class _RayWorker:
    """A Ray actor: one model, data rebuilt from the job spec, like a process worker."""

    def __init__(self, spec: JobSpec) -> None:
        _process_init(spec)

    def run(self, model_payload: bytes, batch: list[int]) -> list[bytes]:
        return _process_batch(model_payload, batch)


class RayBackend(Backend):
    """Ray actors, one model each, on an existing cluster (``address``) or a local instance.

    Same job, same seed, same results as the local pools: data and models are rebuilt from the
    job spec inside each actor, and each client's training is reseeded per round.
    """

    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.address = address
        self._actors: list[Any] = []
        self._ray: Any = None
        self._started_ray = False

    def start(self, work: ClientWork, spec: JobSpec) -> None:
        ray = self._ray = require("ray", "ray")
        if not ray.is_initialized():
            ray.init(address=self.address, num_cpus=None if self.address else self.workers,
                     include_dashboard=False, log_to_driver=False)
            self._started_ray = True

        worker: Any = ray.remote(num_cpus=1)(_RayWorker)
        self._actors = [worker.remote(spec) for _ in range(self.workers)]

    async def train(
        self, model_msg: Message, indices: Sequence[int]
    ) -> AsyncIterator[list[Message]]:
        ray = self._ray
        payload = encode(model_msg)
        self.bytes_down += len(payload) * len(indices)
        payload_ref = ray.put(payload)
        refs = [
            self._actors[i % len(self._actors)].run.remote(payload_ref, batch)
            for i, batch in enumerate(_batches(indices, self.workers))
        ]
        for ref in refs:
            encoded = await ref
            self.bytes_up += sum(len(u) for u in encoded)
            yield [decode(u) for u in encoded]

    def close(self) -> None:
        if self._ray is not None:
            for actor in self._actors:
                self._ray.kill(actor)
            if self._started_ray:
                self._ray.shutdown()


def make_backend(name: str, workers: int | None = None, **options: Any) -> Backend:
    backends: dict[str, Callable[..., Backend]] = {
        "thread": ThreadBackend, "process": ProcessBackend, "ray": RayBackend,
    }
    if name not in backends:
        raise ConfigError(f"unknown simulation backend {name!r}; allowed: {', '.join(backends)}")
    return backends[name](workers, **options)
