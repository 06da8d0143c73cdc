"""Vertical FL: parties that hold different columns of the same people, no server.

One party holds the labels (``label_party``); the others hold columns only. They align the
people they share by private set intersection, then train a logistic (or, for a regression
dataset, linear) model over all their columns with Paillier-encrypted residuals
(:mod:`foedus.vertical.pods` has the message flow, docs/vertical.md what each party learns).
Pods and wires (``~>`` is a topic)::

    label party L:  replies_in(foedus.J.vertical.label) -> L.reply
                    L.request -> requests_out ~> foedus.J.vertical.party.<recipient>
    party P:        requests_in(foedus.J.vertical.party.P) -> P.request
                    P.reply -> replies_out ~> foedus.J.vertical.label

Job file::

    topology:
      type: vertical
      params:
        label_party: hospital
        parties:
          hospital: {columns: [0, 1, 2]}          # by index, or by name when the data has names
          lab: {columns: [3, 4, 5], share: 0.9}   # share: the fraction of people it holds

On a bundled dataset every party holds its columns of a seeded random subset of the people
(``share``, 0.8 by default), so overlaps are partial as between real organisations; the label
party's held-out people (``data.test_fraction``) give each round's test metrics. A round is one
full-batch gradient step (``learning_rate``); ``rounds`` is the number of steps.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

from foedus.config.parts import JobParts, pipeline_of
from foedus.config.spec import JobSpec
from foedus.config.topology import Assembly, Topology, TransportFor, topologies
from foedus.core.errors import ConfigError
from foedus.core.params import Params
from foedus.core.runtime import Runtime
from foedus.data.datasets import load_dataset
from foedus.roles.server import RoundRecord
from foedus.topology.centralized import LinkMeter, topics
from foedus.vertical.data import split_vertically
from foedus.vertical.linear import Task
from foedus.vertical.pods import (
    FeaturePartyPod,
    LabelPartyPod,
    RoundResult,
    Topics,
    feature_graph,
    label_graph,
)

REQUIRES_EXTRA = "vertical"
#: a party's name becomes part of a topic and of pod names: letters, digits, '_' and '-'
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_RESERVED = ("replies_in", "replies_out", "requests_in", "requests_out")


def vertical_topics(job_id: str) -> Topics:
    """The job's vertical topics (job ids are validated as for every topology)."""
    return Topics(topics(job_id).model.rsplit(".", 1)[0] + ".vertical")


@topologies.register("vertical")
class Vertical(Topology):
    """Actors: the parties, the label party first. ``learning_rate`` of the gradient steps;
    ``key_bits`` of the label party's Paillier key (2048; 1024 only for demos);
    ``fraction_bits`` of the fixed point of every encrypted number; ``share`` the default
    fraction of the people each party holds on a bundled dataset."""

    leader = None  # the label party, where it runs; the others end on its stop

    def __init__(self, label_party: str, parties: Mapping[str, Any], learning_rate: float = 0.5,
                 key_bits: int = 2048, fraction_bits: int = 32, share: float = 0.8) -> None:
        if not isinstance(parties, Mapping) or len(parties) < 2:
            raise ConfigError("params.parties: expected a mapping of two parties or more, "
                              f"each {{columns: [...]}}; got {parties!r}")
        if label_party not in parties:
            raise ConfigError(f"params.label_party: {label_party!r} is not one of the parties "
                              f"{sorted(parties)}")
        self.columns: dict[str, list[int | str]] = {}
        self.shares: dict[str, float] = {}
        seen: dict[int | str, str] = {}
        for name, options in parties.items():
            where = f"params.parties.{name}"
            if not isinstance(name, str) or not _NAME.match(name) or name in _RESERVED:
                raise ConfigError(f"params.parties: a party name must be letters, digits, '_' "
                                  f"or '-' (and not {', '.join(_RESERVED)}); got {name!r}")
            if not isinstance(options, Mapping) or set(options) - {"columns", "share"}:
                raise ConfigError(f"{where}: expected {{columns: [...], share: 0.8}}, got "
                                  f"{options!r}")
            cols = options.get("columns")
            if not isinstance(cols, list) or not cols or not all(
                    isinstance(c, str) or (isinstance(c, int) and not isinstance(c, bool)
                                           and c >= 0) for c in cols):
                raise ConfigError(f"{where}.columns: expected a non-empty list of column "
                                  f"indices (>= 0) or names, got {cols!r}")
            for c in cols:
                if c in seen:
                    raise ConfigError(f"{where}.columns: column {c!r} is {seen[c]}'s already; "
                                      "each column belongs to one party")
                seen[c] = name
            self.columns[name] = list(cols)
            self.shares[name] = _fraction(options.get("share", share), f"{where}.share")
        _fraction(share, "params.share")
        if isinstance(learning_rate, bool) or not isinstance(learning_rate, int | float) \
                or not learning_rate > 0:
            raise ConfigError(f"params.learning_rate: expected a number > 0, got "
                              f"{learning_rate!r}")
        if isinstance(key_bits, bool) or not isinstance(key_bits, int) or key_bits < 1024:
            raise ConfigError(f"params.key_bits: expected an integer >= 1024, got {key_bits!r}")
        if isinstance(fraction_bits, bool) or not isinstance(fraction_bits, int) \
                or not 8 <= fraction_bits <= 40:
            raise ConfigError(f"params.fraction_bits: expected an integer in [8, 40], got "
                              f"{fraction_bits!r}")
        self.label_party = label_party
        self.learning_rate, self.key_bits = float(learning_rate), key_bits
        self.fraction_bits = fraction_bits

    def check(self, spec: JobSpec) -> None:
        super().check(spec)
        if pipeline_of(spec):
            raise ConfigError(f"pipeline: vertical parties exchange encrypted residuals and "
                              f"masked gradients, not model updates, so "
                              f"{[p.type for p in spec.pipeline]} would never run (the "
                              "protection is built in); remove it")
        self.refuse_aggregator(spec, "sums the parties' scores itself")
        if spec.model.type != "sklearn-sgd" or spec.model.params:
            raise ConfigError(f"model: topology vertical trains its own logistic or linear "
                              f"regression over the parties' columns, so {spec.model.type!r} "
                              "would never be used; remove the key")
        if spec.data.partition == "files":
            raise ConfigError("data.partition: topology vertical splits one dataset by columns "
                              "among its parties; partition: files gives clients rows")
        self.refuse_unused(spec, "every party takes part in every step",
                           "clients.min_clients", "clients.per_round")

    def actors(self, spec: JobSpec) -> list[str]:
        return [self.label_party, *(p for p in self.columns if p != self.label_party)]

    def participants(self, spec: JobSpec) -> str:
        return f"{len(self.columns)} parties"

    def data_holders(self, spec: JobSpec) -> list[str]:
        return self.actors(spec)  # every party holds columns

    def _indices(self, names: tuple[str, ...], n_features: int) -> dict[str, list[int]]:
        """Each party's columns as indices; a column the data does not have is refused."""
        out: dict[str, list[int]] = {}
        for party, cols in self.columns.items():
            resolved = []
            for c in cols:
                if isinstance(c, str):
                    if c not in names:
                        raise ConfigError(
                            f"topology.params.parties.{party}.columns: no column {c!r} in the "
                            f"data ({', '.join(names) if names else 'it has no column names'})")
                    c = names.index(c)
                if not c < n_features:
                    raise ConfigError(f"topology.params.parties.{party}.columns: column {c} "
                                      f"does not exist; the data has {n_features} (0 to "
                                      f"{n_features - 1})")
                resolved.append(c)
            out[party] = resolved
        if len({c for cols in out.values() for c in cols}) < sum(map(len, out.values())):
            raise ConfigError("topology.params.parties: a column is named twice (by index and "
                              "by name)")
        return out

    def build(self, job: JobParts, actors: Collection[str], transport_for: TransportFor,
              ) -> Assembly:
        spec = job.spec
        try:
            train, test, data_spec = load_dataset(spec.data.dataset,
                                                  test_fraction=spec.data.test_fraction,
                                                  seed=spec.seed, **spec.data.options)
        except ConfigError as exc:
            raise ConfigError(f"data: {exc}") from exc
        columns = self._indices(data_spec.feature_names, data_spec.n_features)
        task = Task.of(data_spec)
        data = split_vertically(train, test, columns, self.label_party, share=self.shares,
                                seed=spec.seed)
        where = vertical_topics(spec.job_id)
        others = [p for p in self.actors(spec) if p != self.label_party]
        runtimes: dict[str, Runtime] = {}
        label: LabelPartyPod | None = None
        if self.label_party in actors:
            own = data[self.label_party]
            assert own.train_y is not None and own.test_y is not None
            label = LabelPartyPod(
                job_id=spec.job_id, party=self.label_party, parties=others, task=task,
                train=(own.train_ids, own.train_x, own.train_y),
                test=(own.test_ids, own.test_x, own.test_y), rounds=spec.rounds,
                learning_rate=self.learning_rate, key_bits=self.key_bits,
                fraction_bits=self.fraction_bits, round_timeout=spec.round_timeout,
                join_timeout=5 * spec.round_timeout)
            runtimes[label.party] = Runtime(label_graph(label, transport_for(label.party), where))
        features = [
            FeaturePartyPod(job_id=spec.job_id, party=p, label_party=self.label_party, task=task,
                            ids=data[p].ids, x=data[p].x, learning_rate=self.learning_rate,
                            idle_timeout=3 * spec.round_timeout)
            for p in others if p in actors]
        for f in features:
            runtimes[f.party] = Runtime(feature_graph(f, transport_for(f.party), where))
        rounds = _Rounds(label, job.report_round, LinkMeter(*(r.graph for r in runtimes.values())),
                         len(others))
        if label is not None:
            label.round_listeners.append(rounds.on_round)

        def params() -> Params | None:
            # the model as seen here: every party's weights run here, the label party's bias;
            # only with test metrics (the runner would otherwise evaluate it as the job's
            # ordinary model, which it is not)
            if label is None or not (rounds.history and rounds.history[-1].metrics):
                return None
            weights = {f"weights/{label.party}": label.weights, "bias": label.bias}
            return weights | {f"weights/{f.party}": f.weights for f in features}

        def stop_reason() -> str | None:
            if label is not None:
                return label.stop_reason
            return next((f.stop_reason for f in features if f.stop_reason), None)

        return Assembly(
            runtimes, label.party if label is not None else None,
            history=lambda: list(rounds.history), params=params,
            records=lambda: {f.party: [{"rejected": dict(f.rejected.counts),
                                        "rounds": f.round}] for f in features},
            stop_reason=stop_reason)


def _fraction(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ConfigError(f"{key}: expected a fraction in (0, 1], got {value!r}")
    return float(value)


class _Rounds:
    """The label party's rounds as the job's RoundRecords (metrics on the held-out people)."""

    def __init__(self, label: LabelPartyPod | None, report: Callable[[RoundRecord], None],
                 meter: LinkMeter,
                 parties: int) -> None:
        self.label, self.report, self.meter, self.parties = label, report, meter, parties
        self.history: list[RoundRecord] = []

    def on_round(self, result: RoundResult) -> None:
        record = RoundRecord(result.round, accepted=self.parties, rejected=result.rejected,
                             duration_s=result.duration_s, metrics=dict(result.metrics))
        record.bytes_in, record.bytes_out = self.meter.delta()
        self.history.append(record)
        self.report(record)
