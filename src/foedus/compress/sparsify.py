"""Top-k sparsification with error feedback.

Each client sends only the ``ratio`` fraction of its update's values with the largest magnitude
(indices as uint32, values as float32: 8 bytes per kept value) and keeps what it did not send
in a residual that is added to its next update (error feedback, Stich et al. 2018; Karimireddy et
al. 2019). Nothing is lost, only delayed, which is why top-k at 1% still converges.

Sparsifying full weights would zero most of the model, so ``delta: true`` (the default) sends
the change from the round's global model; the decoder adds it back. The residual lives in the
encoder, one per client (a stage builds a fresh encoder for each client).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from foedus.compress.base import (
    DEFAULT_MAX_DECODED,
    Decoder,
    Encoder,
    check_flag,
    check_stage_size,
    flat_float32,
    get_array,
    make_table,
    reorder,
    split_float,
    unflat,
)
from foedus.core.errors import CodecError, ConfigError
from foedus.core.filter import LOSSY, Filter, Stage, stages
from foedus.core.message import Message

INDICES, VALUES = "topk.indices", "topk.values"


class TopKEncoder(Encoder):
    tag: ClassVar[str] = "topk"
    pushes = (tag,)

    def __init__(self, *, ratio: float = 0.01, error_feedback: bool = True, delta: bool = True,
                 name: str = "topk-encode") -> None:
        super().__init__(name, delta=delta)
        _check(ratio)
        self.ratio = ratio
        self.error_feedback = error_feedback
        self.residual: np.ndarray | None = None

    def encode(self, msg: Message) -> Message:
        floats, rest = split_float(msg.params)
        clash = {INDICES, VALUES} & set(rest)
        if clash:
            raise CodecError(f"{self.name}: parameter name {sorted(clash)[0]!r} is reserved")
        acc = flat_float32(floats)
        if self.error_feedback and self.residual is not None and self.residual.shape == acc.shape:
            acc += self.residual
        n = acc.size
        k = min(n, max(1, math.ceil(self.ratio * n))) if n else 0
        if k == n:
            index = np.arange(n, dtype=np.uint32)
        else:
            index = np.sort(np.argpartition(np.abs(acc), n - k)[n - k :]).astype(np.uint32)
        values = acc[index]
        if self.error_feedback:
            acc[index] = 0.0
            self.residual = acc  # what was not sent this round goes out with the next one
        entry = {"table": make_table(floats), "order": list(msg.params)}
        return msg.replace(
            params={**rest, INDICES: index, VALUES: values}, meta={**msg.meta, self.tag: entry}
        )


class TopKDecoder(Decoder):
    tag: ClassVar[str] = "topk"
    pops = (tag,)

    def __init__(self, *, delta: bool = True, max_decoded_size: int = DEFAULT_MAX_DECODED,
                 name: str = "topk-decode") -> None:
        super().__init__(name, delta=delta, max_decoded_size=max_decoded_size)

    def decode(self, msg: Message, entry: Mapping[str, Any]) -> dict[str, np.ndarray]:
        where = self.name
        table, n = self.float_table(entry, "sparsified")
        index = get_array(msg.params, INDICES, np.uint32, where)
        values = get_array(msg.params, VALUES, np.float32, where)
        if len(index) != len(values) or len(index) > n:
            raise CodecError(f"{where}: {len(index)} indices, {len(values)} values for {n} slots")
        if len(index) and (int(index[-1]) >= n or (np.diff(index.astype(np.int64)) <= 0).any()):
            raise CodecError(f"{where}: indices must be strictly increasing and below {n}")
        dense = np.zeros(n, dtype=np.float32)
        dense[index] = values
        rest = {k: v for k, v in msg.params.items() if k not in (INDICES, VALUES)}
        return reorder({**unflat(dense, table), **rest}, entry, where)


class TopKStage(Stage):
    """``- {type: topk, params: {ratio: 0.01, error_feedback: true, delta: true}}``"""

    privacy_operations = (LOSSY,)

    def __init__(self, ratio: float = 0.01, error_feedback: bool = True, delta: bool = True,
                 max_decoded_size: int = DEFAULT_MAX_DECODED) -> None:
        _check(ratio)
        self.ratio = ratio
        self.error_feedback = check_flag("topk", "error_feedback", error_feedback)
        self.delta = check_flag("topk", "delta", delta)
        self.max_decoded_size = check_stage_size("topk", max_decoded_size)

    def client(self) -> Filter:
        return TopKEncoder(ratio=self.ratio, error_feedback=self.error_feedback, delta=self.delta)

    def server(self) -> Filter:
        return TopKDecoder(delta=self.delta, max_decoded_size=self.max_decoded_size)


def _check(ratio: float) -> None:
    if not isinstance(ratio, int | float) or isinstance(ratio, bool) or not 0 < ratio <= 1:
        raise ConfigError(f"topk ratio must be a number in (0, 1], got {ratio!r}")


stages.register("topk")(TopKStage)
