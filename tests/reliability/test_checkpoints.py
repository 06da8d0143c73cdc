"""Checkpoints: written atomically every round, and a damaged latest one falls back to the
previous one with a clear message instead of losing the job's progress."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from foedus.aggregate.fedavg import FedAvg
from foedus.codec import decode, encode
from foedus.core.errors import CodecError
from foedus.core.message import Kind
from foedus.core.runtime import Runtime
from foedus.roles.checkpoint import Checkpointer, CheckpointError
from foedus.roles.server import ServerPod
from foedus.topology.centralized import server_graph, topics
from foedus.transport.local import LocalTransport

JOB = "ckpt-job"


async def run_server(rounds: int, checkpointer: Checkpointer) -> ServerPod:
    """A server with two scripted clients answering 1.0 and 3.0 on the in-process transport."""
    server = ServerPod(job_id=JOB, initial_params={"w": np.zeros(3)}, aggregator=FedAvg(),
                       rounds=rounds, expected_clients=2, round_timeout=5,
                       checkpointer=checkpointer)
    transport = LocalTransport()
    t = topics(JOB)

    async def client(name: str, value: float) -> None:
        sub = await transport.subscribe(t.model)
        async for payload in sub:
            model = decode(payload)
            if model.kind is Kind.CONTROL:
                return
            update = model.reply(Kind.UPDATE, name, num_examples=1,
                                 params={"w": model.params["w"] + value})
            await transport.publish(t.updates, encode(update))

    tasks = [asyncio.create_task(client("a", 1.0)), asyncio.create_task(client("b", 3.0))]
    await asyncio.sleep(0.01)
    async with Runtime(server_graph(server, transport)) as runtime:
        await asyncio.wait_for(runtime.wait(), 30)
    await asyncio.gather(*tasks)
    return server


def save(ckpt: Checkpointer, rnd: int) -> None:
    ckpt.save(rnd, {"w": np.full(3, float(rnd))}, {"moment": np.full(3, rnd / 10), "step": rnd},
              [{"round": r} for r in range(1, rnd + 1)])


async def test_every_round_is_checkpointed_with_the_previous_one_kept(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path, JOB)
    server = await run_server(3, ckpt)
    latest, previous = ckpt.read(ckpt.path), ckpt.read(ckpt.backup_path(1))
    assert (latest.round, previous.round) == (3, 2)
    np.testing.assert_allclose(latest.params["w"], server.params["w"])  # 3 rounds of +2
    assert [r["round"] for r in latest.history] == [1, 2, 3]
    assert not list(tmp_path.glob("*.tmp"))  # nothing half-written left behind


def test_aggregator_state_with_arrays_round_trips(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path, JOB)
    save(ckpt, 4)
    loaded = ckpt.load()
    assert loaded is not None and loaded.round == 4
    np.testing.assert_allclose(loaded.aggregator_state["moment"], 0.4)
    assert loaded.aggregator_state["step"] == 4


@pytest.mark.parametrize("damage", [
    lambda b: b[: len(b) // 2],  # torn write
    lambda b: b[:-1] + bytes([b[-1] ^ 1]),  # one flipped bit
    lambda b: b"",  # emptied
    lambda b: encode(decode(b).replace(job_id="another-job")),  # a checkpoint of another job
])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage,  # type: ignore[no-untyped-def]
) -> None:
    ckpt = Checkpointer(tmp_path, JOB)
    save(ckpt, 1)
    save(ckpt, 2)
    ckpt.path.write_bytes(damage(ckpt.path.read_bytes()))
    with caplog.at_level(logging.ERROR, logger="foedus.checkpoint"):
        loaded = Checkpointer(tmp_path, JOB).load()
    assert loaded is not None and loaded.round == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("unreadable" in m and str(ckpt.path) in m for m in messages), messages
    assert any("resumes from the older checkpoint" in m and "round 1" in m for m in messages)


def test_when_no_checkpoint_is_readable_loading_fails_loudly(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path, JOB)
    save(ckpt, 1)
    save(ckpt, 2)
    for path in ckpt.candidates():
        path.write_bytes(b"FOED" + bytes(40))
    with pytest.raises(CodecError, match=f"no readable checkpoint for job '{JOB}'"):
        ckpt.load()


def test_a_crash_at_any_step_of_saving_leaves_a_complete_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_replace = os.replace
    for crash_at in range(3):  # each rename of a save (rotate .1 -> .2 has nothing to move)
        directory = tmp_path / str(crash_at)
        ckpt = Checkpointer(directory, JOB, backups=2)
        save(ckpt, 1)
        save(ckpt, 2)
        calls = [0]

        def failing(
            src: object, dst: object, crash_at: int = crash_at, calls: list[int] = calls,
        ) -> None:
            calls[0] += 1
            if calls[0] > crash_at:
                raise OSError("power cut")
            real_replace(src, dst)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "replace", failing)
        with pytest.raises(OSError):
            save(ckpt, 3)
        monkeypatch.setattr(os, "replace", real_replace)
        loaded = Checkpointer(directory, JOB, backups=2).load()
        assert loaded is not None and loaded.round in (2, 3), crash_at


async def test_a_server_whose_latest_checkpoint_is_damaged_resumes_from_the_one_before(
    tmp_path: Path,
) -> None:
    first = await run_server(3, Checkpointer(tmp_path, JOB))
    ckpt = Checkpointer(tmp_path, JOB)
    ckpt.path.write_bytes(ckpt.path.read_bytes()[:100])  # round 3's checkpoint is torn
    second = await run_server(5, Checkpointer(tmp_path, JOB))
    assert [r.round for r in second.history] == [1, 2, 3, 4, 5]  # round 3 was run again
    assert [r.accepted for r in second.history] == [2] * 5
    # the model continues from round 2's: five rounds of +2 in all, none lost or doubled
    np.testing.assert_allclose(second.params["w"], 10.0)
    np.testing.assert_allclose(first.params["w"], 6.0)


# ---- CRC-valid checkpoints are checked too, and a job never starts over silently ----------
def honest(ckpt: Checkpointer, rnd: int) -> bytes:
    """A checkpoint of round ``rnd`` as the server writes it."""
    return ckpt.encode(rnd, {"w": np.full(3, float(rnd))}, {"step": rnd},
                       [{"round": r, "accepted": 2} for r in range(1, rnd + 1)])


INVALID = {  # what is wrong -> (a checkpoint of round 2 with a correct CRC, the reason logged)
    "round zero": (lambda c: c.encode(0, {"w": np.ones(3)}, {}, []), "round 0 is outside"),
    "absurd round": (lambda c: c.encode(2**40, {"w": np.ones(3)}, {}, []), "is outside 1.."),
    "NaN parameters": (lambda c: c.encode(2, {"w": np.full(3, np.nan)}, {}, []),
                       "holds NaN or Inf"),
    "another model's shapes": (lambda c: c.encode(2, {"w": np.ones(7)}, {}, []),
                               "not this job's model (wrong_shape"),
    "unknown history fields": (lambda c: c.encode(2, {"w": np.ones(3)}, {},
                                                  [{"round": 1, "evil": 1}]),
                               "history[0] has unknown fields ['evil']"),
    "history beyond its round": (lambda c: c.encode(2, {"w": np.ones(3)}, {},
                                                    [{"round": 1}, {"round": 9}]),
                                 "history[1] names round 9"),
    "history not records": (lambda c: c.encode(2, {"w": np.ones(3)}, {}, [[1, 2]]),
                            "history[0] is not a round record"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_a_crc_valid_but_invalid_checkpoint_is_refused_with_its_reason_and_the_older_one_used(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture,
) -> None:
    ckpt = Checkpointer(tmp_path, JOB)
    make, reason = INVALID[case]
    ckpt.backup_path(1).write_bytes(honest(ckpt, 1))
    ckpt.path.write_bytes(make(ckpt))
    with caplog.at_level(logging.ERROR):
        loaded = ckpt.load(like={"w": np.zeros(3)})
    assert loaded is not None and loaded.round == 1
    refusal = caplog.records[0].getMessage()
    assert str(ckpt.path) in refusal and reason in refusal, refusal
    assert not any(r.exc_info for r in caplog.records)


def test_when_every_checkpoint_is_invalid_loading_refuses_naming_the_directory(
    tmp_path: Path,
) -> None:
    ckpt = Checkpointer(tmp_path, JOB)
    ckpt.path.write_bytes(ckpt.encode(1, {"w": np.full(3, np.inf)}, {}, []))
    with pytest.raises(CheckpointError) as refused:
        ckpt.load()
    message = str(refused.value)
    assert "\n" not in message and f"directory {str(tmp_path)!r}" in message
    assert "refusing to start over from round 1" in message and "NaN or Inf" in message


async def test_a_server_whose_checkpoints_are_all_invalid_refuses_to_start(
    tmp_path: Path,
) -> None:
    ckpt = Checkpointer(tmp_path, JOB)
    foreign = ckpt.encode(4, {"other": np.ones(2)}, {}, [])  # another model's checkpoint
    ckpt.path.write_bytes(foreign)
    server = ServerPod(job_id=JOB, initial_params={"w": np.zeros(3)}, aggregator=FedAvg(),
                       rounds=3, expected_clients=2, round_timeout=5, checkpointer=ckpt)
    transport = LocalTransport()
    async with Runtime(server_graph(server, transport)) as runtime:
        await asyncio.wait_for(runtime.wait(), 30)
    [failure] = runtime.stats.failures
    assert failure.wire == "run" and isinstance(failure.cause, CheckpointError)
    assert "not this job's model (wrong_names" in str(failure)
    assert server.history == []  # no round 1 over the job's progress
    assert ckpt.path.read_bytes() == foreign  # left for its owner to look at


def test_junk_never_pushes_a_valid_checkpoint_out_when_saving(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path, JOB, backups=2)
    ckpt.backup_path(2).write_bytes(honest(ckpt, 1))
    ckpt.backup_path(1).write_bytes(b"FOED junk")
    ckpt.path.write_bytes(ckpt.encode(3, {"w": np.full(3, np.nan)}, {}, []))  # CRC-valid junk
    save(ckpt, 2)
    # round 1 survived two newer junk files, which took no slot and were overwritten
    assert [ckpt.read(p).round for p in ckpt.candidates() if p.exists()] == [2, 1]
    save(ckpt, 3)
    save(ckpt, 4)
    assert [ckpt.read(p).round for p in ckpt.candidates()] == [4, 3, 2]
