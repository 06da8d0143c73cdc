"""The process backend's own machinery: the same-machine shared files models and updates cross
in, the workers' numeric thread counts and malloc, and the pool's files removed when it closes."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import AsyncGenerator
from pathlib import Path

import numpy as np
import pytest

from foedus.config.spec import ClientSection, DataSection, JobSpec, Plugin
from foedus.core.errors import CodecError
from foedus.core.message import Kind, Message
from foedus.sim import backends, shared
from foedus.sim.engine import run_simulation


def _update() -> Message:
    params: dict[str, np.ndarray] = {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b": np.array(2.5, dtype=np.float64),  # 0-d stays 0-d
        "steps": np.array([7, -1], dtype=np.int64),
        "empty": np.zeros((0, 5), dtype=np.float32),
        "strided": np.arange(10, dtype=np.float32)[::2],  # not contiguous
    }
    return Message.create(Kind.UPDATE, job_id="j", round=3, sender="client-001",
                          recipient="server", params=params, num_examples=42,
                          metrics={"train_loss": 0.5}, meta={"selected": ["client-001"]})


def test_a_shared_file_gives_back_the_message_it_was_written_from(tmp_path: Path) -> None:
    sent = _update()
    path, size = shared.write_new(sent, str(tmp_path), prefix="update-")
    assert os.path.getsize(path) == size
    got, read_size = shared.read(path)
    assert read_size == size
    assert (got.header, got.num_examples, dict(got.metrics), dict(got.meta), got.error) == (
        sent.header, sent.num_examples, dict(sent.metrics), dict(sent.meta), sent.error)
    assert list(got.params) == list(sent.params)
    for name, value in sent.params.items():
        assert got.params[name].dtype == value.dtype and got.params[name].shape == value.shape
        np.testing.assert_array_equal(got.params[name], value)
        assert not got.params[name].flags.writeable


@pytest.mark.parametrize("damage", ["magic", "truncated", "empty"])
def test_a_shared_file_its_writer_did_not_finish_is_refused(tmp_path: Path, damage: str) -> None:
    """A worker that dies mid-write leaves a file without its magic (written last) or shorter
    than its prefix announces: never read as a valid update."""
    path, size = shared.write_new(_update(), str(tmp_path), prefix="update-")
    with open(path, "r+b") as f:
        if damage == "magic":
            f.write(bytes(8))
        elif damage == "truncated":
            f.truncate(size - 8)
        else:
            f.truncate(0)
    with pytest.raises(CodecError, match="not a finished shared message"):
        shared.read(path)


def test_workers_share_the_cores_out_unless_the_user_set_thread_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(backends, "_cores", lambda: 8)
    assert [backends.worker_threads(w) for w in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    before = torch.get_num_threads()
    try:
        for name in backends.THREAD_ENV:
            monkeypatch.delenv(name, raising=False)
        backends._limit_threads(1)
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        backends._limit_threads(1)  # the user's setting stands
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


_FREED_MEMORY_PROBE = """
import resource, sys
import numpy as np
from foedus.sim import backends

kept = backends._keep_freed_memory()


def client() -> None:  # a training step's shape: several model-sized buffers, then none
    buffers = [np.ones(4_600_000, np.float32) for _ in range(3)]
    del buffers


client()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    client()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc")
@pytest.mark.parametrize("user_setting", [None, "MALLOC_TRIM_THRESHOLD_"])
def test_a_worker_reuses_the_memory_it_freed_unless_the_user_tuned_malloc(
    user_setting: str | None,
) -> None:
    """Five more clients' worth of 18 MB buffers: no fresh page for any of them in a worker
    (each fresh 4 KiB page is a fault and a zeroing, a fifth of a client's training on a
    4.77M-parameter model); thousands when the user's own malloc setting stands."""
    env = {k: v for k, v in os.environ.items()
           if k not in backends.MALLOC_ENV and k != "GLIBC_TUNABLES"}
    if user_setting:
        env[user_setting] = "0"  # trim everything freed
    done = subprocess.run([sys.executable, "-c", _FREED_MEMORY_PROBE], env=env,
                          capture_output=True, text=True, check=True)
    kept, faults = done.stdout.split()
    if user_setting is None:
        assert kept == "True" and int(faults) < 100
    else:
        assert kept == "False" and int(faults) > 4_000


async def test_the_pools_shared_files_are_gone_when_the_job_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pools: list[backends.ProcessBackend] = []
    close = backends.ProcessBackend.close

    def record(self: backends.ProcessBackend) -> None:
        pools.append(self)
        close(self)

    monkeypatch.setattr(backends.ProcessBackend, "close", record)
    job = JobSpec(job_id="sim-files", rounds=2, data=DataSection(partition="iid"),
                  clients=ClientSection(count=6), model=Plugin("torch-mlp", {"hidden": [8]}))
    result = await run_simulation(job, backend="process", workers=2)
    assert len(result.history) == 2 and result.extra["bytes_up"] > 0
    [pool] = pools
    assert pool._directory is not None and not os.path.exists(pool._directory)


def _slots_round(slots: shared.UpdateSlots, sent: Message) -> tuple[str, Message]:
    """A worker's part (write into a slot taken from ``slots``) and the parent's (receive)."""
    slot = slots.take()
    size = shared.write_to(sent, slot)
    return slot, slots.receive(slot, size)


def test_an_update_slot_takes_the_next_update_only_once_the_last_one_is_let_go(
    tmp_path: Path,
) -> None:
    slots = shared.UpdateSlots(str(tmp_path), keep=4)
    first_slot, first = _slots_round(slots, _update())
    assert slots.take() != first_slot  # still held: never written over
    kept = first.params["w"]
    del first
    assert slots.take() != first_slot  # one array still alive holds the slot
    del kept
    assert slots.take() == first_slot  # all gone: reused
    bigger = _update().replace(params={"w": np.full((50, 50), 3.0, dtype=np.float32)})
    size = shared.write_to(bigger, first_slot)  # a reused slot grows to the new message
    got = slots.receive(first_slot, size)
    np.testing.assert_array_equal(got.params["w"], bigger.params["w"])


def test_free_slots_beyond_what_the_pool_keeps_are_removed(tmp_path: Path) -> None:
    slots = shared.UpdateSlots(str(tmp_path), keep=1)
    held = [_slots_round(slots, _update()) for _ in range(3)]
    paths = [slot for slot, _ in held]
    held.clear()  # all three let go: one is kept for reuse, two removed
    [left] = list(tmp_path.iterdir())
    assert str(left) in paths and slots.take() == str(left)
    slots.close()


def _process_job(clients: int) -> JobSpec:
    # max_held_mb 0: FedAvg folds each update in as it comes and lets it go, as it does a
    # large model's (small ones it holds to fold several at once)
    return JobSpec(job_id="sim-slots", rounds=1, data=DataSection(partition="iid"),
                   clients=ClientSection(count=clients),
                   model=Plugin("torch-mlp", {"hidden": [8]}),
                   aggregator=Plugin("fedavg", {"max_held_mb": 0}))


async def test_a_round_reuses_a_few_slots_and_one_cut_short_gives_its_slots_back() -> None:
    from foedus.config.parts import build_parts
    from foedus.sim.engine import client_work

    job = _process_job(clients=12)
    parts = build_parts(job)
    pool = backends.ProcessBackend(workers=2)
    try:
        pool.start(client_work(job, parts), job)
        model = Message.create(Kind.MODEL, job_id=job.job_id, round=1, sender="server",
                               params=parts.evaluator().get_params())
        updates = 0
        async for [update] in pool.train(model, range(12)):
            assert update.kind is Kind.UPDATE and update.params
            updates += 1
            del update  # folded in and let go, as FedAvg does
        assert pool._slots is not None
        window = backends.TASKS_PER_WORKER * pool.workers
        assert updates == 12 and pool._slots.made <= window + 1
        made = pool._slots.made
        cut = pool.train(model.replace(round=2), range(12))
        assert isinstance(cut, AsyncGenerator)
        [first] = await anext(cut)
        await cut.aclose()  # the round ends with tasks still queued or training
        del first
        async for _ in pool.train(model.replace(round=3), range(12)):
            pass
        assert pool._slots.made <= made + window + 1  # round 2's slots came back
    finally:
        pool.close()
