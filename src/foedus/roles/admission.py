"""One admission path for every role that aggregates updates.

The synchronous server, a hierarchical edge, the asynchronous (FedBuff) server, a swarm peer and
the secure-sum server all take model parameters from the network and fold them into a model. They
must refuse exactly the same inputs for exactly the same reasons, or a hole found in one is open
in the others (an outside review found the asynchronous server publishing a replayed update from
a non-participant as the new global model while the synchronous one refused it). So the rules
live here once, in :class:`Admission`, and the roles only say what is open (a round, or a range
of model versions), who may send, and what the model looks like.

Reasons (the keys of every role's ``rejections`` Counter and of its per-round ``rejected``):

``wrong_job``       the message belongs to another job
``wrong_kind``      not the kind this role aggregates (an update or a failure; a model for peers)
``replayed``        a message id already admitted in the open or the previous round/versions
``stale_round``     the round (or version) it names is not open: closed, too old, or not yet
                    opened (a future round is as unusable as a past one)
``unknown_sender``  the sender is not on the role's roster of participants
``not_selected``    the sender was not sampled for this round (only the synchronous server samples)
``duplicate``       the sender already answered this round (or this version)
``undecoded``       filters on the trail were not undone before aggregation
``bad_metrics``     metrics are not a small map of short string names to finite numbers
``bad_meta``        meta has a non-string key, or is nested too deeply, or is too large
``wrong_names``     parameter names differ from the global model's
``wrong_shape``     a parameter's shape differs from the global model's
``wrong_dtype``     a parameter's dtype cannot be cast to the model's (e.g. complex into float)
``no_examples``     an update reporting zero or fewer examples
``too_many_examples`` an update claiming more examples than ``max_examples`` (the job's
                    ``clients.max_examples``): FedAvg weighs updates by their claim, so one
                    insider claiming 10**12 examples would otherwise become the global model
``not_finite``      NaN or Inf in a floating-point parameter
``client_failed``   an ``ERROR`` message, counted as a refusal only where there are no rounds
                    to record failed clients in (the asynchronous server)

Aggregators may add their own (``aggregator_error``, ``too_few_updates``, ``no_updates``), and
so may the server-side filters in front of the role, whose refusals reach it marked by the
runtime (:func:`foedus.core.runtime.refusal`): privacy receivers (``not_private``,
``wrong_clip_norm``, ``no_clip_bit``, ``budget_exhausted``) and decoders (``bad_encoding``).
A filter's refusal is judged like a content refusal: the envelope checks run first (a stale or
replayed message is refused as such), then it counts as its sender's answer and is refused
under the filter's reason.

The envelope checks (job to undecoded) refuse a message that is not its sender's answer: the
sender may still answer validly. Once the envelope is admitted the sender has answered (its
message id is remembered for replays, and a second answer is a ``duplicate``); the content checks
(metrics to not_finite) then refuse a bad answer, which still counts as that sender's one answer,
so a round does not wait on a sender who already sent garbage.

Memory stays bounded: message ids and answered senders are kept for the open rounds and the one
before only, and a message's metrics and meta are checked against the limits below before
anything keeps them.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from foedus.aggregate.base import check_finite_blocked
from foedus.core.errors import ConfigError, RejectedUpdate
from foedus.core.message import Kind, Message
from foedus.core.params import ParamSpec
from foedus.core.runtime import refusal_of

WRONG_JOB = "wrong_job"
WRONG_KIND = "wrong_kind"
REPLAYED = "replayed"
STALE_ROUND = "stale_round"
UNKNOWN_SENDER = "unknown_sender"
NOT_SELECTED = "not_selected"
DUPLICATE = "duplicate"
UNDECODED = "undecoded"
BAD_METRICS = "bad_metrics"
BAD_META = "bad_meta"
WRONG_NAMES = "wrong_names"
WRONG_SHAPE = "wrong_shape"
WRONG_DTYPE = "wrong_dtype"
NO_EXAMPLES = "no_examples"
TOO_MANY_EXAMPLES = "too_many_examples"
NOT_FINITE = "not_finite"
CLIENT_FAILED = "client_failed"

#: every reason :class:`Admission` raises, in the order the checks run
REASONS = (WRONG_JOB, WRONG_KIND, REPLAYED, STALE_ROUND, UNKNOWN_SENDER, NOT_SELECTED, DUPLICATE,
           UNDECODED, BAD_METRICS, BAD_META, WRONG_NAMES, WRONG_SHAPE, WRONG_DTYPE, NO_EXAMPLES,
           TOO_MANY_EXAMPLES, NOT_FINITE)

#: at most this many metrics per update: each name becomes a key in the round record, the
#: checkpoint and every exporter, so 20,000 names per update would grow all of them per round
MAX_METRICS = 64
#: the longest metric name, in characters
MAX_METRIC_NAME = 64
#: how deeply meta may nest maps and lists (the top-level map is depth 1)
MAX_META_DEPTH = 8
#: how many values (map entries and list items, at every depth) meta may hold in all
MAX_META_ITEMS = 10_000
#: how many characters or bytes the strings and byte strings of meta may hold in all
MAX_META_BYTES = 1 << 20
#: a refusal's detail is cut to this many characters in the log line
MAX_DETAIL = 200


class Admission:
    """Decides whether one message is admitted for aggregation; raises :class:`RejectedUpdate`.

    ``kinds``: the message kinds this role aggregates (servers: updates and failures; peers:
    models). ``participants``: the roster (``None``: anyone the transport delivers; roles that
    learn their roster as they go call :meth:`enroll`). ``finite``: check NaN/Inf here; a role
    whose aggregator checks it anyway (every :class:`~foedus.aggregate.base.Aggregator` does,
    FedAvg fused with its fold) passes ``False`` rather than read every update twice.
    ``one_per_round``: refuse a sender's second answer to a round as ``duplicate``; FedBuff
    passes ``False``, since its clients may send several updates trained from one version
    (each message id is still admitted once). ``max_examples``: the most examples one update
    may claim (``None``: no bound); set it from what the job knows of its clients' data.
    """

    def __init__(self, *, job_id: str, kinds: Collection[Kind] = (Kind.UPDATE, Kind.ERROR),
                 participants: Iterable[str] | None = None, finite: bool = True,
                 one_per_round: bool = True, logger: logging.Logger | None = None,
                 label: str = "", max_examples: int | None = None) -> None:
        self.job_id = job_id
        self.max_examples = check_max_examples(max_examples)
        #: how many participants one sender's updates stand for, where more than one (a tree's
        #: edge sums the examples of the clients below it): its bound is that many times
        #: ``max_examples``
        self.represents: dict[str, int] = {}
        self.kinds = frozenset(kinds)
        self.participants: set[str] | None = None if participants is None else set(participants)
        self.finite = finite
        self.one_per_round = one_per_round
        self.trusted: set[str] = set()  # in-graph senders admitted besides the participants
        self.rejections: Counter[str] = Counter()
        self.spec: ParamSpec | None = None
        self._open: range = range(0)
        self._selected: frozenset[str] | None = None
        self._ids: dict[int, set[str]] = {}  # round -> admitted message ids
        self._answered: dict[int, set[tuple[str, str]]] = {}  # round -> (sender, slot)
        self._log = logger or logging.getLogger("foedus.admission")
        self._label = label  # prefixes log lines, e.g. "edge e1 "

    # ---- what is open -------------------------------------------------------------------------
    def open(self, rounds: int | range, spec: ParamSpec | None = None,
             selected: Collection[str] | None = None) -> None:
        """Open a round (an int) or a range of acceptable versions (FedBuff); ``spec``: the
        global model's names, shapes and dtypes; ``selected``: the only senders sampled.
        Forgets message ids and answers of rounds before the new ones' predecessor."""
        self._open = range(rounds, rounds + 1) if isinstance(rounds, int) else rounds
        if spec is not None:
            self.spec = spec
        self._selected = None if selected is None else frozenset(selected)
        keep = self._open.start - 1
        self._ids = {r: ids for r, ids in self._ids.items() if r >= keep}
        self._answered = {r: a for r, a in self._answered.items() if r >= keep}

    def close(self) -> None:
        """No round is open: every message is then ``stale_round`` (ids are still kept)."""
        self._open = range(0)

    @property
    def is_open(self) -> bool:
        return len(self._open) > 0

    def enroll(self, sender: str) -> None:
        """Add ``sender`` to the roster (a peer that said hello)."""
        if self.participants is not None:
            self.participants.add(sender)

    def answered(self, rnd: int, sender: str, slot: str = "") -> bool:
        """Whether ``sender`` already answered round ``rnd`` (in ``slot``)."""
        return (sender, slot) in self._answered.get(rnd, ())

    # ---- the verdict ------------------------------------------------------------------------
    def admit(self, msg: Message, *, slot: str = "", claimants: int = 1) -> None:
        """Admit ``msg`` or raise :class:`RejectedUpdate`. ``slot`` separates answers one sender
        may give once each per round (a swarm leader's own model and its aggregate).
        ``claimants``: how many participants' examples the update sums (a secure sum's
        survivors), each of whom may claim up to ``max_examples``."""
        self.check_envelope(msg, slot=slot)
        self._ids.setdefault(msg.round, set()).add(msg.header.message_id)
        if self.one_per_round:
            self._answered.setdefault(msg.round, set()).add((msg.sender, slot))
        self.check_content(msg, claimants=claimants)

    def check_envelope(self, msg: Message, *, slot: str = "") -> None:
        """Raise unless ``msg`` is a fresh answer of an allowed sender for an open round."""
        if msg.header.job_id != self.job_id:
            raise RejectedUpdate(WRONG_JOB, f"message is for job {msg.header.job_id!r}")
        if msg.kind not in self.kinds:
            expected = "/".join(sorted(k.value for k in self.kinds))
            raise RejectedUpdate(WRONG_KIND, f"expected {expected}, got {msg.kind.value}")
        message_id = msg.header.message_id
        if any(message_id in ids for ids in self._ids.values()):
            raise RejectedUpdate(REPLAYED, f"message {message_id} was already received")
        if msg.round not in self._open:
            now = (f"open: {self._open.start}..{self._open.stop - 1}" if self._open
                   else "no round is open")
            raise RejectedUpdate(STALE_ROUND, f"for round {msg.round}, {now}")
        if (self.participants is not None and msg.sender not in self.participants
                and msg.sender not in self.trusted):
            raise RejectedUpdate(UNKNOWN_SENDER, f"{msg.sender!r} is not a participant")
        if self._selected is not None and msg.sender not in self._selected \
                and msg.sender not in self.trusted:
            raise RejectedUpdate(NOT_SELECTED, f"{msg.sender} was not sampled this round")
        if self.one_per_round and self.answered(msg.round, msg.sender, slot):
            raise RejectedUpdate(DUPLICATE, f"{msg.sender} already answered round {msg.round}")
        if refusal_of(msg) is not None:
            return  # a filter refused it before its trail was undone: see check_content
        if msg.trail:
            raise RejectedUpdate(
                UNDECODED, f"filters {list(msg.trail)[:8]} were not undone before aggregation")

    def check_content(self, msg: Message, *, claimants: int = 1) -> None:
        """Raise unless ``msg``'s metrics, meta and (for a non-error) parameters are sound, or
        raise the refusal of a server-side filter that ``msg`` carries."""
        refused = refusal_of(msg)
        if refused is not None:
            raise RejectedUpdate(refused.reason, refused.detail)
        check_metrics(msg.metrics)
        check_meta(msg.meta)
        if msg.kind is Kind.ERROR or msg.error is not None:
            return
        if self.spec is not None:
            self.spec.check(msg.params)
        if msg.num_examples <= 0:
            raise RejectedUpdate(NO_EXAMPLES, f"{msg.sender} reported {msg.num_examples}")
        claimants = max(claimants, self.represents.get(msg.sender, 1))
        if self.max_examples is not None and msg.num_examples > self.max_examples * claimants:
            raise RejectedUpdate(TOO_MANY_EXAMPLES, f"claims {msg.num_examples} examples, at "
                                 f"most {self.max_examples * claimants}")
        if self.finite:
            check_finite_blocked(msg.params)

    def reject(self, msg: Message, exc: RejectedUpdate) -> None:
        """Count a refusal under its reason and log ONE line (no traceback): refusing hostile
        input is the normal course of things, not an error of this process."""
        self.rejections[exc.reason] += 1
        detail = exc.detail if len(exc.detail) <= MAX_DETAIL else exc.detail[:MAX_DETAIL] + "..."
        self._log.warning("%srejected update from %.64r (round %d): %s: %s", self._label,
                          msg.sender, msg.round, exc.reason, detail)


def check_max_examples(value: object) -> int | None:
    """``None`` or an integer >= 1, else :class:`ConfigError` (a bound of 0 refuses all)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"max_examples: expected an integer >= 1 or None, got {value!r:.60}")
    return value


def check_metrics(metrics: Any) -> None:
    """Raise ``bad_metrics`` unless ``metrics`` maps at most :data:`MAX_METRICS` string names of
    at most :data:`MAX_METRIC_NAME` characters to finite real numbers."""
    if not isinstance(metrics, Mapping):
        raise RejectedUpdate(BAD_METRICS, f"metrics are a {type(metrics).__name__}, not a map")
    if len(metrics) > MAX_METRICS:
        raise RejectedUpdate(BAD_METRICS, f"{len(metrics)} metrics, at most {MAX_METRICS}")
    for name, value in metrics.items():
        if not isinstance(name, str):
            raise RejectedUpdate(BAD_METRICS, f"a metric name is a {type(name).__name__}")
        if len(name) > MAX_METRIC_NAME:
            raise RejectedUpdate(BAD_METRICS, f"a metric name has {len(name)} characters, at "
                                              f"most {MAX_METRIC_NAME}")
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value):
            raise RejectedUpdate(BAD_METRICS, f"metric {name!r} is not a finite number")


def check_meta(meta: Any) -> None:
    """Raise ``bad_meta`` unless ``meta`` is a map with string keys at every depth, nested at
    most :data:`MAX_META_DEPTH` deep, with at most :data:`MAX_META_ITEMS` values and
    :data:`MAX_META_BYTES` of strings. Iterative: a hostile depth cannot exhaust the stack."""
    if not isinstance(meta, Mapping):
        raise RejectedUpdate(BAD_META, f"meta is a {type(meta).__name__}, not a map")
    items = size = 0
    stack: list[tuple[Any, int]] = [(meta, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, Mapping | list | tuple):
            if depth > MAX_META_DEPTH:
                raise RejectedUpdate(BAD_META, f"meta is nested deeper than {MAX_META_DEPTH}")
            items += len(value)
            if items > MAX_META_ITEMS:
                raise RejectedUpdate(BAD_META, f"meta holds more than {MAX_META_ITEMS} values")
            if isinstance(value, Mapping):
                for key in value:
                    if not isinstance(key, str):
                        raise RejectedUpdate(BAD_META, f"a meta key is a {type(key).__name__}")
                    size += len(key)
                stack.extend((v, depth + 1) for v in value.values())
            else:
                stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, str | bytes | bytearray):
            size += len(value)
        if size > MAX_META_BYTES:
            raise RejectedUpdate(BAD_META, f"meta holds more than {MAX_META_BYTES} bytes")
