"""FedAvg (McMahan et al., 2017): the sample-weighted mean of client models.

Streaming: a running weighted sum in the model's own floating dtype, so memory is O(model)
however many clients report (two model-sized buffers for the sum, the mean and up to two past
means kept for reuse, plus at most ``group`` updates held).

Speed: what bounds FedAvg is memory traffic. Folding updates in one at a time reads each update
and then reads and writes the whole sum again for every update (three passes over memory per
update, four with a separate NaN/Inf check). FedAvg instead holds up to ``group`` accepted
updates (default 16, within ``max_held_mb`` of memory: each held update is a model copy that
folding would have freed) and folds them in together: one
pass over cache-sized blocks sums the group's block in a cache-resident scratch buffer, checks
that small sum for NaN/Inf while it is still in cache, and writes ``sum + scratch`` to the
second buffer. Each update is read from memory once and the sum once per group; the blocks are
shared out over the cores (``threads``), and the last fold of a round writes the mean itself.
The NaN/Inf check rides along for free: a NaN or Inf in any update makes its block's sum
non-finite. With numba installed (extra ``fast``), large models are folded by a compiled kernel
(:mod:`foedus.aggregate.fold_kernel`) that does the group's arithmetic in one pass per block
instead of numpy's two calls per update.

Verdicts: shape and example-count checks are immediate (``accept`` raises). The NaN/Inf
verdict of an update arrives when its group is folded: inside the ``accept`` that fills the
group (raised there if that very update is bad), or in :meth:`Aggregator.settle`, which the
round collector calls when the round closes and which moves each refused update from accepted
to rejected in the round's record. A refused update leaves no trace: the fold writes into the
second buffer, so on a non-finite block the old sum is intact, the culprits (the updates with a
non-finite value in that block) are set aside and the group is folded again without them.
``group=1`` gives the immediate verdict for every update at the cost of those passes.

Precision: a float32 model is summed in float32. The rounding error of the sum of K updates is
about sqrt(K) * 2**-24 relative (K * 2**-24 at worst), below float32's own resolution of the
result for the client counts federated learning sees; a float64 model is summed in float64.

FedProx (Li et al., 2020) aggregates exactly like FedAvg; its proximal term lives on the client
side, in the model adapters' training loop, so there is no separate server aggregator for it.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from foedus.aggregate.base import Aggregator, aggregators, whole_number
from foedus.aggregate.fold_kernel import FoldKernel, fold_kernel
from foedus.aggregate.fold_kernel import available as kernel_available
from foedus.core.errors import ConfigError, RejectedUpdate
from foedus.core.message import Message

#: models with fewer values are folded on the calling thread: a thread hop costs more
PARALLEL_VALUES = 1 << 19
KERNELS = ("auto", "numba", "numpy")
# Updates one compiled pass reads at once: 10 measured fastest of 8, 10, 12 and 16 (at 16 the
# loop ran 3x slower: LLVM no longer vectorises it).
KERNEL_STREAMS = 10
# Elements per block of the fold (512 KiB of float32): the block and its scratch stay in L2,
# and each numpy call works on enough data that the interpreter overhead between calls (when
# the GIL is held and the other threads wait) stays small next to the memory traffic.
FOLD_BLOCK = 1 << 17
# one tensor's slice [start, stop) and where that tensor starts in the flat sum
Block = tuple[int, int, int, int]  # (tensor index, start, stop, offset of the tensor)
_Part = TypeVar("_Part")


aggregators.hints["fedprox"] = (
    "FedProx is not an aggregator but the clients' proximal term: set the model's mu "
    "(torch-mlp, keras-mlp) and keep aggregator fedavg")


@aggregators.register("fedavg")
class FedAvg(Aggregator):
    """Weighted mean of client parameters, weights = number of local training examples.

    ``group``: accepted updates folded in together (see the module docstring), fewer when
    that many would hold more than ``max_held_mb`` megabytes of updates (default 32: a model
    of 2 MB or less is folded 16 at a time, one of 16 MB or more one at a time, so holding
    updates never multiplies a large model's memory; a held update is a model copy that
    would otherwise be freed); ``threads``: cores the fold uses for large models (default: all, at
    most 8); ``kernel``: ``"numba"`` (the compiled fold, extra ``fast``), ``"numpy"``, or
    ``"auto"`` (numba when installed, the model has at least ``PARALLEL_VALUES`` values and
    at least two updates are folded at a time: smaller models fold in microseconds either way
    and need not wait for a compilation).
    """

    streaming = True

    def __init__(self, group: int = 16, threads: int | None = None,
                 max_held_mb: int = 32, kernel: str = "auto") -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ConfigError(f"FedAvg: kernel must be one of {', '.join(KERNELS)}, "
                              f"not {kernel!r}")
        if kernel == "numba":
            fold_kernel()  # fails now, naming the extra, if numba is missing
        self.kernel = kernel
        self._fold_kernel: FoldKernel | None = None
        self.group = whole_number("group", group, minimum=1)
        self.max_held_mb = whole_number("max_held_mb", max_held_mb, minimum=0)
        self._group_now = self.group
        cores = min(os.cpu_count() or 1, 8)
        self.threads = cores if threads is None else whole_number("threads", threads, minimum=1)
        self._pending: list[Message] = []
        self._sum: np.ndarray | None = None
        self._mean: np.ndarray | None = None
        self._spares: list[np.ndarray] = []
        self._past_means: list[np.ndarray] = []

    def describe(self) -> str:
        return f"FedAvg(group={self.group})"

    @property
    def parallelism(self) -> int:
        """Threads a pass over this round's model uses: one below ``PARALLEL_VALUES``."""
        return self.threads if self.spec.size >= PARALLEL_VALUES else 1

    def clear_round(self) -> None:
        size, dtype = self.spec.size, self.work_dtype
        kept = [*self._spares, self._sum]
        self._spares = [b for b in kept
                        if b is not None and b.shape == (size,) and b.dtype == dtype]
        # the last two results: the caller holds the newest as its global model this round,
        # and may have let go of the older one by the time this round's mean is written
        means = [*self._past_means, self._mean][-2:]
        self._past_means = [b for b in means
                            if b is not None and b.shape == (size,) and b.dtype == dtype]
        self._sum = None  # nothing folded in yet: a zero sum, never written as zeros
        self._mean = None  # the round's result, once computed
        self._weight = 0.0
        self._pending = []
        update_bytes = max(1, sum(math.prod(shape) * dtype.itemsize
                                  for shape, dtype in zip(self.spec.shapes, self.spec.dtypes,
                                                          strict=True)))
        self._group_now = max(1, min(self.group, self.max_held_mb * 2**20 // update_bytes))
        # auto: the compiled fold pays where it reads several held updates in one pass; a
        # model folded one update at a time stays on numpy (equally memory-bound there) and
        # spares the process numba's and LLVM's ~130 MB
        compiled = self.kernel == "numba" or (
            self.kernel == "auto" and size >= PARALLEL_VALUES and self._group_now >= 2
            and kernel_available())
        self._fold_kernel = fold_kernel() if compiled else None

    def accept(self, update: Message) -> None:
        if self._mean is not None:
            raise ConfigError(f"{self.describe()}: this round was already aggregated; "
                              "call reset() to start the next one")
        self.validate(update, finite=False)
        self._pending.append(update)
        self.accepted += 1
        if len(self._pending) >= self._group_now:
            self.fold_pending()
            for i, (msg, exc) in enumerate(self.late):
                if msg is update:  # this very update: refuse it now
                    del self.late[i]
                    raise exc

    def fold_pending(self, *, final: bool = False) -> None:
        """Fold in the pending updates, setting aside (into ``late``) any with NaN/Inf.

        ``final``: the round is over; fold straight into the mean (one pass fewer).
        """
        if final and self._mean is not None:
            return  # already folded into the mean
        if not self._pending:
            return
        group, self._pending = self._pending, []
        target = self._mean_buffer() if final else self._spare()
        while group:
            weight = self._weight + sum(float(m.num_examples) for m in group)
            culprits = self._fold(group, target, 1.0 / weight if final else None)
            if not culprits:
                if final:
                    self._mean = target
                else:
                    if self._sum is not None:
                        self._spares.append(self._sum)
                    self._sum, self._weight = target, weight
                return
            # target holds garbage now (the sum is intact): fold again into it without them
            for i in sorted(culprits):
                msg = group[i]
                self.accepted -= 1
                self.late.append((msg, RejectedUpdate(
                    "not_finite", f"update from {msg.sender} contains NaN or Inf")))
            group = [m for i, m in enumerate(group) if i not in culprits]

    def _spare(self) -> np.ndarray:
        """A model-sized buffer not holding the sum (kept across rounds: its pages are
        already mapped, which a fresh allocation would fault in again)."""
        if self._spares:
            return self._spares.pop()
        return np.empty(self.spec.size, dtype=self.work_dtype)

    def _mean_buffer(self) -> np.ndarray:
        """A buffer for the round's mean, which the caller keeps as its global model: a past
        round's mean that nothing references any more (no array, view or exported buffer: a
        CPython reference count of one, our list's), whose pages are already mapped, or else
        a new one (faulting in 40 MB of fresh pages measured 3-4 ms here, a quarter of the
        time it takes to read ten 40 MB updates)."""
        for i in range(len(self._past_means)):
            if sys.getrefcount(self._past_means[i]) <= 2:  # our list's, and the call's
                return self._past_means.pop(i)
        return np.empty(self.spec.size, dtype=self.work_dtype)

    def _fold(self, group: Sequence[Message], target: np.ndarray,
              scale: float | None) -> set[int]:
        """Write ``(sum + weighted sum of group) * scale`` (no scaling for ``None``) into
        ``target``; return the indices of updates with a NaN/Inf (``target`` is then garbage,
        but the sum was never written to)."""
        names = self.spec.names
        flats = [[msg.params[name].reshape(-1) for name in names] for msg in group]
        weights = [float(msg.num_examples) for msg in group]
        base = self._sum
        blocks: list[Block] = []
        offset = 0
        for index, shape in enumerate(self.spec.shapes):
            size = math.prod(shape)
            blocks += [(index, s, min(s + FOLD_BLOCK, size), offset)
                       for s in range(0, size, FOLD_BLOCK)]
            offset += size
        culprits: set[int] = set()
        failed = threading.Event()
        kernel = self._fold_kernel
        compiled = self._compiled_passes(flats, weights, target, base, scale)

        def judge(index: int, start: int, stop: int) -> bool:
            """The block came out with a NaN or Inf: set aside the updates with a NaN/Inf in
            it and stop the fold (True); if there are none, finite values overflowed into a
            legitimate infinite sum, and the fold goes on (False)."""
            bad = {j for j, flat in enumerate(flats)
                   if not _all_finite(flat[index][start:stop])}
            culprits.update(bad)
            if bad:
                failed.set()
            return bool(bad)

        def fold_part(part: Sequence[Block]) -> None:
            with np.errstate(over="ignore", invalid="ignore"):  # judged below, per block
                fold_blocks(part)

        def fold_blocks(part: Sequence[Block]) -> None:
            scratch = np.empty(FOLD_BLOCK, dtype=target.dtype)
            spill = np.empty(FOLD_BLOCK, dtype=target.dtype)
            for index, start, stop, at in part:
                if failed.is_set():
                    return
                passes = compiled[index]
                if kernel is not None and passes is not None:
                    finite = True
                    for args in passes:
                        finite = kernel(*args, start, stop) and finite
                    if not finite and judge(index, start, stop):
                        return
                    continue
                lo, hi = at + start, at + stop
                # with no sum yet and no scaling, the group sums straight into the target
                direct = base is None and scale is None
                block = target[lo:hi] if direct else scratch[: stop - start]
                tmp = spill[: stop - start]
                for j, flat in enumerate(flats):
                    x = flat[index][start:stop]
                    if j == 0:
                        np.multiply(x, weights[j], out=block, casting="unsafe")
                    else:
                        np.multiply(x, weights[j], out=tmp, casting="unsafe")
                        np.add(block, tmp, out=block)
                total = float(np.add.reduce(block))
                if not math.isfinite(total) and judge(index, start, stop):
                    return
                if scale is None:
                    if base is not None:
                        np.add(base[lo:hi], block, out=target[lo:hi])
                else:
                    if base is not None:
                        np.add(base[lo:hi], block, out=block)
                    np.multiply(block, scale, out=target[lo:hi])

        run_parts(fold_part, _split(blocks, self.parallelism))
        return culprits

    def _compiled_passes(self, flats: list[list[np.ndarray]], weights: list[float],
                         target: np.ndarray, base: np.ndarray | None,
                         scale: float | None) -> list[list[tuple[object, ...]] | None]:
        """Per tensor, the compiled kernel's calls for one block, but the block bounds
        (``None``: that tensor is folded with numpy, e.g. an integer buffer cast into a float
        sum). A group of more than ``KERNEL_STREAMS`` updates takes several calls: the first
        writes ``base + its updates`` into the target, the next add theirs to the target's
        block while it is still in cache, and the last one scales."""
        passes: list[list[tuple[object, ...]] | None] = []
        offset = 0
        coefs = np.array(weights, dtype=target.dtype)
        for index, shape in enumerate(self.spec.shapes):
            size = math.prod(shape)
            tensor = [flat[index] for flat in flats]
            if self._fold_kernel is None or any(x.dtype != target.dtype for x in tensor):
                passes.append(None)
                offset += size
                continue
            # one array type for the whole tuple (numba compiles per element type)
            updates = tuple(_read_only(x) for x in tensor)
            out = target[offset:offset + size]
            onto = None if base is None else base[offset:offset + size]
            calls: list[tuple[object, ...]] = []
            for first in range(0, len(updates), KERNEL_STREAMS):
                last = first + KERNEL_STREAMS >= len(updates)
                calls.append((out, onto, coefs[first:first + KERNEL_STREAMS],
                              updates[first:first + KERNEL_STREAMS],
                              1.0 if scale is None or not last else scale))
                onto = out
            passes.append(calls)
            offset += size
        return passes

    def result_vector(self) -> np.ndarray:
        return self.mean_vector()

    def mean_vector(self) -> np.ndarray:
        """The weighted mean of the round's updates (in :attr:`work_dtype`); the round takes
        no more updates after this."""
        if self._mean is None:
            self.fold_pending(final=True)
            if self._mean is None:  # everything was folded before: only the scaling is left
                if self._sum is None:
                    self._mean = np.zeros(self.spec.size, dtype=self.work_dtype)
                else:
                    self._mean = np.multiply(self._sum, 1.0 / self._weight,
                                             out=self._mean_buffer())
        return self._mean


def _split(blocks: list[Block], parts: int) -> list[list[Block]]:
    """``blocks`` cut into at most ``parts`` contiguous runs of about equal element counts."""
    if parts <= 1 or len(blocks) <= 1:
        return [blocks]
    total = sum(stop - start for _, start, stop, _ in blocks)
    runs: list[list[Block]] = [[]]
    done = 0
    for block in blocks:
        if done >= total * len(runs) / parts and len(runs) < parts:
            runs.append([])
        runs[-1].append(block)
        done += block[2] - block[1]
    return [run for run in runs if run]


def _read_only(x: np.ndarray) -> np.ndarray:
    """A read-only view of ``x``: received updates are read-only buffers, local ones are not,
    and the compiled kernel needs one array type for all of them."""
    view = x.view()
    view.flags.writeable = False
    return view


def _all_finite(x: np.ndarray) -> bool:
    return x.dtype.kind not in "fc" or bool(np.isfinite(x).all())


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _worker_pool(threads: int) -> ThreadPoolExecutor:
    """One long-lived pool per thread count: starting threads every fold would cost more than
    the fold of a mid-sized model."""
    with _POOLS_LOCK:
        if threads not in _POOLS:
            _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="foedus-fedavg")
        return _POOLS[threads]


def run_parts(work: Callable[[_Part], None], parts: Sequence[_Part]) -> None:
    """``work`` on every part, one thread each; a single part runs on the calling thread (a
    thread hop costs more than a small model's work)."""
    if len(parts) == 1:
        work(parts[0])
        return
    for future in [_worker_pool(len(parts)).submit(work, part) for part in parts]:
        future.result()
