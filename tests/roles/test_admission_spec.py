"""One specification of admission, run against every role that aggregates updates.

Each role is built in process and fed through its input handler. Every hostile message must be
refused by every role under the same reason (counted once, one log line, no traceback), an
honest one admitted, and the role must still admit an honest update after any hostile one.

Where a check does not apply to a role, the table says so (``N/A``):

==================  ======  ====  =====  ====  ======
reason              server  edge  async  peer  secure
==================  ======  ====  =====  ====  ======
not_selected        yes     N/A   N/A    N/A   N/A     only the synchronous server samples
duplicate           yes     yes   N/A    yes   yes     FedBuff clients may send several
                                                       updates trained from one version
==================  ======  ====  =====  ====  ======

Every other reason applies to all five. The secure-sum server is fed the secure-sum pod's
summed update (one per round, standing for its survivors); a message from anyone else takes the
ordinary server path, so an outsider is ``unknown_sender`` there too. ``too_many_examples``
needs the job's bound (``clients.max_examples``), which every harness sets on its role's
admission; a secure sum may claim the bound once per survivor.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from foedus.aggregate.fedavg import FedAvg
from foedus.core.message import Kind, Message
from foedus.core.params import Params
from foedus.data.datasets import Dataset
from foedus.models.base import ModelAdapter
from foedus.privacy.secagg_pods import SUMMARY
from foedus.roles.admission import MAX_META_DEPTH, MAX_METRICS, REASONS, Admission
from foedus.roles.async_server import AsyncServerPod
from foedus.roles.edge import EdgePod
from foedus.roles.peer import PeerPod
from foedus.roles.secure_server import SecureServerPod
from foedus.roles.server import ServerPod

JOB = "spec"
STALE, CURRENT, FUTURE = 1, 2, 3  # rounds (versions) as each harness opens them
PEOPLE = [f"p{i:02d}" for i in range(40)]
UNSELECTED = PEOPLE[-1]  # on the roster, not sampled (where a role samples)
MAX_EXAMPLES = 1000  # the job's clients.max_examples, set on every role's admission


def initial() -> dict[str, np.ndarray]:
    return {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}


class StillModel(ModelAdapter):
    """A peer's model that never trains: the spec is about what the peer admits."""

    def __init__(self) -> None:
        self.params = initial()

    def get_params(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.params.items()}

    def set_params(self, params: Params) -> None:
        self.params = {k: np.array(v) for k, v in params.items()}

    def fit(self, data: Dataset, *, epochs: int = 1) -> dict[str, float]:
        return {}

    def evaluate(self, data: Dataset) -> dict[str, float]:
        return {}


class Harness:
    """One role, a round (or version window) open at ``CURRENT``, and how to feed it."""

    name = ""
    kind = Kind.UPDATE
    skips: frozenset[str] = frozenset()

    async def setup(self) -> None: ...

    def make(self, sender: str, rnd: int = CURRENT, *, job_id: str = JOB,
             **fields: Any) -> Message:
        """An honest answer from ``sender`` for ``rnd`` (one of STALE, CURRENT, FUTURE), with
        ``fields`` of :meth:`Message.create` replaced."""
        values: dict[str, Any] = {"params": {k: v + 1 for k, v in initial().items()},
                                  "num_examples": 10, **fields}
        return Message.create(self.kind, job_id=job_id, round=self.round_of(rnd),
                              sender=sender, **values)

    def round_of(self, rnd: int) -> int:
        """This role's round number for STALE, CURRENT or FUTURE."""
        return rnd

    async def send(self, msg: Message) -> None:
        raise NotImplementedError

    async def rejections(self) -> Counter[str]:
        raise NotImplementedError

    async def admitted(self) -> int:
        """How many honest answers are in the aggregate now."""
        raise NotImplementedError

    async def next_answer(self) -> None:
        """Make room for one more honest answer (only a secure-sum server needs a new round)."""

    def admission(self) -> Admission:
        """The role's admission, where the job's bounds (``max_examples``) are set."""
        return self.pod.admission  # type: ignore[attr-defined,no-any-return]

    async def bounded_setup(self) -> None:
        """:meth:`setup`, with the job's bound on claimed examples."""
        self.admission().max_examples = MAX_EXAMPLES
        await self.setup()


class ServerHarness(Harness):
    name = "server"

    def __init__(self) -> None:
        self.pod = self.build()

    def admission(self) -> Admission:
        return self.pod.collector.admission

    def build(self) -> ServerPod:
        return ServerPod(job_id=JOB, initial_params=initial(), aggregator=FedAvg(), rounds=9,
                         expected_clients=len(PEOPLE), participants=PEOPLE)

    async def setup(self) -> None:
        await self.pod.collector.open(CURRENT, self.pod.params, selected=PEOPLE[:-1])

    async def send(self, msg: Message) -> None:
        await self.pod.on_update(msg)

    async def rejections(self) -> Counter[str]:
        await self.pod.collector.settle()  # FedAvg gives its NaN verdict when it folds
        return self.pod.rejections

    async def admitted(self) -> int:
        await self.pod.collector.settle()
        tally = self.pod.collector.tally
        assert tally is not None
        return tally.accepted


class EdgeHarness(ServerHarness):
    name = "edge"
    skips = frozenset({"not_selected"})

    def __init__(self) -> None:
        self.edge = EdgePod(job_id=JOB, edge_id="e1", aggregator=FedAvg(),
                            expected_children=len(PEOPLE), children=PEOPLE)

    def admission(self) -> Admission:
        return self.edge.collector.admission

    async def setup(self) -> None:
        await self.edge.collector.open(CURRENT, initial())

    async def send(self, msg: Message) -> None:
        await self.edge.on_update(msg)

    async def rejections(self) -> Counter[str]:
        await self.edge.collector.settle()
        return self.edge.rejections

    async def admitted(self) -> int:
        await self.edge.collector.settle()
        tally = self.edge.collector.tally
        assert tally is not None
        return tally.accepted


class SecureHarness(ServerHarness):
    """Feeds the summed update of the in-graph secure-sum pod, standing for ``sender``."""

    name = "secure"
    skips = frozenset({"not_selected"})
    pod: SecureServerPod

    def build(self) -> ServerPod:
        return SecureServerPod(job_id=JOB, initial_params=initial(), aggregator=FedAvg(),
                               rounds=99, expected_clients=len(PEOPLE), participants=PEOPLE)

    async def setup(self) -> None:
        self.round = CURRENT
        self.accepted = 0
        await self.pod.collector.open(CURRENT, self.pod.params)

    def make(self, sender: str, rnd: int = CURRENT, *, job_id: str = JOB,
             **fields: Any) -> Message:
        summary = {"survivors": [sender], "dropped": []}  # "mallory": not on the roster
        meta = {SUMMARY: summary, **fields.pop("meta", {})}
        return super().make(self.pod.secagg_sender, rnd, job_id=job_id, meta=meta, **fields)

    def round_of(self, rnd: int) -> int:
        return self.round + (rnd - CURRENT)  # each answer may need a round of its own

    async def admitted(self) -> int:
        tally = self.pod.collector.tally
        assert tally is not None
        return self.accepted + tally.accepted

    async def next_answer(self) -> None:
        tally = await self.pod.collector.close()
        self.accepted += tally.accepted
        self.round += 1
        await self.pod.collector.open(self.round, self.pod.params)


class AsyncHarness(Harness):
    name = "async"
    skips = frozenset({"not_selected", "duplicate"})

    def __init__(self) -> None:
        self.pod = AsyncServerPod(job_id=JOB, initial_params=initial(), versions=99,
                                  buffer_size=1000, max_staleness=0, participants=PEOPLE)

    async def setup(self) -> None:
        buffer = self.pod.buffer
        for version in range(CURRENT):  # publish versions 1 and 2 as if buffers had filled
            buffer.accept(self.make(PEOPLE[0], version))
            buffer.apply()
        self.pod.admission.open(buffer.window())

    async def send(self, msg: Message) -> None:
        await self.pod.on_update(msg)

    async def rejections(self) -> Counter[str]:
        return self.pod.rejections

    async def admitted(self) -> int:
        return len(self.pod.buffer.buffered)


class PeerHarness(Harness):
    name = "peer"
    kind = Kind.MODEL
    skips = frozenset({"not_selected"})

    def __init__(self) -> None:
        self.pod = PeerPod(job_id=JOB, peer_id="me", model=StillModel(),
                           data=Dataset(np.zeros((4, 3)), np.zeros(4)), rounds=3,
                           expected_peers=len(PEOPLE) + 1, peers=[*PEOPLE, "me"])

    async def setup(self) -> None:
        self.pod.enter_round(3)  # the last round; round 2's late models still prove liveness

    def round_of(self, rnd: int) -> int:
        return {STALE: 1, CURRENT: 3, FUTURE: 4}[rnd]  # 4: beyond the job's last round

    async def send(self, msg: Message) -> None:
        self.pod.on_model(msg)

    async def rejections(self) -> Counter[str]:
        return self.pod.rejections

    async def admitted(self) -> int:
        return sum(len(models) for models in self.pod._trained.values())


HARNESSES: list[Callable[[], Harness]] = [ServerHarness, EdgeHarness, AsyncHarness, PeerHarness,
                                          SecureHarness]
IDS = ["server", "edge", "async", "peer", "secure"]


def deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"x": value}
    return value


def nan_like(value: float) -> dict[str, np.ndarray]:
    return {k: np.full_like(v, value) for k, v in initial().items()}


async def hostile(h: Harness, case: str, who: str = "p01") -> Message:
    """The hostile message of ``case`` from participant ``who`` (priming the role first where
    the case needs it)."""
    if case == "replayed":
        honest = h.make(who)
        await h.send(honest)
        await h.next_answer()
        return honest
    if case == "duplicate":
        await h.send(h.make(who))
        return h.make(who)
    made: dict[str, Callable[[], Message]] = {
        "wrong_job": lambda: h.make(who, job_id="another"),
        "wrong_kind": lambda: Message.create(Kind.METRICS, job_id=JOB, round=CURRENT,
                                             sender=who, metrics={"loss": 1.0}),
        "stale_round": lambda: h.make(who, STALE),
        "future_round": lambda: h.make(who, FUTURE),
        "unknown_sender": lambda: h.make("mallory"),
        "not_selected": lambda: h.make(UNSELECTED),
        "undecoded": lambda: h.make(who, trail=("zstd",)),
        "wrong_names": lambda: h.make(who, params={"w": np.ones((2, 3), np.float32)}),
        "wrong_shape": lambda: h.make(who, params={"w": np.ones((2, 3), np.float32),
                                                     "b": np.ones(4, np.float32)}),
        "wrong_dtype": lambda: h.make(who, params={k: v + 1j for k, v in initial().items()}),
        "nan": lambda: h.make(who, params=nan_like(np.nan)),
        "inf": lambda: h.make(who, params=nan_like(np.inf)),
        "bytes_metric_key": lambda: h.make(who, metrics={b"loss": 0.5}),
        "many_metrics": lambda: h.make(who, metrics={f"m{i}": 0.0 for i in range(10_000)}),
        "long_metric_name": lambda: h.make(who, metrics={"m" * 65: 0.0}),
        "non_finite_metric": lambda: h.make(who, metrics={"loss": float("nan")}),
        "deep_meta": lambda: h.make(who, meta=deep(50)),
        "no_examples": lambda: h.make(who, num_examples=0),
        "claims_too_many": lambda: h.make(who, num_examples=10**12),
    }
    return made[case]()


#: hostile case -> the one reason every role gives
CASES = {
    "wrong_job": "wrong_job", "wrong_kind": "wrong_kind", "stale_round": "stale_round",
    "future_round": "stale_round", "unknown_sender": "unknown_sender",
    "not_selected": "not_selected", "duplicate": "duplicate", "replayed": "replayed",
    "undecoded": "undecoded", "wrong_names": "wrong_names", "wrong_shape": "wrong_shape",
    "wrong_dtype": "wrong_dtype", "nan": "not_finite", "inf": "not_finite",
    "bytes_metric_key": "bad_metrics", "many_metrics": "bad_metrics",
    "long_metric_name": "bad_metrics", "non_finite_metric": "bad_metrics",
    "deep_meta": "bad_meta", "no_examples": "no_examples",
    "claims_too_many": "too_many_examples",
}


def test_the_cases_cover_every_reason_and_the_limits_are_what_the_cases_exceed() -> None:
    assert set(CASES.values()) == set(REASONS)
    assert MAX_METRICS < 10_000 and MAX_META_DEPTH < 50


@pytest.mark.parametrize("make", HARNESSES, ids=IDS)
async def test_an_honest_update_is_admitted_by_every_role(make: Callable[[], Harness]) -> None:
    h = make()
    await h.setup()
    await h.send(h.make("p00"))
    assert await h.admitted() == 1
    assert not await h.rejections()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("make", HARNESSES, ids=IDS)
async def test_every_role_refuses_each_hostile_update_for_the_same_reason_and_survives(
    make: Callable[[], Harness], case: str, caplog: pytest.LogCaptureFixture,
) -> None:
    h = make()
    reason = CASES[case]
    if reason in h.skips:
        pytest.skip(f"{reason} does not apply to the {h.name} role (see the module's table)")
    await h.bounded_setup()
    msg = await hostile(h, case)
    before = await h.admitted()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        await h.send(msg)
        assert await h.rejections() == Counter({reason: 1})
    refusals = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].exc_info is None  # one line, no traceback
    assert reason in refusals[0].getMessage()
    assert await h.admitted() == before  # nothing of it reached the aggregate

    await h.next_answer()
    await h.send(h.make("p02"))  # the role survived: an honest update still gets in
    assert await h.admitted() == before + 1
    assert await h.rejections() == Counter({reason: 1})


@pytest.mark.parametrize("make", HARNESSES, ids=IDS)
async def test_a_role_fed_every_hostile_update_in_turn_still_admits_honest_ones(
    make: Callable[[], Harness],
) -> None:
    h = make()
    await h.bounded_setup()
    expected: Counter[str] = Counter()
    for i, (case, reason) in enumerate(CASES.items()):
        if reason in h.skips:
            continue
        msg = await hostile(h, case, who=PEOPLE[i])  # a content refusal spends who's answer
        await h.send(msg)
        expected[reason] += 1
        await h.next_answer()
    assert await h.rejections() == expected
    before = await h.admitted()
    await h.send(h.make(PEOPLE[30]))
    assert await h.admitted() == before + 1
