"""The process backend's own machinery: the same-machine shared files models and updates cross
in, the workers' numeric thread counts, and the pool's files removed when it closes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from foedus.config.spec import ClientSection, DataSection, JobSpec, Plugin
from foedus.core.errors import CodecError
from foedus.core.message import Kind, Message
from foedus.sim import backends
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
    path, size = backends._write_shared(sent, str(tmp_path))
    assert os.path.getsize(path) == size
    got, read_size = backends._receive(path)
    assert not os.path.exists(path) and read_size == size
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
    path, size = backends._write_shared(_update(), str(tmp_path))
    with open(path, "r+b") as f:
        if damage == "magic":
            f.write(bytes(8))
        elif damage == "truncated":
            f.truncate(size - 8)
        else:
            f.truncate(0)
    with pytest.raises(CodecError, match="not a finished shared message"):
        backends._read_shared(path)


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
