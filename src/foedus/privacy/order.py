"""Order and pairing checks for update pipelines, run before round 1.

Per-message trail checks (``dp.gaussian`` refusing an unclipped update, decoders checking the
last tag) catch mistakes only when the first update flows, and some mistakes pass them silently:
a clip *after* noise re-scales the noised vector; a lossy codec after secure masking destroys the
masks so the sum is garbage; a client tag no server filter removes gets every update refused as
``undecoded``, so every round ends ``no_quorum``. These checks refuse such pipelines up front
with a :class:`ConfigError` naming the offending stage or filter.

They read declarations only (:attr:`Stage.privacy_operations`, :attr:`Filter.pushes`,
:attr:`Filter.pops`, see :mod:`foedus.core.filter`), never class names, so a third-party stage is
checked exactly like a built-in one.

* :func:`check_stages`: what a runner calls for every job, whatever its topology: the order rules
  below, then the trail pairing of every stage's halves. Cheap and free of side effects.
* :func:`check_pipeline`: the order rules alone.
* :func:`check_filters`: the pairing of filters already built (a client's and the server's).

Client order rules (stages apply on the client in list order):

* every stage declares ``privacy_operations``, from the documented vocabulary;
* noise must follow clipping: no ``clip`` after a stage that adds noise;
* privacy transforms (clip, noise) before codecs and other lossy steps: after them they would work
  on encoded bytes or on values already changed, not on the update;
* lossy compression before lossless codecs: after one it sees only the codec's byte array, which
  it leaves alone (a float-only quantiser passes integers through), so it would do nothing;
* nothing but lossless codecs after secure masking (a lossy codec, clipping or noise on a masked
  vector breaks the masks' cancellation);
* nothing that changes the update after signing (the signature covers the update as sent).
"""

from __future__ import annotations

from collections.abc import Sequence

from foedus.core.errors import ConfigError
from foedus.core.filter import (
    ATTACK,
    CLIP,
    LOSSLESS,
    LOSSY,
    MASK,
    NOISE,
    PRIVACY_OPERATIONS,
    SIGN,
    Filter,
    Half,
    Stage,
)

__all__ = [
    "ATTACK",
    "CLIP",
    "LOSSLESS",
    "LOSSY",
    "MASK",
    "NOISE",
    "SIGN",
    "check_filters",
    "check_pipeline",
    "check_stages",
    "pops",
    "pushes",
    "stage_operations",
]


def _label(index: int, stage: Stage) -> str:
    return f"pipeline[{index}] ({type(stage).__name__})"


def stage_operations(stage: Stage, label: str | None = None) -> tuple[str, ...]:
    """What ``stage`` declares its client half does to an update, in order.

    Raises :class:`ConfigError` for an undeclared stage (``privacy_operations`` left ``None``)
    or an operation outside :data:`~foedus.core.filter.PRIVACY_OPERATIONS`.
    """
    label = label or type(stage).__name__
    declared = stage.privacy_operations
    vocabulary = ", ".join(sorted(PRIVACY_OPERATIONS))
    if declared is None:
        raise ConfigError(
            f"{label} does not declare privacy_operations: set it on the class to what its "
            f"client filter does to updates, e.g. privacy_operations = ('lossy',) (one or more "
            f"of {vocabulary}), or () if it leaves the values alone"
        )
    if isinstance(declared, str) or not isinstance(declared, tuple):
        raise ConfigError(f"{label}: privacy_operations must be a tuple of names, "
                          f"got {declared!r}")
    unknown = [op for op in declared if op not in PRIVACY_OPERATIONS]
    if unknown:
        raise ConfigError(f"{label}: unknown privacy operation {unknown[0]!r}; "
                          f"allowed: {vocabulary}")
    return declared


def check_pipeline(stages: Sequence[Stage]) -> None:
    """Refuse a pipeline whose client-side order defeats privacy, secure summing or signing."""
    seen: dict[str, str] = {}  # operation -> label of the first stage doing it
    for i, stage in enumerate(stages):
        label = _label(i, stage)
        for op in stage_operations(stage, label):
            if SIGN in seen:
                raise ConfigError(
                    f"{label} ({op}) comes after signing by {seen[SIGN]}: the signature covers "
                    "the update as signed, so the server would refuse every update; put the "
                    "signing stage last")
            if op == CLIP and NOISE in seen:
                raise ConfigError(
                    f"{label} clips after {seen[NOISE]} added noise: clipping must come before "
                    "noise (the noise is calibrated to the clipped norm); reorder the pipeline")
            if op in (CLIP, NOISE):
                for codec in (LOSSY, LOSSLESS):
                    if codec in seen:
                        raise ConfigError(
                            f"{label} ({op}) comes after the {codec} step {seen[codec]}: it "
                            "would work on encoded or already altered values, not on the "
                            "update; put privacy stages before compression")
            if op == LOSSY and LOSSLESS in seen:
                raise ConfigError(
                    f"{label} (lossy) comes after the lossless codec {seen[LOSSLESS]}: it would "
                    "see the codec's bytes, not the update, and pass them through unchanged "
                    "(nothing quantised or sparsified); put lossy compression before lossless "
                    "codecs")
            if MASK in seen and op != LOSSLESS:
                raise ConfigError(
                    f"{label} ({op}) comes after secure masking by {seen[MASK]}: only lossless "
                    "codecs may follow masking (a lossy codec, clipping or noise breaks the "
                    "masks' cancellation); move it before the secure sum")
            seen.setdefault(op, label)


# ---- trail pairing ------------------------------------------------------------------------------
def pushes(f: Filter) -> tuple[str, ...]:
    """Trail tags a filter declares it appends (a :class:`Chain` reports its parts')."""
    return tuple(f.pushes)


def pops(f: Filter) -> tuple[str, ...]:
    """Trail tags a filter declares it removes, in the order it removes them."""
    return tuple(f.pops)


def _pair(client: Sequence[Half], server: Sequence[Half]) -> None:
    """The one pairing rule: server halves (in the order the server applies them) remove the
    client halves' tags exactly in reverse, and leave none behind."""
    stack: list[tuple[str, str]] = []  # (tag, filter that pushed it)
    for half in client:
        for tag in half.pops:
            if not stack or stack[-1][0] != tag:
                raise ConfigError(f"client filter {half.filter!r} removes {tag!r}, which no "
                                  "earlier client filter appended")
            stack.pop()
        stack.extend((tag, half.filter) for tag in half.pushes)
    for half in server:
        for tag in half.pops:
            if not stack:
                raise ConfigError(
                    f"server filter {half.filter!r} undoes {tag!r}, which no client filter "
                    "applied")
            top, owner = stack[-1]
            if top != tag:
                if any(t == tag for t, _ in stack):
                    raise ConfigError(
                        f"server filter {half.filter!r} undoes {tag!r} but the last client "
                        f"filter still to undo is {owner!r} ({top!r}): decoders must run in "
                        "reverse client order")
                raise ConfigError(
                    f"server filter {half.filter!r} undoes {tag!r}, which no client filter "
                    "applied")
            stack.pop()
        if half.pushes:
            raise ConfigError(
                f"server filter {half.filter!r} appends {half.pushes[0]!r} to the trail: the "
                "server refuses updates whose trail is not empty (undecoded)")
    if stack:
        tag, owner = stack[-1]
        raise ConfigError(
            f"client filter {owner!r} appends {tag!r}, which no server filter undoes: every "
            "update would be refused as undecoded; give its stage a server() half whose filter "
            f"declares pops = ({tag!r},)")


def check_filters(client: Sequence[Filter], server: Sequence[Filter]) -> None:
    """Refuse server filters (in the order the server applies them) that do not undo the
    client's filters exactly in reverse order, or leave a client tag undone."""
    _pair([h for f in client if (h := Half.of(f)) is not None],
          [h for f in server if (h := Half.of(f)) is not None])


def check_stages(pipeline: Sequence[Stage]) -> None:
    """Refuse, before round 1, a pipeline that could not work: :func:`check_pipeline`'s order
    rules, then every stage's halves paired through the trail (client halves in list order,
    server halves in reverse). Reads declarations only (:meth:`Stage.halves`): no filter with
    side effects is built, nothing is imported, nothing changes; runners call it for every job.
    """
    check_pipeline(pipeline)
    client: list[Half] = []
    server: list[Half] = []
    for stage in pipeline:
        client_half, server_half = stage.halves()
        if client_half is not None:
            client.append(client_half)
        if server_half is not None:
            server.append(server_half)
    _pair(client, list(reversed(server)))
