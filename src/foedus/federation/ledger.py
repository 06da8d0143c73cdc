"""A site's privacy-budget ledger: what every DP job spent on each budgeted dataset.

A catalog entry of ``site.yaml`` may carry a lifetime budget ``{epsilon, delta}``. Before the
site accepts a job on that entry it asks this ledger what the job *will* spend, composed with
everything already spent or reserved on the entry, and refuses the job when the total would
pass the budget (:meth:`Ledger.reserve`). An accepted job holds a **reservation** for all its
planned rounds; when it ends the reservation is **settled** to what it really spent
(:meth:`Ledger.settle`). The ledger is a SQLite file in the site's state dir, so it survives
the agent's restarts.

**What a job spends** is read from the job's own pipeline, with the project's accountant
(:mod:`foedus.privacy.accountant`): each DP stage (``local-dp``, ``central-dp``) holds a
:class:`~foedus.privacy.accountant.PrivacyAccountant` whose noise multiplier and client
sampling describe one round as a ``dp_accounting`` event (:func:`round_event`); a job of
``rounds`` rounds is that event composed ``rounds`` times, exactly what the job's accountant
reports for itself.

**Composition across jobs** is Rényi-DP composition: every charge on a dataset (each DP stage
of each job, times its rounds) is composed into one ``dp_accounting`` RDP accountant and
converted once to epsilon at the *budget's* delta. This is sound because RDP composes
additively under adaptive composition (Mironov 2017, Prop. 1): the jobs run one after another
or side by side on the same data, each possibly chosen after seeing earlier models, and the
sum of their RDP curves bounds the whole sequence. It is tighter than adding each job's
epsilon (basic composition), which would also be sound but wastes budget. All charges must
share one neighbouring relation for their curves to add: the ledger uses add-or-remove-one
(the relation of every round with full participation or Poisson sampling). A stage whose
accountant states its guarantee under replace-one (``central-dp`` with ``sampling: fixed`` and
``population > clients_per_round``) cannot be composed soundly with the others, so a budgeted
dataset refuses it.

**What is counted as spent when a job ends** (never less than what was used):

* with full participation (sampling rate 1), a round costs this site only if its client sent
  an update in it: the count of updates the site's client actor recorded sending, plus one for
  each of its processes that died without reporting (it may have sent one more); for a
  ``central-dp`` stage this is capped at the reserved rounds (the server releases at most one
  noised sum per round), for ``local-dp`` it is not (every update sent is a release);
* with sampling (rate < 1) the amplification argument covers the rounds the server ran, which
  the site cannot see: the reservation is kept;
* when the site does not know (no record of the actor), the reservation is kept.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from foedus.config.parts import pipeline_of
from foedus.config.spec import JobSpec
from foedus.core.errors import ConfigError, require
from foedus.core.filter import NOISE
from foedus.privacy.accountant import PrivacyAccountant, SamplingSpec, round_event
from foedus.privacy.dp import LocalDPStage

__all__ = ["Budget", "Charge", "Ledger", "Mechanism", "epsilon_of", "mechanisms_of",
           "over_budget", "settled"]



@dataclass(frozen=True)
class Budget:
    """A catalog entry's lifetime privacy budget: epsilon at delta, over every job."""

    epsilon: float
    delta: float

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> Budget:
        if not isinstance(raw, dict) or set(raw) != {"epsilon", "delta"}:
            raise ConfigError(f"{where}: expected {{epsilon: NUMBER, delta: NUMBER}}, got "
                              f"{raw!r}")
        epsilon, delta = raw["epsilon"], raw["delta"]
        if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) \
                or not (epsilon > 0 and math.isfinite(epsilon)):
            raise ConfigError(f"{where}.epsilon: expected a number > 0, got {epsilon!r}")
        if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0 < delta < 1:
            raise ConfigError(f"{where}.delta: expected a number in (0, 1), got {delta!r}")
        return cls(float(epsilon), float(delta))


@dataclass(frozen=True)
class Mechanism:
    """One DP stage's round, as its accountant describes it (see the module docstring)."""

    stage: str  # "pipeline[0]:central-dp": which stage of the job
    noise_multiplier: float
    population: int
    clients_per_round: int
    sampling: str  # poisson | fixed
    local: bool  # local DP: every update sent is a release
    delta: float = 1e-5  # the delta the job's own accountant states its epsilon at

    @property
    def spec(self) -> SamplingSpec:
        return SamplingSpec(self.population, self.clients_per_round,
                            self.sampling)  # type: ignore[arg-type]

    @property
    def amplified(self) -> bool:
        """Whether its epsilon relies on client sampling (rate < 1)."""
        return self.spec.rate < 1.0

    @classmethod
    def of(cls, stage: str, accountant: PrivacyAccountant, *, local: bool) -> Mechanism:
        s = accountant.sampling
        return cls(stage, accountant.noise_multiplier, s.population, s.clients_per_round,
                   s.sampling, local, accountant.delta)


@dataclass(frozen=True)
class Charge:
    """What one job spends on one dataset: each of its DP mechanisms and its rounds."""

    parts: tuple[tuple[Mechanism, int], ...]

    @classmethod
    def planned(cls, mechanisms: Iterable[Mechanism], rounds: int) -> Charge:
        return cls(tuple((m, rounds) for m in mechanisms))

    def to_json(self) -> str:
        return json.dumps([[asdict(m), n] for m, n in self.parts])

    @classmethod
    def from_json(cls, text: str) -> Charge:
        return cls(tuple((Mechanism(**m), int(n)) for m, n in json.loads(text)))

    @property
    def rounds(self) -> int:
        return max((n for _, n in self.parts), default=0)


def mechanisms_of(job: dict[str, Any] | JobSpec) -> tuple[Mechanism, ...]:
    """The DP mechanisms of a job file (as a mapping, its data filled from the catalog, or
    its spec): one per DP stage of its pipeline, read from the stage's own accountant. A stage
    that adds noise without an accountant, or whose guarantee is stated under replace-one
    adjacency, cannot be charged and raises :class:`ConfigError` naming it."""
    spec = job if isinstance(job, JobSpec) else JobSpec.from_dict(job)
    out = []
    for i, stage in enumerate(pipeline_of(spec)):
        name = f"pipeline[{i}]:{spec.pipeline[i].type}"
        accountant = getattr(stage, "accountant", None)
        if isinstance(accountant, PrivacyAccountant):
            mechanism = Mechanism.of(name, accountant, local=isinstance(stage, LocalDPStage))
            if mechanism.sampling == "fixed" and mechanism.amplified:
                raise ConfigError(
                    f"{name}: sampling 'fixed' with population > clients_per_round states "
                    "its epsilon under replace-one adjacency, which the budget ledger cannot "
                    "compose with add-or-remove-one charges; use sampling 'poisson'")
            out.append(mechanism)
        elif NOISE in (stage.privacy_operations or ()):
            raise ConfigError(f"{name}: adds noise but has no privacy accountant, so its "
                              "spend cannot be charged to a budgeted dataset")
    return tuple(out)


def epsilon_of(charges: Iterable[Charge], delta: float) -> float:
    """Epsilon at ``delta`` of every charge composed (RDP, add-or-remove-one); 0 for none."""
    parts = [(m, n) for c in charges for m, n in c.parts if n > 0]
    if not parts:
        return 0.0
    dpa = require("dp_accounting", "privacy")
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant(neighboring_relation=dpa.NeighboringRelation.ADD_OR_REMOVE_ONE)
    for mechanism, rounds in parts:
        accountant.compose(dpa.SelfComposedDpEvent(
            round_event(mechanism.noise_multiplier, mechanism.spec), rounds))
    return float(accountant.get_epsilon(delta))


def over_budget(dataset: str, budget: Budget, before: Sequence[Charge],
                charge: Charge) -> str | None:
    """Why ``dataset``'s ``budget`` cannot take ``charge`` on top of ``before`` (everything
    spent or reserved on it), None when it fits. The site's reservation decides with it, and
    the coordinator's dry run forecasts with it (:mod:`foedus.federation.preflight`)."""
    after = epsilon_of([*before, charge], budget.delta)
    if after <= budget.epsilon:
        return None
    spent = epsilon_of(before, budget.delta)
    alone = epsilon_of([charge], budget.delta)
    return (f"dataset {dataset!r}: privacy budget epsilon {budget.epsilon:g} at delta "
            f"{budget.delta:g}; spent {spent:.3f}, this job requests {alone:.3f} "
            f"({charge.rounds} rounds), which would bring it to {after:.3f}")


def settled(charge: Charge, sent: int | None) -> Charge:
    """The charge a job really made, from what its client recorded (see the module
    docstring): ``sent`` is an upper bound on the updates it sent, None when unknown."""
    if sent is None:
        return charge
    parts = []
    for mechanism, reserved in charge.parts:
        if mechanism.amplified:
            parts.append((mechanism, reserved))
        elif mechanism.local:
            parts.append((mechanism, sent))
        else:
            parts.append((mechanism, min(sent, reserved)))
    return Charge(tuple(parts))


class Ledger:
    """The site's ledger file: one row per (dataset, job), reserved or settled."""

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        #: bumped by every reservation and settlement: a site re-sends its report only then
        self.changes = 0
        with self._tx() as cur:
            cur.execute("""CREATE TABLE IF NOT EXISTS charges (
                dataset TEXT NOT NULL, job_id TEXT NOT NULL, state TEXT NOT NULL,
                reserved TEXT NOT NULL, spent TEXT, reserved_at REAL NOT NULL,
                settled_at REAL, note TEXT, PRIMARY KEY (dataset, job_id))""")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")  # the check and the reservation are one step
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    @staticmethod
    def _charges(cur: sqlite3.Cursor, dataset: str) -> list[Charge]:
        cur.execute("SELECT reserved, spent FROM charges WHERE dataset = ?", (dataset,))
        return [Charge.from_json(spent or reserved) for reserved, spent in cur.fetchall()]

    def spent(self, dataset: str, delta: float) -> float:
        """Epsilon at ``delta`` of everything spent or reserved on ``dataset``."""
        with self._tx() as cur:
            return epsilon_of(self._charges(cur, dataset), delta)

    def reserve(self, dataset: str, budget: Budget, job_id: str,
                mechanisms: Sequence[Mechanism], rounds: int) -> tuple[str | None, float]:
        """Reserve ``rounds`` rounds of ``mechanisms`` on ``dataset`` for ``job_id``, unless
        the composed total would pass ``budget``: ``(reason, epsilon of this job alone)``, the
        reason None when the reservation was made. Reserving a job twice (an offer seen
        again) changes nothing."""
        charge = Charge.planned(mechanisms, rounds)
        alone = epsilon_of([charge], budget.delta)
        with self._tx() as cur:
            cur.execute("SELECT 1 FROM charges WHERE dataset = ? AND job_id = ?",
                        (dataset, job_id))
            if cur.fetchone() is not None:
                return None, alone
            reason = over_budget(dataset, budget, self._charges(cur, dataset), charge)
            if reason is not None:
                return reason, alone
            cur.execute("INSERT INTO charges (dataset, job_id, state, reserved, reserved_at) "
                        "VALUES (?, ?, 'reserved', ?, ?)",
                        (dataset, job_id, charge.to_json(), time.time()))
            self.changes += 1
        return None, alone

    def settle(self, job_id: str, sent: int | None, note: str) -> dict[str, int]:
        """Settle every reservation of ``job_id`` to what it spent (``sent``: see
        :func:`settled`); the rounds charged, per dataset. Settling twice keeps the first."""
        out: dict[str, int] = {}
        with self._tx() as cur:
            cur.execute("SELECT dataset, reserved FROM charges WHERE job_id = ? AND "
                        "state = 'reserved'", (job_id,))
            for dataset, reserved in cur.fetchall():
                spent = settled(Charge.from_json(reserved), sent)
                cur.execute("UPDATE charges SET state = 'settled', spent = ?, settled_at = ?, "
                            "note = ? WHERE dataset = ? AND job_id = ?",
                            (spent.to_json(), time.time(), note, dataset, job_id))
                out[dataset] = spent.rounds
                self.changes += 1
        return out

    def release(self, job_id: str, note: str) -> None:
        """Settle ``job_id``'s reservations to nothing spent: its actor never started here
        (the offer was withdrawn before the site's acceptance was taken), so no update left
        the site and the data was never read; keeping the reservation would shrink the
        budget for good."""
        with self._tx() as cur:
            cur.execute("UPDATE charges SET state = 'settled', spent = ?, settled_at = ?, "
                        "note = ? WHERE job_id = ? AND state = 'reserved'",
                        (Charge(()).to_json(), time.time(), note, job_id))
            self.changes += cur.rowcount

    def job_epsilon(self, dataset: str, job_id: str, delta: float) -> float | None:
        """Epsilon at ``delta`` of one job's charge (settled, else reserved), None if none."""
        with self._tx() as cur:
            cur.execute("SELECT reserved, spent FROM charges WHERE dataset = ? AND job_id = ?",
                        (dataset, job_id))
            row = cur.fetchone()
        return None if row is None else epsilon_of([Charge.from_json(row[1] or row[0])], delta)

    def report(self, budgets: dict[str, Budget]) -> dict[str, Any]:
        """The ledger as the site shows it: per budgeted dataset, the budget, what is spent
        (settled jobs), reserved (running jobs) and the total, and one line per job."""
        out: dict[str, Any] = {}
        with self._tx() as cur:
            cur.execute("SELECT dataset, job_id, state, reserved, spent, reserved_at, "
                        "settled_at, note FROM charges ORDER BY reserved_at")
            rows = cur.fetchall()
        for name, budget in sorted(budgets.items()):
            mine = [r for r in rows if r[0] == name]
            settled_ = [Charge.from_json(r[4] or r[3]) for r in mine if r[2] == "settled"]
            reserved = [Charge.from_json(r[3]) for r in mine if r[2] == "reserved"]
            out[name] = {
                "budget": asdict(budget),
                "spent": epsilon_of(settled_, budget.delta),
                "reserved_and_spent": epsilon_of([*settled_, *reserved], budget.delta),
                "jobs": [{"job_id": r[1], "state": r[2],
                          "rounds": Charge.from_json(r[4] or r[3]).rounds,
                          "epsilon": epsilon_of([Charge.from_json(r[4] or r[3])],
                                                budget.delta),
                          "reserved_at": r[5], "settled_at": r[6], "note": r[7],
                          # what a dry run composes with (the epsilons alone do not compose)
                          "charge": json.loads(r[4] or r[3])}
                         for r in mine],
            }
        return out
