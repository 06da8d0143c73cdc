"""Server checkpoints: the global model, the round reached and the aggregator's state on disk.

Written atomically in the foedus wire format (so loading never unpickles anything, and its
CRC-32 detects a damaged file): the new checkpoint goes to a temporary file which is flushed to
disk, the current one is moved aside as ``<job>.ckpt.1`` (``.2`` ... up to ``backups``), and only
then is the temporary file renamed into place. A crash at any moment leaves at least one complete
checkpoint. :meth:`Checkpointer.load` returns the newest checkpoint that reads back intact; when
the newest is damaged (a torn write on a disk without atomic rename, bit rot, a truncated copy)
it says so in an ERROR log line and falls back to the previous one.

A checkpoint whose CRC is right can still be wrong (a file of another job or version, a forged
or hand-edited object): every checkpoint read is also checked for a sane round, finite
parameters (of the job's names and shapes, when the server says what they are) and the
history's schema, and refused with a reason otherwise. When checkpoints exist but none is valid,
:meth:`Checkpointer.load` raises :class:`CheckpointError` (one line naming where and why): a
job never starts over silently. The bucket-backed checkpointer (:mod:`foedus.mlops.artifacts`)
shares all of this; it only says where checkpoints are (:meth:`Checkpointer.sources`). Saving
rotates only checkpoints that parse, so junk never pushes a valid checkpoint out.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from foedus.codec import decode, encode
from foedus.core.errors import CodecError, ConfigError, RejectedUpdate
from foedus.core.message import Kind, Message
from foedus.core.params import Params, ParamSpec

log = logging.getLogger("foedus.checkpoint")

#: the highest round a checkpoint may name (job files allow at most this many rounds)
MAX_ROUND = 1_000_000
#: a checkpoint source: a label for messages, how to fetch its bytes (None: gone), and the
#: round its name promises (None: the name promises none)
Source = tuple[str, Callable[[], bytes | None], int | None]


class CheckpointError(CodecError):
    """Checkpoints exist but none is valid; the job must not start over from round 1."""


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
    ``backups`` older ones beside it to fall back on.

    ``like``: the job's initial parameters; a checkpoint whose names or shapes differ is
    refused (the server passes its own to :meth:`load`)."""

    def __init__(self, directory: str | Path, job_id: str, *, backups: int = 1) -> None:
        if isinstance(backups, bool) or not isinstance(backups, int) or backups < 0:
            raise ConfigError(f"backups: expected an integer >= 0, got {backups!r}")
        self.path = Path(directory) / f"{job_id}.ckpt"
        self.job_id = job_id
        self.backups = backups
        self.like: Params | None = None

    @property
    def where(self) -> str:
        """Where the checkpoints live, for messages."""
        return f"directory {str(self.path.parent)!r}"

    def backup_path(self, n: int) -> Path:
        """The ``n``-th previous checkpoint (1 = the one before the latest)."""
        return self.path.with_name(f"{self.path.name}.{n}")

    def candidates(self) -> list[Path]:
        """Checkpoint files, newest first."""
        return [self.path, *(self.backup_path(n) for n in range(1, self.backups + 1))]

    def sources(self) -> list[Source]:
        """Every checkpoint there is, newest first (see :data:`Source`)."""
        def fetch(path: Path) -> Callable[[], bytes | None]:
            return lambda: path.read_bytes() if path.exists() else None
        return [(str(p), fetch(p), None) for p in self.candidates() if p.exists()]

    def save(
        self, round: int, params: Params, aggregator_state: dict[str, Any],
        history: list[dict[str, Any]], extra_state: dict[str, Any] | None = None,
    ) -> None:
        data = self.encode(round, params, aggregator_state, history, extra_state)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())  # the data is on disk before any rename points at it
        self._rotate()
        os.replace(tmp, self.path)
        _sync_dir(self.path.parent)

    def encode(
        self, round: int, params: Params, aggregator_state: dict[str, Any],
        history: list[dict[str, Any]], extra_state: dict[str, Any] | None = None,
    ) -> bytes:
        """One checkpoint in the wire format."""
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
        return encode(msg)

    def _rotate(self) -> None:
        """Shift the valid checkpoints into ``.1 ... .backups``, newest first, dropping the
        oldest valid one if there is no room. Files that do not parse take no slot: they are
        overwritten, never moved over a valid one. Each step is one atomic rename of a valid
        file onto junk, a hole, or the valid file being dropped: a crash leaves every other."""
        paths = self.candidates()
        valid = [i for i, p in enumerate(paths) if p.exists() and self._parses(p)]
        kept = valid[: self.backups]  # valid[i] goes to position i + 1
        down = [i for i in range(len(kept)) if i + 1 > kept[i]]
        up = [i for i in range(len(kept)) if i + 1 < kept[i]]
        for i in [*up, *reversed(down)]:  # deltas fall with i: fill holes first, then shift
            os.replace(paths[kept[i]], paths[i + 1])

    def _parses(self, path: Path) -> bool:
        try:
            self.parse(path.read_bytes(), str(path))
        except (OSError, CodecError, ConfigError):
            return False
        return True

    def load(self, like: Params | None = None) -> Checkpoint | None:
        """The newest valid checkpoint, or None when there is none at all.

        ``like``: the job's parameters (names and shapes a checkpoint must have; default
        :attr:`like`). Each invalid one is refused in an ERROR line with its reason. Raises
        :class:`CheckpointError` when checkpoints exist but none is valid: starting the job
        over silently would discard its progress (and any privacy budget spent).
        """
        like = self.like if like is None else like
        problems: list[str] = []
        for label, fetch, promised in self.sources():
            data = fetch()
            if data is None:
                continue  # removed since it was listed
            try:
                ckpt = self.parse(data, label, like=like, round=promised)
            except (CodecError, ConfigError) as exc:
                reason = str(exc).replace("\n", " ")
                problems.append(f"{label}: {reason}")
                log.error("checkpoint %s is unreadable or invalid (%s); falling back to an "
                          "older one", label, reason)
                continue
            if problems:
                log.error("job %s resumes from the older checkpoint %s (round %d) because %d "
                          "newer one(s) could not be read", self.job_id, label, ckpt.round,
                          len(problems))
            return ckpt
        if problems:
            raise CheckpointError(
                f"no readable checkpoint for job {self.job_id!r}: {len(problems)} in "
                f"{self.where}, none valid; refusing to start over from round 1 (move them "
                f"away to do so). Newest: {problems[0][:300]}")
        return None

    def read(self, path: Path) -> Checkpoint:
        """Decode and check one checkpoint file; raises if it is damaged, invalid or belongs to
        another job."""
        return self.parse(path.read_bytes(), str(path), like=self.like)

    def parse(self, data: bytes, label: str, *, like: Params | None = None,
              round: int | None = None) -> Checkpoint:
        """Decode and check one checkpoint (:class:`CodecError` if damaged,
        :class:`ConfigError` if invalid); ``round``: the round its name promises."""
        msg = decode(data)
        if msg.header.job_id != self.job_id or msg.sender != "checkpoint":
            raise ConfigError(f"{label} is not a checkpoint of job {self.job_id!r}")
        if not 1 <= msg.round <= MAX_ROUND:
            raise ConfigError(f"{label}: round {msg.round} is outside 1..{MAX_ROUND}")
        if round is not None and msg.round != round:
            raise ConfigError(f"{label}: holds round {msg.round}, its name says {round}")
        params = {k[6:]: np.array(v) for k, v in msg.params.items() if k.startswith("param/")}
        _check_params(params, like, label)
        meta = msg.meta
        state = meta.get("aggregator_state")
        history = meta.get("history")
        extra = meta.get("extra_state", {})
        if not isinstance(state, dict) or not isinstance(extra, dict):
            raise ConfigError(f"{label}: aggregator_state and extra_state must be mappings")
        state = dict(state)
        state.update({k[6:]: np.array(v) for k, v in msg.params.items() if k.startswith("state/")})
        if not isinstance(history, list):
            raise ConfigError(f"{label}: history must be a list")
        _check_history(history, msg.round, label)
        return Checkpoint(msg.round, params, state, list(history), dict(extra))


def _check_params(params: dict[str, np.ndarray], like: Params | None, label: str) -> None:
    if not params:
        raise ConfigError(f"{label}: holds no parameters")
    for name, array in params.items():
        if array.dtype.kind not in "biuf":
            raise ConfigError(f"{label}: parameter {name!r} has dtype {array.dtype}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ConfigError(f"{label}: parameter {name!r} holds NaN or Inf")
    if like is not None:
        try:
            ParamSpec.of(like).check(params)
        except RejectedUpdate as exc:
            raise ConfigError(f"{label}: not this job's model ({exc.reason}: "
                              f"{exc.detail[:120]})") from exc


def _record_fields() -> tuple[frozenset[str], frozenset[str]]:
    """(every field, the required fields) of a round record, the history's schema."""
    from dataclasses import MISSING

    from foedus.roles.server import RoundRecord  # the server's own record; imported late

    every = [f for f in fields(RoundRecord)]
    required = {f.name for f in every if f.default is MISSING and f.default_factory is MISSING}
    return frozenset(f.name for f in every), frozenset(required)


def _check_history(history: list[Any], rnd: int, label: str) -> None:
    """Each entry a round record of a round before ``rnd``'s end, in increasing order."""
    known, required = _record_fields()
    last = 0
    for i, entry in enumerate(history):
        if not isinstance(entry, dict) or not all(isinstance(k, str) for k in entry):
            raise ConfigError(f"{label}: history[{i}] is not a round record")
        unknown = sorted(set(entry) - known)
        missing = sorted(required - set(entry))
        if unknown or missing:
            raise ConfigError(f"{label}: history[{i}] has unknown fields {unknown[:5]} or "
                              f"lacks {missing}")
        r = entry["round"]
        if isinstance(r, bool) or not isinstance(r, int) or not last < r <= rnd:
            raise ConfigError(f"{label}: history[{i}] names round {r!r}, expected "
                              f"{last + 1}..{rnd} in increasing order")
        last = r


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
