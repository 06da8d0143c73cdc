"""Order and pairing checks for update pipelines, run when a graph is built.

Per-message trail checks (``dp.gaussian`` refusing an unclipped update, decoders checking the
last tag) catch mistakes only when the first update flows, and some mistakes pass them silently:
a clip *after* noise re-scales the noised vector; a lossy codec after secure masking destroys the
masks so the sum is garbage. :func:`check_pipeline` refuses such pipelines up front, and
:func:`check_filters` refuses a server filter list that does not undo the client's filters in
exact reverse order. Both raise :class:`ConfigError` naming the offending stages.

Client order rules (stages apply on the client in list order):

* noise must follow clipping: no ``clip`` after a stage that adds noise;
* privacy transforms (clip, noise) before codecs: after an encoder they would work on encoded
  bytes, not on the update;
* nothing but lossless codecs after secure masking (a lossy codec, clipping or noise on a masked
  vector breaks the masks' cancellation), and at most one secure sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from foedus.core.errors import ConfigError
from foedus.core.filter import Chain, Filter, Stage

CLIP, NOISE, LOSSY, LOSSLESS, MASK = "clip", "noise", "lossy", "lossless", "mask"


def stage_operations(stage: Stage) -> tuple[str, ...]:
    """What ``stage`` does to an update on the client, in order.

    Stages may declare ``privacy_operations`` (a tuple of the names above); the built-in ones
    are recognised by class. Unknown stages do nothing as far as these checks are concerned.
    """
    declared = getattr(stage, "privacy_operations", None)
    if declared is not None:
        return tuple(declared)
    from foedus.compress.lossless import LzmaStage, ZstdStage
    from foedus.compress.qsgd import QSGDStage
    from foedus.compress.sparsify import TopKStage
    from foedus.privacy.dp import CentralDPStage, ClipStage, LocalDPStage
    from foedus.privacy.secagg_pods import SecureSumStage

    known: list[tuple[type[Any], tuple[str, ...]]] = [
        (ClipStage, (CLIP,)), (LocalDPStage, (CLIP, NOISE)), (CentralDPStage, (CLIP, NOISE)),
        (QSGDStage, (LOSSY,)), (TopKStage, (LOSSY,)), (ZstdStage, (LOSSLESS,)),
        (LzmaStage, (LOSSLESS,)), (SecureSumStage, (MASK,)),
    ]
    for cls, ops in known:
        if isinstance(stage, cls):
            return ops
    return ()


def _label(index: int, stage: Stage) -> str:
    return f"pipeline[{index}] ({type(stage).__name__})"


def check_pipeline(stages: Sequence[Stage]) -> None:
    """Refuse a pipeline whose client-side order defeats privacy or secure summing."""
    seen: dict[str, str] = {}  # operation -> label of the first stage doing it
    for i, stage in enumerate(stages):
        label = _label(i, stage)
        for op in stage_operations(stage):
            if op == CLIP and NOISE in seen:
                raise ConfigError(
                    f"{label} clips after {seen[NOISE]} added noise: clipping must come before "
                    "noise (the noise is calibrated to the clipped norm); reorder the pipeline")
            if op in (CLIP, NOISE):
                for codec in (LOSSY, LOSSLESS):
                    if codec in seen:
                        raise ConfigError(
                            f"{label} ({op}) comes after the encoder {seen[codec]}: it would "
                            "work on encoded bytes; put privacy stages before compression")
            if MASK in seen and op != LOSSLESS:
                raise ConfigError(
                    f"{label} ({op}) comes after secure masking by {seen[MASK]}: only lossless "
                    "codecs may follow masking (a lossy codec, clipping or noise breaks the "
                    "masks' cancellation); move it before the secure sum")
            seen.setdefault(op, label)


# ---- decode order -------------------------------------------------------------------------------
def _flat(f: Filter) -> list[Filter]:
    return list(f.filters) if isinstance(f, Chain) else [f]


def pushes(f: Filter) -> tuple[str, ...]:
    """Trail tags a client filter pushes (declared ``pushes``, or known classes)."""
    out: list[str] = []
    for part in _flat(f):
        declared = getattr(part, "pushes", None)
        if declared is not None:
            out.extend(declared)
            continue
        from foedus.compress.base import Encoder
        from foedus.privacy.clip import CLIP_TAG, ClipFilter
        from foedus.privacy.dp import NOISE_TAG, GaussianNoise

        if isinstance(part, ClipFilter):
            out.append(CLIP_TAG)
        elif isinstance(part, GaussianNoise):
            out.append(NOISE_TAG)
        elif isinstance(part, Encoder):
            out.append(part.tag)
    return tuple(out)


def pops(f: Filter) -> tuple[str, ...]:
    """Trail tags a server filter removes, in the order it removes them."""
    out: list[str] = []
    for part in _flat(f):
        declared = getattr(part, "pops", None)
        if declared is not None:
            out.extend(declared)
            continue
        from foedus.compress.base import Decoder
        from foedus.privacy.clip import CLIP_TAG, ClipReceiver
        from foedus.privacy.dp import NOISE_TAG, CentralNoise, LocalDPReceiver

        if isinstance(part, LocalDPReceiver):
            out.extend((NOISE_TAG, CLIP_TAG))
        elif isinstance(part, ClipReceiver | CentralNoise):
            out.append(CLIP_TAG)
        elif isinstance(part, Decoder):
            out.append(part.tag)
    return tuple(out)


def check_filters(client: Sequence[Filter], server: Sequence[Filter]) -> None:
    """Refuse server filters (in the order the server applies them) that do not undo the
    client's filters exactly in reverse order, or leave a client tag undone."""
    stack: list[tuple[str, str]] = [(tag, f.name) for f in client for tag in pushes(f)]
    for f in server:
        for tag in pops(f):
            if not stack:
                raise ConfigError(
                    f"server filter {f.name!r} undoes {tag!r}, which no client filter applied")
            top, owner = stack.pop()
            if top != tag:
                raise ConfigError(
                    f"server filter {f.name!r} undoes {tag!r} but the last client filter still "
                    f"to undo is {owner!r} ({top!r}): decoders must run in reverse client order")
    if stack:
        undone = ", ".join(f"{owner!r} ({tag!r})" for tag, owner in stack)
        raise ConfigError(f"no server filter undoes client filters {undone}")
