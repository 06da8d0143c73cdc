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
import functools
import os
import shutil
import sys
import tempfile
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
from foedus.sim import shared


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
    *, peek: bool = False,
) -> Message | None:
    """One client's local round, as a ClientPod would do it. Returns the filtered update, or
    an error message (errors travel as values), or None if a filter dropped it on purpose.
    ``peek``: the update may share memory with ``model`` (see
    :meth:`~foedus.models.base.ModelAdapter.peek_params`), for a caller that is done with it
    before the model trains again."""
    client = work.ids[index]
    try:
        for f in filters:
            if wants_model(f):  # as the topology's model wire would
                f.handler(MODEL_WIRE)(model_msg)
        model.set_params(model_msg.params)
        model.begin_round(task_seed(work.seed, client, model_msg.round))
        train_metrics = model.fit(work.shares[index], epochs=work.epochs)
        update: Message | None = model_msg.reply(
            Kind.UPDATE, client, params=model.peek_params() if peek else model.get_params(),
            num_examples=len(work.shares[index]),
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

    def launch(self, spec: JobSpec) -> None:
        """Begin what takes long and needs only the job spec (worker processes importing
        the model's framework, building their data), in the background: the engine calls it
        before it builds the job's own parts, so the two overlap. :meth:`start` waits for it."""

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

#: environment variables by which a user sets numeric libraries' thread counts: if any is set,
#: worker processes leave thread counts alone
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _cores() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_threads(workers: int) -> int:
    """Numeric threads per worker process: the cores shared out, at least one."""
    return max(1, _cores() // workers)


def _limit_threads(threads: int) -> None:
    """Cap this worker's numeric thread pools at ``threads``, unless the user set them.

    Each worker process would otherwise start torch's (and BLAS's) pools at one thread per
    core: two workers on two cores ran four compute threads, which fight over the cores and
    their caches. The thread backend's threads share one process's pools."""
    if any(os.environ.get(name) for name in THREAD_ENV):
        return
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(threads)


#: glibc's ``mallopt`` parameters (malloc.h) and the largest mmap threshold it accepts (64-bit)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 << 20
#: environment variables by which a user tunes glibc's malloc: if any is set, workers leave it
MALLOC_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")


def _keep_freed_memory() -> bool:
    """Have this worker's malloc keep the memory it frees for the next client (glibc only;
    whether it did).

    Training a client allocates model-sized buffers (gradients, optimizer temporaries) and
    frees them; glibc hands blocks that large back to the kernel (an mmap of their own, or a
    trim of the heap's top), so the next client's buffers are fresh pages again: a page fault
    and a zeroed page per 4 KiB, about a fifth of each client's training on a 4.77M-parameter
    MLP. A worker trains client after client with the same buffer sizes, so it keeps its
    peak instead: blocks up to 32 MiB come from the heap and the heap is never trimmed. The
    thread backend leaves the caller's process alone. A user who tunes malloc through the
    environment keeps their settings."""
    if any(os.environ.get(name) for name in MALLOC_ENV) or "glibc.malloc." in os.environ.get(
            "GLIBC_TUNABLES", ""):
        return False
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
                and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def _process_init(spec: JobSpec, ready: Any = None, threads: int | None = None) -> None:
    """Runs once in each worker process: rebuild the job's data and one model from the spec.
    ``ready``: the pool's barrier (see :func:`_warm`); ``threads``: numeric threads for this
    worker (see :func:`_limit_threads`)."""
    from foedus.config.parts import build_parts
    from foedus.sim.engine import client_work

    # a worker runs no server: no evaluation set to read, no MLOps integration to start
    parts = build_parts(spec, server_data=False)
    _PROCESS_STATE["work"] = client_work(spec, parts)
    # the model build_parts made for its pairing check becomes this worker's one model
    # (each client's round loads the global model into it first): one model build fewer
    _PROCESS_STATE["model"] = parts.evaluator()
    _PROCESS_STATE["ready"] = ready
    _PROCESS_STATE["broadcast"] = None
    if threads is not None:
        _limit_threads(threads)
    _keep_freed_memory()


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
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def _broadcast(path: str) -> Message:
    """The round's global model, read from its shared file once per worker per round (a
    worker's later clients of the round reuse it); the last round's mapping is let go first."""
    cached = _PROCESS_STATE.get("broadcast")
    if cached is None or cached[0] != path:
        _PROCESS_STATE["broadcast"] = None
        cached = _PROCESS_STATE["broadcast"] = (path, shared.read(path)[0])
    message: Message = cached[1]
    return message


def _give_back_after(slots: shared.UpdateSlots, slot: str, _: cf.Future[int | None]) -> None:
    """Done callback of a task whose round ended without it: its slot is free now."""
    slots.give_back(slot)


def _train_into(model_path: str, index: int, slot: str) -> int | None:
    """One client in a worker process: the model is read from the shared file the parent
    wrote (mapped, no copy through a pipe), the update written into the slot the parent handed
    this task (see :class:`~foedus.sim.shared.UpdateSlots`); its size crosses the pipe, or
    ``None`` when a filter dropped the update."""
    work: ClientWork = _PROCESS_STATE["work"]
    if _PROCESS_STATE["model"] is None:
        _PROCESS_STATE["model"] = work.make_model()
    # the update is written out before this worker's model trains again: no copy of its own
    update = train_client(work, _PROCESS_STATE["model"], work.make_filters(),
                          _broadcast(model_path), index, peek=True)
    return None if update is None else shared.write_to(update, slot)


#: numeric frameworks a forkserver imports once for all the workers it forks: those the job's
#: model needs (see :func:`_frameworks`) and those this process has imported
_PRELOADABLE = ("torch", "sklearn", "keras", "tensorflow", "xgboost", "lightgbm")


def _frameworks(spec: JobSpec) -> list[str]:
    """What a forkserver started before this process builds the job should import for every
    worker: the module of the job's model and the numeric framework it needs, found without
    importing the framework. The framework is the module's declared ``REQUIRES_EXTRA`` if that
    is one of :data:`_PRELOADABLE`, else the first of them its module's name contains
    (``foedus.models.sklearn``). A miss costs time, never correctness: a worker imports what
    it lacks."""
    from importlib.util import find_spec

    from foedus.models.base import models

    try:
        factory = models.get(spec.model.type)
    except ConfigError:
        return []  # building the job's parts names the mistake
    module_name = getattr(factory, "__module__", "")
    module = sys.modules.get(module_name)
    extra = getattr(module, "REQUIRES_EXTRA", None)
    framework = extra if extra in _PRELOADABLE else next(
        (name for name in _PRELOADABLE if name in module_name.split(".")[-1]), None)
    names = [module_name] if module is not None else []
    if framework is not None and find_spec(framework) is not None:
        names.append(framework)
    return names


#: clients handed to each process worker at a time: one training, one ready to start
TASKS_PER_WORKER = 2
#: free update slots a process pool keeps per worker (each model-sized, in memory)
SLOTS_KEPT_PER_WORKER = 3

#: how a process pool's workers may start (``None``: forkserver where available)
START_METHODS = ("forkserver", "spawn")


def _worker_context(method: str | None = None, preload: Sequence[str] = ()) -> Any:
    """How worker processes start: ``method``, or ``forkserver`` where available, else
    ``spawn``.

    A spawned worker starts a fresh interpreter and imports foedus and the model's framework
    itself: every worker, every job (torch: about 2 s of CPU each, two workers on two cores
    compete for them). A forkserver imports them once, the first time a pool starts in this
    process, and forks each worker from that warm interpreter; never from this process, whose
    threads (the event loop's, the aggregator's, torch's) a plain fork would copy mid-flight.
    It imports ``preload`` and the frameworks this process has imported. The preload list is
    fixed by the first pool of the process (Python's forkserver is one per process); a worker
    imports whatever it lacks.
    """
    import multiprocessing

    if method == "spawn" or "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    modules = ["foedus.sim.engine", *preload,
               *(m for m in _PRELOADABLE if m in sys.modules and m not in preload)]
    context.set_forkserver_preload(modules)
    return context


class ProcessBackend(Backend):
    """A process pool (workers forked by a forkserver that has imported the model's framework
    once, see :func:`_worker_context`): true parallelism for Python-heavy training. Client
    filters are rebuilt for each client's task, so stateful client filters (error feedback)
    need the thread or Ray backend.

    Models and updates do not travel through the pool's pipes (pickled, copied in and out of
    the kernel for every task): the round's model is written once to a memory-backed file that
    every worker maps once per round, and each update is written by its worker into a slot,
    a file the parent hands the task and reads in place, which takes another update once the
    aggregator has let go of this one (see :mod:`foedus.sim.shared`). Only file names and sizes
    are pickled. Each client is a task of its own and at most two per worker are handed out at
    a time, so a worker never waits for work, updates reach the aggregator one by one as they
    are trained, and a round needs only a few slots, not one per client. The files live in a
    directory of the pool's own, removed when the pool closes.

    Start-up: :meth:`launch` starts the workers in the background (the forkserver importing
    the model's framework, each worker building its data and model) while the engine builds
    the job's own parts; :meth:`start` waits until every worker is ready. Each worker runs
    numeric libraries on ``cores // workers`` threads (see :func:`_limit_threads`).
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
        self._directory: str | None = None
        self._slots: shared.UpdateSlots | None = None
        self._launcher: threading.Thread | None = None
        self._warming: list[cf.Future[None]] = []
        self._launch_error: BaseException | None = None
        self._broadcasts = 0

    def launch(self, spec: JobSpec) -> None:
        if self._pool is not None:
            return
        self._directory = tempfile.mkdtemp(prefix="foedus-sim-", dir=_shared_dir())
        self._slots = shared.UpdateSlots(self._directory, keep=SLOTS_KEPT_PER_WORKER * self.workers)
        context = _worker_context(self.start_method, _frameworks(spec))
        self._pool = cf.ProcessPoolExecutor(
            self.workers, mp_context=context, initializer=_process_init,
            initargs=(spec, context.Barrier(self.workers), worker_threads(self.workers)),
        )
        pool = self._pool

        def submit() -> None:
            # each submission forks a worker, which waits for the forkserver's imports: off
            # the caller's thread, so that it can build the job meanwhile
            try:
                # each warm-up task waits at the barrier, so each worker takes exactly one
                self._warming = [pool.submit(_warm, i) for i in range(self.workers)]
            except BaseException as exc:
                self._launch_error = exc

        self._launcher = threading.Thread(target=submit, name="foedus-sim-launch", daemon=True)
        self._launcher.start()

    def start(self, work: ClientWork, spec: JobSpec) -> None:
        self.launch(spec)
        assert self._launcher is not None
        # every worker started (imports, data, model) before round 1, so it is not the slow one
        self._launcher.join()
        if self._launch_error is not None:
            raise self._launch_error
        for future in self._warming:
            future.result()

    async def train(
        self, model_msg: Message, indices: Sequence[int]
    ) -> AsyncIterator[list[Message]]:
        pool, slots = self._pool, self._slots
        assert pool is not None and slots is not None
        self._broadcasts += 1  # in the name: a worker's cached model is never a stale one
        model_path, size = shared.write_new(model_msg, slots.directory,
                                            prefix=f"model-{self._broadcasts}-")
        self.bytes_down += size * len(indices)
        loop = asyncio.get_running_loop()
        finished: asyncio.Queue[cf.Future[int | None]] = asyncio.Queue()
        running: dict[cf.Future[int | None], str] = {}  # each task's slot
        waiting = iter(indices)

        def hand_out() -> None:
            index = next(waiting, None)
            if index is None:
                return
            slot = slots.take()
            task = pool.submit(_train_into, model_path, index, slot)
            running[task] = slot
            asyncio.wrap_future(task, loop=loop).add_done_callback(
                lambda _: finished.put_nowait(task))

        for _ in range(TASKS_PER_WORKER * self.workers):
            hand_out()
        try:
            for _ in indices:
                task = await finished.get()
                slot = running.pop(task)
                hand_out()
                written = task.result()  # a broken pool raises here
                if written is None:  # a filter dropped the update
                    slots.give_back(slot)
                    continue
                self.bytes_up += written
                yield [slots.receive(slot, written)]
        finally:
            os.unlink(model_path)  # a worker that has it mapped keeps reading it
            for task, slot in running.items():  # a round cut short
                if task.cancel():
                    slots.give_back(slot)
                else:  # already running: its slot is free once it ends
                    task.add_done_callback(functools.partial(_give_back_after, slots, slot))

    def close(self) -> None:
        if self._launcher is not None:
            self._launcher.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._slots is not None:
            self._slots.close()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)


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
