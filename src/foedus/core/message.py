"""The immutable envelope that flows along wires and across the network.

A message is a header (who, what, which round, which filters touched it) and a body (named
arrays, example count, metrics, small metadata). It is frozen: a filter returns a *new* message
with :meth:`Message.replace`, sharing the arrays it did not change, so nothing is copied needlessly.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Any

import numpy as np

from foedus.core.errors import PrivacyError
from foedus.core.params import Params


class Kind(StrEnum):
    """What a message is for; transports and roles route on it."""

    MODEL = "model"  # a global model broadcast by a server (or a peer in a swarm)
    UPDATE = "update"  # a participant's locally trained parameters
    CONTROL = "control"  # join, leave, stop and other membership signals
    METRICS = "metrics"  # evaluation results without parameters
    ERROR = "error"  # a failure reported as a value (see Message.error)


_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Header:
    """Routing and provenance: enough to check a message belongs to this job and round."""

    job_id: str
    round: int
    sender: str
    kind: Kind
    message_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    timestamp: float = field(default_factory=time.time)
    trail: tuple[str, ...] = ()
    recipient: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """One unit of data on a wire. Build with :meth:`create`; derive with :meth:`replace`."""

    header: Header
    params: Params = field(default_factory=lambda: _EMPTY)
    num_examples: int = 0
    metrics: Mapping[str, float] = field(default_factory=lambda: _EMPTY)
    meta: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    error: str | None = None

    @classmethod
    def create(
        cls,
        kind: Kind | str,
        *,
        job_id: str,
        round: int,
        sender: str,
        params: Params | None = None,
        num_examples: int = 0,
        metrics: Mapping[str, float] | None = None,
        meta: Mapping[str, Any] | None = None,
        error: str | None = None,
        recipient: str | None = None,
        trail: tuple[str, ...] = (),
    ) -> Message:
        """Make a message; mappings are frozen so a receiver can never mutate a sender's view."""
        header = Header(
            job_id=job_id, round=round, sender=sender, kind=Kind(kind),
            recipient=recipient, trail=tuple(trail),
        )
        return cls(
            header=header,
            params=_freeze_params(params),
            num_examples=int(num_examples),
            metrics=MappingProxyType({k: float(v) for k, v in (metrics or {}).items()}),
            meta=MappingProxyType(dict(meta or {})),
            error=error,
        )

    # ---- convenience accessors -------------------------------------------------------------
    @property
    def kind(self) -> Kind:
        return self.header.kind

    @property
    def round(self) -> int:
        return self.header.round

    @property
    def sender(self) -> str:
        return self.header.sender

    @property
    def trail(self) -> tuple[str, ...]:
        return self.header.trail

    # ---- derivation ----------------------------------------------------------------------
    def replace(self, **changes: Any) -> Message:
        """A new message with some body fields (or header fields, by name) changed."""
        header_fields = {k: changes.pop(k) for k in list(changes) if k in Header.__slots__}
        header = replace(self.header, **header_fields) if header_fields else self.header
        if "params" in changes:
            changes["params"] = _freeze_params(changes["params"])
        if "metrics" in changes:
            changes["metrics"] = MappingProxyType(
                {k: float(v) for k, v in changes["metrics"].items()}
            )
        if "meta" in changes:
            changes["meta"] = MappingProxyType(dict(changes["meta"]))
        return replace(self, header=header, **changes)

    def push_trail(self, tag: str) -> Message:
        """Record that a filter processed this message (encoders push, decoders pop)."""
        return self.replace(trail=(*self.header.trail, tag))

    def pop_trail(self, tag: str) -> Message:
        """Undo the last trail entry, which must be ``tag``: decoders run in reverse order."""
        if not self.header.trail or self.header.trail[-1] != tag:
            raise PrivacyError(
                f"cannot undo {tag!r}: the last filter applied was "
                f"{self.header.trail[-1]!r}" if self.header.trail else
                f"cannot undo {tag!r}: the message has no filter trail"
            )
        return self.replace(trail=self.header.trail[:-1])

    def reply(self, kind: Kind | str, sender: str, **body: Any) -> Message:
        """A message in the same job and round, addressed back to this message's sender."""
        return Message.create(
            kind, job_id=self.header.job_id, round=self.header.round, sender=sender,
            recipient=self.header.sender, **body,
        )


def _freeze_params(params: Params | None) -> Params:
    """Wrap parameters read-only without copying the arrays' data."""
    if not params:
        return _EMPTY
    frozen: dict[str, np.ndarray] = {}
    for name, value in params.items():
        array = np.asarray(value)
        if array.flags.writeable:
            array = array.view()
            array.flags.writeable = False
        frozen[name] = array
    return MappingProxyType(frozen)
