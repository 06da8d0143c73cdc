"""Filters: the simplest pods, one message in and at most one out.

Clipping, noise, compression and quantisation are filters. They chain with ``|`` into a
:class:`Chain`, itself a filter, so ``Clip(1.0) | GaussianNoise(...) | Zstd()`` is one pod in a
graph. A filter that changes an update in a way the server must undo appends a tag to the
message's trail, and the server filter that undoes it removes that tag, so the receiver can check
that encoders were applied in the right order and decode them in reverse.

Contracts are *declared* on the classes, so the checks made before round 1
(:mod:`foedus.privacy.order`) read declarations and never recognise classes by name:

* :attr:`Filter.pushes` / :attr:`Filter.pops`: the trail tags a filter appends / removes (a
  :class:`Chain` reports the concatenation of its parts). :meth:`Filter.on_in` checks at run time
  that a filter changed the trail only as declared.
* :attr:`Stage.privacy_operations`: what a stage's client half does to an update, in the
  vocabulary :data:`PRIVACY_OPERATIONS` (clip, noise, lossy, ...). It has no usable default: see
  :class:`Stage` for why.

A filter that needs the round's global model (clipping a delta, encoding a difference) declares
an optional input wire named ``model`` (:data:`MODEL_WIRE`). Topologies connect it to the global
model stream: on a client, the downlink that feeds the client pod; on the server, the server's
``model`` output (a feedback edge); the simulation engine feeds it directly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from foedus.core.errors import ConfigError
from foedus.core.message import Kind, Message
from foedus.core.pod import Pod, Wire
from foedus.core.registry import Registry

MODEL_WIRE = "model"

# ---- what a stage does to an update: the vocabulary of Stage.privacy_operations --------------
#: bounds each update's L2 norm (the sensitivity that noise is calibrated to)
CLIP = "clip"
#: adds calibrated random noise (differential privacy)
NOISE = "noise"
#: changes values in a way the server cannot restore exactly: quantisation, sparsification,
#: any rescaling or rewriting of the parameters
LOSSY = "lossy"
#: an encoding the server undoes bit for bit (zstd, lzma)
LOSSLESS = "lossless"
#: secure-aggregation masking: only the sum of the updates can be read
MASK = "mask"
#: authenticates the update exactly as sent: nothing may change it afterwards
SIGN = "sign"
#: replaces chosen clients' updates (simulated Byzantine clients)
ATTACK = "attack"
#: every operation a stage may declare; the order rules are in :mod:`foedus.privacy.order`
PRIVACY_OPERATIONS: frozenset[str] = frozenset(
    {CLIP, NOISE, LOSSY, LOSSLESS, MASK, SIGN, ATTACK}
)


def wants_model(pod: Pod) -> bool:
    """Whether ``pod`` declares the optional ``model`` input that tracks the global model."""
    return MODEL_WIRE in pod.input_wires


class Filter(Pod):
    """Override :meth:`process`; return ``None`` to drop a message on purpose (it is counted).

    Declare :attr:`pushes` when :meth:`process` appends tags to the trail (``msg.push_trail``)
    and :attr:`pops` when it removes them: the checks before round 1 pair each client tag with
    the server filter that removes it, and :meth:`on_in` refuses an undeclared change, so a tag
    nobody removes cannot silently get every update refused as ``undecoded``.
    """

    inputs: ClassVar[tuple[Wire, ...]] = (Wire("in"),)
    outputs: ClassVar[tuple[Wire, ...]] = (Wire("out"),)
    #: trail tags :meth:`process` appends, in order (a class attribute; an instance may set its own)
    pushes: tuple[str, ...] = ()
    #: trail tags :meth:`process` removes, in the order it removes them (last applied first)
    pops: tuple[str, ...] = ()

    def process(self, msg: Message) -> Message | None:
        raise NotImplementedError(f"{type(self).__name__} must implement process()")

    def __call__(self, msg: Message) -> Message | None:
        """Apply the filter outside a graph, e.g. in tests or inside a role."""
        return self.process(msg)

    def on_in(self, msg: Message) -> None:
        out = self.process(msg)
        if out is not None:
            check_trail_change(self, msg.trail, out.trail, error=out.kind is Kind.ERROR)
            self.emit("out", out)


def check_trail_change(
    f: Filter, before: tuple[str, ...], after: tuple[str, ...], *, error: bool = False
) -> None:
    """Raise :class:`ConfigError` if ``f`` changed a trail other than its declarations allow.

    Compares what was removed from and appended to ``before`` (past their common prefix) with
    :attr:`Filter.pops` and :attr:`Filter.pushes` as multisets, so a filter that passes a
    message through unchanged (an error, a control message) is always fine. An ``error`` output
    is a fresh message: only what it appends is checked. Costs a few tuple comparisons.
    """
    if before == after:
        return
    common = 0
    for old, new in zip(before, after, strict=False):
        if old != new:
            break
        common += 1
    added = Counter(after[common:]) - Counter(f.pushes)
    if added:
        tag = next(iter(added))
        raise ConfigError(
            f"filter {f.name!r} ({type(f).__name__}) appended {tag!r} to the trail but declares "
            f"pushes={f.pushes!r}: declare it (pushes = ({tag!r},)) so the pipeline checks can "
            "pair it with the server filter that removes it"
        )
    removed = Counter(before[common:]) - Counter(f.pops)
    if removed and not error:
        tag = next(iter(removed))
        raise ConfigError(
            f"filter {f.name!r} ({type(f).__name__}) removed {tag!r} from the trail but "
            f"declares pops={f.pops!r}: declare it (pops = ({tag!r},))"
        )


class Chain(Filter):
    """Filters applied one after another, as a single pod."""

    def __init__(self, *filters: Filter, name: str | None = None) -> None:
        flat: list[Filter] = []
        for f in filters:
            flat.extend(f.filters if isinstance(f, Chain) else [f])
        self.filters: tuple[Filter, ...] = tuple(flat)
        super().__init__(name or "|".join(f.name for f in self.filters))
        # the chain's contract is its parts' in order
        self.pushes = tuple(tag for f in self.filters for tag in f.pushes)
        self.pops = tuple(tag for f in self.filters for tag in f.pops)
        if any(wants_model(f) for f in self.filters):
            self.add_input(MODEL_WIRE, self._fan_out_model, required=False)

    def _fan_out_model(self, msg: Message) -> None:
        for f in self.filters:
            if wants_model(f):
                f.handler(MODEL_WIRE)(msg)

    @property
    def blocking(self) -> bool:  # type: ignore[override]
        return any(f.blocking for f in self.filters)

    def process(self, msg: Message) -> Message | None:
        current: Message | None = msg
        for f in self.filters:
            if current is None:
                return None
            current = f.process(current)
        return current


class Identity(Filter):
    """Passes messages through unchanged; a placeholder in recipes."""

    def process(self, msg: Message) -> Message:
        return msg


@dataclass(frozen=True)
class Half:
    """One half of a stage as the checks before round 1 see it: the filter's name (for
    messages) and the trail tags it appends and removes."""

    filter: str
    pushes: tuple[str, ...] = ()
    pops: tuple[str, ...] = ()

    @classmethod
    def of(cls, f: Filter | None) -> Half | None:
        """The declared contract of a built filter (``None`` stays ``None``)."""
        return None if f is None else cls(f.name, tuple(f.pushes), tuple(f.pops))


@dataclass(frozen=True)
class RoundPlan:
    """What a round of a job's server aggregates: how many updates (``fewest`` to ``most``,
    with the job-file keys that set each bound, so that a stage's refusal can name them), with
    which aggregator, whether that aggregator releases (a function of) the updates' mean (and
    which registered aggregators do, for a refusal to name), and what the updates are (the
    aggregator's ``update_kind``: ``parameters``, a forest's histograms, ...)."""

    fewest: int
    fewest_key: str
    most: int
    most_key: str
    aggregator: str = "fedavg"
    aggregates_mean: bool = True
    update_kind: str = "parameters"
    #: the registered aggregators that release the mean; a function, as listing them imports
    #: every plugin, which only a refusal should pay for
    mean_aggregators: Callable[[], list[str]] = list


class Stage:
    """One step of a job's update pipeline, owning both of its halves.

    A stage gives the filter a client applies before sending (``client``) and, when the step must
    be undone or completed centrally, the filter the server applies on receipt (``server``). One
    object owns both halves, so an encoder can never be paired with the wrong decoder; the server
    applies its halves in reverse order, and each checks the message trail as it goes.

    Every stage must declare :attr:`privacy_operations`: a tuple from
    :data:`PRIVACY_OPERATIONS` saying what its client half does to an update, in order (``()``
    when it leaves the values alone, e.g. a stage that only adds round hooks). The default is
    ``None``, "undeclared", and :func:`foedus.privacy.order.check_pipeline` refuses an
    undeclared stage with a message saying what to write. Why not default to ``()``: a stage
    that rescales, quantises or replaces updates would then pass every order check as if it did
    nothing (a lossy step before clipping, a rewrite after masking), the silent failure these
    checks exist to catch. One line in the class is a small price for an author; a wrong
    guess on their behalf costs a job its privacy or its rounds.
    """

    #: what the client half does to an update (see :data:`PRIVACY_OPERATIONS`); None: undeclared
    privacy_operations: ClassVar[tuple[str, ...] | None] = None

    def client(self) -> Filter | None:
        return None

    def server(self) -> Filter | None:
        return None

    def halves(self) -> tuple[Half | None, Half | None]:
        """(client half, server half) as declared, for the trail pairing checked before round 1.

        The default builds :meth:`client` and :meth:`server` once and reads their filters'
        :attr:`~Filter.pushes` and :attr:`~Filter.pops`. A stage whose builders have effects (a
        per-client seed counter, reading key files, a cached server half) overrides this to
        answer from its filter classes' declarations, so checking a pipeline changes nothing.
        """
        return Half.of(self.client()), Half.of(self.server())

    def check_round_plan(self, plan: RoundPlan) -> None:
        """Refuse (``ConfigError``) a job whose server rounds this stage cannot serve.

        Called when the job is built. Why: a stage whose guarantee depends on what a round
        aggregates would otherwise run, and report a guarantee it does not give: central DP
        splits the sum's noise over the updates (too few, or a rule that releases one of them,
        carry less noise than accounted) and states how many clients a round samples; clipping
        works on parameter updates only (a forest's histograms are broken by it).
        """

    # Server-side round hooks; the runner registers them with the ServerPod.
    def before_round(self, round: int) -> None:
        """Called before round ``round`` starts; raise BudgetExhausted to end the job cleanly."""

    def after_round(self, record: Any) -> None:
        """Called with each finished RoundRecord (e.g. to add epsilon to its metrics)."""

    def model_meta(self, round: int) -> dict[str, Any]:
        """Extra metadata broadcast with round ``round``'s global model (e.g. a clip norm)."""
        return {}

    def state(self) -> dict[str, Any]:
        """Server-side state a restarted server must get back (e.g. privacy budget spent);
        small and msgpack-able. Saved in every checkpoint."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Load what :meth:`state` returned, when the server resumes from a checkpoint."""

    # Broadcast hooks: a stage that authenticates what the server sends (``sign``) returns
    # them; the job's server and clients are built with the first a pipeline gives.
    def broadcast_signer(self, server: str = "server") -> Callable[[Message], Message] | None:
        """What the server named ``server`` passes every broadcast through, last."""
        return None

    def broadcast_verifier(self, server: str = "server") -> Any | None:
        """What clients check every broadcast of the server named ``server`` with (an object
        with ``check(msg)`` raising ``RejectedUpdate``, see ``foedus.roles.client``)."""
        return None


#: registered pipeline stages, by the name a job file uses (``type: zstd``)
stages: Registry[Stage] = Registry("pipeline stage")
