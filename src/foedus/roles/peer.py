"""A swarm peer: trains locally, shares its model with the other peers, and averages what it
received. There is no server; every peer runs its own round loop.

Each round ``r`` a peer (1) trains on its own data from its current model, (2) publishes the
trained model for round ``r`` on ``model`` (a shared, retained topic), (3) collects the other
peers' round-``r`` models until every peer it believes alive has answered or its deadline passed,
and (4) replaces its model by the example-weighted mean of its own and (a sample of) the received
models. Two ways to combine, chosen by ``mode``:

* ``"gossip"`` (default): each peer averages itself with ``neighbors`` models drawn at random from
  those it received (all of them by default). With all of them every peer computes the same mean
  and the swarm reaches consensus at once; with fewer, peers differ but are pulled together each
  round (randomised gossip averaging, Boyd et al. 2006). Every peer still receives every model
  (one shared topic): sampling saves averaging, not download bandwidth.
  Local training keeps re-injecting differences, so partial gossip levels off at a spread set by
  the step size; ``mixing_rounds`` ends the job with that many rounds of averaging only, which
  shrink the spread geometrically to a consensus.
* ``"leader"``: a leader is elected each round without any messages: the peers alive in the view
  of this peer, sorted by id, take turns (``sorted(alive)[r % len(alive)]``). The leader averages
  everything it received and publishes that aggregate; the others adopt it. A peer whose leader
  stays silent past the deadline (dead, or elected differently because its view differs) falls
  back to its own gossip average, so a lost leader costs one deadline, never the swarm.

Membership needs no registry. Peers say ``hello`` when they start (and answer a new peer's hello
once, so a late subscriber hears those who started before it); a founding peer begins round 1
once ``expected_peers - 1`` others said hello (or ``join_timeout`` passed). After that a peer is
*alive* while its models keep arriving. A peer that
missed a whole round is no longer waited for (it costs one deadline when it dies, then the rest go
at full speed), a peer that is heard from again is waited for again, and a peer that leaves
cleanly says so with a ``leave`` control message. A peer started with ``join=True`` catches up:
it adopts the first model it hears (the topic's retained one, at once), jumps to the swarm's
current round and says hello again naming that round, from which the others wait for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from foedus.core.errors import ConfigError, RejectedUpdate
from foedus.core.message import Kind, Message
from foedus.core.params import Params, ParamSpec
from foedus.core.pod import Pod, Wire
from foedus.data.datasets import Dataset
from foedus.models.base import ModelAdapter
from foedus.roles.admission import UNKNOWN_SENDER, WRONG_JOB, Admission

#: an aggregate from a peer that is not this round's leader (in this peer's view)
NOT_LEADER = "not_leader"

log = logging.getLogger("foedus.peer")

MODES = ("gossip", "leader")


@dataclass
class PeerRecord:
    """One round of one peer."""

    round: int
    received: int = 0  # other peers' models that arrived and were admitted
    combined: int = 0  # models averaged, this peer's own included
    #: other peers' models that went into the model this peer ends the round with: the
    #: ``neighbors`` it sampled (gossip), all it received (the round's leader), or one, the
    #: leader's aggregate (a peer that adopted it)
    accepted: int = 0
    alive: list[str] = field(default_factory=list)
    leader: str | None = None
    adopted_leader: bool = False
    duration_s: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)  # refused since the previous round

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PeerPod(Pod):
    """Wires: ``model`` in (other peers' models), ``model_out`` (retained), ``control`` (not
    retained: leave notices must never become the topic's current value).

    Other peers' models pass the same :class:`~foedus.roles.admission.Admission` as updates at
    a server: job, kind (a model), round (from the previous round to the last), sender (on the
    ``peers`` roster, when one is given: without it membership is learnt from hellos and
    models), one model per sender and round (and one aggregate, in leader mode), no replayed
    message id, the model's shape, finite values, bounded metrics and meta.
    """

    inputs: ClassVar[tuple[Wire, ...]] = (Wire("model"),)
    outputs: ClassVar[tuple[Wire, ...]] = (
        Wire("model_out"), Wire("control"), Wire("events", required=False),
    )

    def __init__(
        self, *, job_id: str, peer_id: str, model: ModelAdapter, data: Dataset, rounds: int,
        expected_peers: int, epochs: int = 1, round_timeout: float = 30.0,
        mode: str = "gossip", neighbors: int | None = None, join: bool = False,
        join_timeout: float = 30.0, mixing_rounds: int = 0, eval_data: Dataset | None = None,
        seed: int = 0, peers: Sequence[str] | None = None,
        name: str = "peer",
    ) -> None:
        super().__init__(name)
        if rounds < 1:
            raise ConfigError(f"rounds must be at least 1, got {rounds}")
        if expected_peers < 1:
            raise ConfigError(f"expected_peers must be at least 1, got {expected_peers}")
        if epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {epochs}")
        if round_timeout <= 0 or join_timeout <= 0:
            raise ConfigError("round_timeout and join_timeout must be positive")
        if mode not in MODES:
            raise ConfigError(f"mode {mode!r} is unknown; allowed: {', '.join(MODES)}")
        if neighbors is not None and neighbors < 1:
            raise ConfigError(f"neighbors must be at least 1, got {neighbors}")
        if neighbors is not None and neighbors > expected_peers - 1:
            raise ConfigError(f"neighbors {neighbors} is more than the {expected_peers - 1} "
                              f"other peers of expected_peers={expected_peers}")
        if not 0 <= mixing_rounds < rounds:
            raise ConfigError(f"mixing_rounds must be between 0 and rounds-1, got {mixing_rounds}")
        if len(data) == 0:
            raise ConfigError(f"peer {peer_id!r} has no training data")
        self.job_id = job_id
        self.peer_id = peer_id
        self.model = model
        self.data = data
        self.rounds = rounds
        self.expected_peers = expected_peers
        self.epochs = epochs
        self.round_timeout = round_timeout
        self.mode = mode
        self.neighbors = neighbors
        self.join = join
        self.join_timeout = join_timeout
        self.mixing_rounds = mixing_rounds
        self.eval_data = eval_data
        self.seed = seed
        self.history: list[PeerRecord] = []
        self.params: dict[str, np.ndarray] = model.get_params()
        self.joined_from: Message | None = None
        #: called after every round with this peer and the round's record (metrics exporters,
        #: tests that watch the swarm converge)
        self.round_listeners: list[Callable[[PeerPod, PeerRecord], None]] = []
        self.peers = sorted(set(peers) - {peer_id}) if peers is not None else None
        self.admission = Admission(job_id=job_id, kinds=(Kind.MODEL,), participants=self.peers,
                                   logger=log, label=f"peer {peer_id} ")
        self.admission.open(range(1, rounds + 1), ParamSpec.of(self.params))
        self._rejected_round: Counter[str] = Counter()  # since the previous round's record
        self._trained: dict[int, dict[str, Message]] = {}  # round -> sender -> trained model
        # round -> sender -> an aggregate; only the elected leader's is adopted
        self._aggregates: dict[int, dict[str, Message]] = {}
        self._last_seen: dict[str, int] = {}  # sender -> newest round heard from it
        self._left: set[str] = set()
        self._current = 0
        self._arrived = asyncio.Event()

    # ---- input ----------------------------------------------------------------------------
    @property
    def rejections(self) -> Counter[str]:
        """Refused messages from other peers by reason over the whole job."""
        return self.admission.rejections

    @property
    def rejected(self) -> Counter[str]:
        """The same as :attr:`rejections` (the name swarm code has read so far)."""
        return self.admission.rejections

    def on_model(self, msg: Message) -> None:
        if msg.sender == self.peer_id and msg.header.job_id == self.job_id:
            return  # our own model, back from the shared topic
        if msg.kind is Kind.CONTROL:
            self._on_control(msg)
            return
        try:  # every network input is untrusted: a bad model is refused, never averaged
            self.admission.admit(msg, slot="aggregate" if msg.meta.get("aggregate") else "")
        except RejectedUpdate as exc:
            self._reject(msg, exc)
            return
        self._left.discard(msg.sender)
        self._last_seen[msg.sender] = max(msg.round, self._last_seen.get(msg.sender, 0))
        if msg.round < self._current:
            return  # too late for this peer; it still proves the sender is alive
        if msg.meta.get("aggregate"):
            self._aggregates.setdefault(msg.round, {})[msg.sender] = msg
        else:
            self._trained.setdefault(msg.round, {})[msg.sender] = msg
        self._arrived.set()

    def _on_control(self, msg: Message) -> None:
        """Membership: ``hello`` and ``leave`` from peers of this job (on the roster, if any)."""
        if msg.header.job_id != self.job_id:
            self._reject(msg, RejectedUpdate(WRONG_JOB, f"control for job {msg.header.job_id!r}"))
            return
        if self.peers is not None and msg.sender not in self.peers:
            self._reject(msg, RejectedUpdate(UNKNOWN_SENDER, f"{msg.sender!r} is not a peer"))
            return
        action = msg.meta.get("action")
        if action == "leave":
            self._left.add(msg.sender)
        elif action == "hello":
            if msg.sender not in self._last_seen:  # new to us: answer once, so it hears us
                self.emit("control", self._message(Kind.CONTROL, 0, action="hello"))
            # a joining peer names the round it starts at: waited for from then on (else it
            # could trail the founders by part of a round for ever, never counted alive)
            joins_at = min(max(msg.round, 0), self.rounds)
            self._last_seen[msg.sender] = max(joins_at, self._last_seen.get(msg.sender, 0))
            self._left.discard(msg.sender)
        self._arrived.set()

    def _reject(self, msg: Message, exc: RejectedUpdate) -> None:
        self.admission.reject(msg, exc)
        self._rejected_round[exc.reason] += 1

    def enter_round(self, rnd: int) -> None:
        """Make ``rnd`` current: forget older rounds' models, and admit models from the
        previous round (they still prove their senders alive) to the last one."""
        self._current = rnd
        for old in [r for r in self._trained if r < rnd]:
            del self._trained[old]
        for old in [r for r in self._aggregates if r < rnd]:
            del self._aggregates[old]
        self.admission.open(range(max(1, rnd - 1), self.rounds + 1))

    # ---- the round loop -------------------------------------------------------------------
    async def run(self) -> None:
        rnd = 1
        await self.send("control", self._message(Kind.CONTROL, 0, action="hello"))
        if self.join:
            rnd = await self._catch_up()
            await self.send("control", self._message(Kind.CONTROL, rnd, action="hello"))
        else:
            await self._rendezvous()
        while rnd <= self.rounds:
            await self._run_round(rnd)
            rnd = max(rnd + 1, self.swarm_round())  # behind the swarm? skip to its round
        await self.send("control", self._message(Kind.CONTROL, self.rounds, action="leave"))

    async def _rendezvous(self) -> None:
        """Before round 1, wait (up to ``join_timeout``) until ``expected_peers - 1`` others said
        hello. Peers in separate processes start at different moments; without this, the first
        one would publish its round-1 model before the last one subscribed, and the swarm would
        start with peers averaging different sets."""
        def heard() -> bool:
            return len(set(self._last_seen) - self._left) >= self.expected_peers - 1

        deadline = time.monotonic() + self.join_timeout
        while not heard() and (remaining := deadline - time.monotonic()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        if not heard():
            log.warning("peer %s: only %d of %d peers said hello within %.1fs; starting",
                        self.peer_id, len(self._last_seen), self.expected_peers - 1,
                        self.join_timeout)

    async def _catch_up(self) -> int:
        """Adopt the first model heard (the retained one arrives first) and its round."""
        deadline = time.monotonic() + self.join_timeout
        while not self._trained and not self._aggregates:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("peer %s heard no swarm within %.1fs; starting alone",
                            self.peer_id, self.join_timeout)
                return 1
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                continue
        first = max(
            [*(m for r in self._aggregates.values() for m in r.values()),
             *(m for r in self._trained.values() for m in r.values())],
            key=lambda m: m.round,
        )
        self.joined_from = first
        self.params = {k: np.array(v) for k, v in first.params.items()}
        log.info("peer %s joined at round %d from %s", self.peer_id, first.round, first.sender)
        return max(first.round + 1, self.swarm_round())

    async def _run_round(self, rnd: int) -> None:
        began = time.perf_counter()
        self.enter_round(rnd)
        alive = self._alive(rnd)
        record = PeerRecord(rnd, alive=sorted(alive))
        # The first round of a founding peer cannot know who is out there yet: it waits for
        # expected_peers; later rounds wait for the peers alive in its view.
        floor = self.expected_peers - 1 if not self.history and not self.join else 0

        def complete() -> bool:
            got = set(self._trained.get(rnd, {}))
            return alive - self._left <= got and len(got) >= floor
        if rnd > self.rounds - self.mixing_rounds:  # averaging only: pure consensus rounds
            trained, metrics = self.params, dict[str, float]()
        else:
            trained, metrics = await asyncio.to_thread(self._train)
        own = self._message(Kind.MODEL, rnd, params=trained, metrics=metrics)
        await self.send("model_out", own)

        await self._wait(complete)
        received = list(self._trained.get(rnd, {}).values())  # a leaver's last model counts
        record.received = len(received)
        chosen = self._choose(rnd, received)
        mean = _weighted_mean([own, *chosen])
        record.combined = 1 + len(chosen)
        record.accepted = len(chosen)
        if self.mode == "leader":
            everyone = sorted({self.peer_id, *(m.sender for m in received)})
            leader = everyone[rnd % len(everyone)]
            record.leader = leader
            if leader == self.peer_id:
                full = _weighted_mean([own, *received])
                mean = full
                record.combined, record.accepted = 1 + len(received), len(received)
                await self.send("model_out", self._message(
                    Kind.MODEL, rnd, params=full, aggregate=True,
                    num_examples=sum(m.num_examples for m in (own, *received)),
                ))
            else:
                await self._wait(lambda: leader in self._aggregates.get(rnd, {}))
                offered = self._aggregates.get(rnd, {})
                for impostor in sorted(set(offered) - {leader}):  # not elected: never adopted
                    self._reject(offered[impostor], RejectedUpdate(
                        NOT_LEADER, f"an aggregate for round {rnd}, whose leader is {leader!r}"))
                if leader in offered:
                    mean = {k: np.array(v) for k, v in offered[leader].params.items()}
                    record.adopted_leader = True
                    record.combined, record.accepted = 1, 1  # the aggregate replaces its own
        self.params = mean
        if self.eval_data is not None and len(self.eval_data):
            record.metrics = await asyncio.to_thread(self._evaluate)
        record.duration_s = time.perf_counter() - began
        record.rejected = dict(self._rejected_round)
        self._rejected_round.clear()
        self.history.append(record)
        for listener in self.round_listeners:
            listener(self, record)
        await self.send("events", self._message(Kind.METRICS, rnd, metrics=record.metrics))

    def swarm_round(self) -> int:
        """The newest round more than half of the other peers heard from have reached: where
        a peer that fell behind skips to. One peer's word is not enough (it could be a forged
        name announcing the last round, which would make every peer skip to the job's end)."""
        reached = sorted((r for p, r in self._last_seen.items() if p not in self._left),
                         reverse=True)
        return reached[len(reached) // 2] if reached else 0

    def _alive(self, rnd: int) -> set[str]:
        """Peers heard from in the previous round or later and not gone; empty before anyone
        was heard (then ``expected_peers`` says how many to wait for)."""
        return {p for p, last in self._last_seen.items() if last >= rnd - 1} - self._left

    async def _wait(self, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.round_timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _choose(self, rnd: int, received: list[Message]) -> list[Message]:
        if self.neighbors is None or self.neighbors >= len(received):
            return received
        ordered = sorted(received, key=lambda m: m.sender)
        rng = np.random.default_rng([self.seed, zlib.crc32(self.peer_id.encode()), rnd])
        picks = rng.choice(len(ordered), self.neighbors, replace=False)
        return [ordered[i] for i in sorted(picks)]

    def _train(self) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        self.model.set_params(self.params)
        metrics = self.model.fit(self.data, epochs=self.epochs)
        return self.model.get_params(), {f"train_{k}": v for k, v in metrics.items()}

    def _evaluate(self) -> dict[str, float]:
        assert self.eval_data is not None
        self.model.set_params(self.params)
        return self.model.evaluate(self.eval_data)

    def _message(
        self, kind: Kind, rnd: int, *, params: Params | None = None,
        metrics: dict[str, float] | None = None, num_examples: int | None = None,
        aggregate: bool = False, action: str | None = None,
    ) -> Message:
        meta: dict[str, Any] = {}
        if aggregate:
            meta["aggregate"] = True
        if action:
            meta["action"] = action
        return Message.create(
            kind, job_id=self.job_id, round=rnd, sender=self.peer_id, params=params,
            num_examples=len(self.data) if num_examples is None else num_examples,
            metrics=metrics, meta=meta,
        )


def _weighted_mean(messages: list[Message]) -> dict[str, np.ndarray]:
    """Example-weighted mean of the messages' parameters, name by name, in float64."""
    total = float(sum(m.num_examples for m in messages))
    names = list(messages[0].params)
    out: dict[str, np.ndarray] = {}
    for name in names:
        acc = np.zeros(np.shape(messages[0].params[name]), dtype=np.float64)
        for m in messages:  # shapes were checked on arrival
            acc += (m.num_examples / total) * np.asarray(m.params[name], dtype=np.float64)
        out[name] = acc.astype(np.asarray(messages[0].params[name]).dtype, copy=False)
    return out
