"""Server checkpoints: the global model, the round reached and the aggregator's state on disk.

Written atomically in the foedus wire format (so loading never unpickles anything, and its
CRC-32 detects a damaged file): the new checkpoint goes to a temporary file which is flushed to
disk, the current one is moved aside as ``<job>.ckpt.1`` (``.2`` ... up to ``backups``), and only
then is the temporary file renamed into place. A crash at any moment leaves at least one complete
checkpoint. :meth:`Checkpointer.load` returns the newest checkpoint that reads back intact; when
the newest is damaged (a torn write on a disk without atomic rename, bit rot, a truncated copy)
it says so in an ERROR log line and falls back to the previous one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from foedus.codec import decode, encode
from foedus.core.errors import CodecError, ConfigError
from foedus.core.message import Kind, Message
from foedus.core.params import Params

log = logging.getLogger("foedus.checkpoint")


@dataclass(frozen=True)
class Checkpoint:
    round: int
    params: dict[str, np.ndarray]
    aggregator_state: dict[str, Any]
    history: list[dict[str, Any]]
    #: small msgpack-able state of other server parts, by name (e.g. the privacy accountant)
    extra_state: dict[str, Any] = field(default_factory=dict)


class Checkpointer:
    """Saves and loads the checkpoints of one job in ``directory``: the latest in ``path``, and
    ``backups`` older ones beside it to fall back on."""

    def __init__(self, directory: str | Path, job_id: str, *, backups: int = 1) -> None:
        if isinstance(backups, bool) or not isinstance(backups, int) or backups < 0:
            raise ConfigError(f"backups: expected an integer >= 0, got {backups!r}")
        self.path = Path(directory) / f"{job_id}.ckpt"
        self.job_id = job_id
        self.backups = backups

    def backup_path(self, n: int) -> Path:
        """The ``n``-th previous checkpoint (1 = the one before the latest)."""
        return self.path.with_name(f"{self.path.name}.{n}")

    def candidates(self) -> list[Path]:
        """Checkpoint files, newest first."""
        return [self.path, *(self.backup_path(n) for n in range(1, self.backups + 1))]

    def save(
        self, round: int, params: Params, aggregator_state: dict[str, Any],
        history: list[dict[str, Any]], extra_state: dict[str, Any] | None = None,
    ) -> None:
        # aggregator state may hold arrays (optimiser moments): store them as parameters
        arrays = {f"param/{k}": np.asarray(v) for k, v in params.items()}
        plain_state: dict[str, Any] = {}
        for key, value in aggregator_state.items():
            if isinstance(value, np.ndarray):
                arrays[f"state/{key}"] = value
            else:
                plain_state[key] = value
        msg = Message.create(
            Kind.CONTROL, job_id=self.job_id, round=round, sender="checkpoint", params=arrays,
            meta={"aggregator_state": plain_state, "history": history,
                  "extra_state": extra_state or {}},
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            fh.write(encode(msg))
            fh.flush()
            os.fsync(fh.fileno())  # the data is on disk before any rename points at it
        for n in range(self.backups, 0, -1):  # shift: .1 -> .2, ..., latest -> .1
            older = self.path if n == 1 else self.backup_path(n - 1)
            if older.exists():
                os.replace(older, self.backup_path(n))
        os.replace(tmp, self.path)
        _sync_dir(self.path.parent)

    def load(self) -> Checkpoint | None:
        """The newest checkpoint that reads back intact, or None when there is none at all.

        Raises :class:`CodecError` when checkpoint files exist but none is readable: starting
        the job over silently would discard its progress (and any privacy budget spent).
        """
        problems: list[str] = []
        for path in self.candidates():
            if not path.exists():
                continue
            try:
                ckpt = self.read(path)
            except (OSError, CodecError, ConfigError, KeyError, TypeError, ValueError) as exc:
                problems.append(f"{path}: {exc}")
                log.error("checkpoint %s is unreadable (%s); falling back to the previous one",
                          path, exc)
                continue
            if problems:
                log.error("job %s resumes from the older checkpoint %s (round %d) because %d "
                          "newer one(s) could not be read", self.job_id, path, ckpt.round,
                          len(problems))
            return ckpt
        if problems:
            raise CodecError(
                f"no readable checkpoint for job {self.job_id!r}: " + "; ".join(problems)
            )
        return None

    def read(self, path: Path) -> Checkpoint:
        """Decode one checkpoint file; raises if it is damaged or belongs to another job."""
        msg = decode(path.read_bytes())
        if msg.header.job_id != self.job_id or msg.sender != "checkpoint":
            raise ConfigError(f"{path} is not a checkpoint of job {self.job_id!r}")
        params = {k[6:]: np.array(v) for k, v in msg.params.items() if k.startswith("param/")}
        state: dict[str, Any] = dict(msg.meta["aggregator_state"])
        state.update({k[6:]: np.array(v) for k, v in msg.params.items() if k.startswith("state/")})
        history = list(msg.meta["history"])
        if not all(isinstance(r, dict) for r in history):
            raise ConfigError(f"{path}: history entries must be mappings")
        extra = msg.meta.get("extra_state", {})
        if not isinstance(extra, dict):
            raise ConfigError(f"{path}: extra_state must be a mapping")
        return Checkpoint(msg.round, params, state, history, dict(extra))


def _sync_dir(directory: Path) -> None:
    """Make the renames durable (POSIX: fsync the directory); best effort elsewhere."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
