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
party's held-out people (``data.test_fraction``) give each round's test metrics. With
``model: linear`` (the default) a round is one full-batch gradient step (``learning_rate``);
``rounds`` is the number of steps. With ``model: split-nn`` (split learning,
:mod:`foedus.vertical.split_pods`) a round is one epoch of mini-batches (``batch_size``) through
every party's bottom MLP (``hidden``, ``embedding``) and the label party's top MLP
(``top_hidden``), the embeddings combined by ``combine`` (concat or sum; ``secure_sum: true``
sums the feature parties' by secure sum); the pipeline may hold one ``split-noise`` stage, and
``checkpoint_dir`` lets every party, the label party too, resume after a crash.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from foedus.config.parts import JobParts, pipeline_of
from foedus.config.spec import ClientSection, JobSpec
from foedus.config.topology import Assembly, Topology, TransportFor, topologies
from foedus.core.errors import ConfigError
from foedus.core.params import Params
from foedus.core.runtime import Runtime
from foedus.data.datasets import load_dataset
from foedus.roles.server import RoundRecord
from foedus.topology.centralized import LinkMeter, topics
from foedus.vertical.data import PartyData, split_vertically
from foedus.vertical.linear import Task
from foedus.vertical.parties import FeatureSide, LabelSide, RoundResult, Topics
from foedus.vertical.pods import FeaturePartyPod, LabelPartyPod, feature_graph, label_graph
from foedus.vertical.split import COMBINES, SplitSpec
from foedus.vertical.split_noise import SplitNoiseStage
from foedus.vertical.split_pods import SplitFeaturePod, SplitLabelPod

REQUIRES_EXTRA = "vertical"
#: a party's name becomes part of a topic and of pod names: letters, digits, '_' and '-'
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_RESERVED = ("replies_in", "replies_out", "requests_in", "requests_out")
#: the models the topology trains, and the parameters only one of them takes
MODELS = ("linear", "split-nn")
_ONLY = {"linear": ("key_bits", "fraction_bits"),
         "split-nn": ("hidden", "embedding", "top_hidden", "combine", "secure_sum",
                      "batch_size")}


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
    trains_own_model = True  # linear or split-nn (params.model), for either task

    def __init__(self, label_party: str, parties: Mapping[str, Any], model: str = "linear",
                 learning_rate: float | None = None, key_bits: int | None = None,
                 fraction_bits: int | None = None, share: float = 0.8,
                 hidden: list[int] | None = None, embedding: int | None = None,
                 top_hidden: list[int] | None = None, combine: str | None = None,
                 secure_sum: bool | None = None, batch_size: int | None = None) -> None:
        if model not in MODELS:
            raise ConfigError(f"params.model: got {model!r}; allowed: {', '.join(MODELS)}")
        given = {k: v for k, v in locals().items() if v is not None}
        for other, keys in _ONLY.items():
            for key in keys:
                if other != model and key in given:
                    raise ConfigError(f"params.{key}: only model {other} takes it; got "
                                      f"{given[key]!r} with model {model}")
        self.model = model
        if not isinstance(parties, Mapping) or len(parties) < 2:
            raise ConfigError("params.parties: expected a mapping of two parties or more, "
                              f"each {{columns: [...]}}; got {parties!r}")
        if not isinstance(label_party, str):
            raise ConfigError(f"params.label_party: expected a party's name, got "
                              f"{label_party!r}")
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
        self.rate_given = learning_rate is not None  # else a default that suits the task
        if learning_rate is None:
            learning_rate = 0.5 if model == "linear" else 0.01
        if isinstance(learning_rate, bool) or not isinstance(learning_rate, int | float) \
                or not 0 < learning_rate < math.inf:
            raise ConfigError(f"params.learning_rate: expected a finite number > 0, got "
                              f"{learning_rate!r}")
        key_bits = 2048 if key_bits is None else key_bits
        if isinstance(key_bits, bool) or not isinstance(key_bits, int) or key_bits < 1024:
            raise ConfigError(f"params.key_bits: expected an integer >= 1024, got {key_bits!r}")
        fraction_bits = 32 if fraction_bits is None else fraction_bits
        if isinstance(fraction_bits, bool) or not isinstance(fraction_bits, int) \
                or not 8 <= fraction_bits <= 40:
            raise ConfigError(f"params.fraction_bits: expected an integer in [8, 40], got "
                              f"{fraction_bits!r}")
        self.label_party = label_party
        self.learning_rate, self.key_bits = float(learning_rate), key_bits
        self.fraction_bits = fraction_bits
        self.split = SplitSpec(
            hidden=_widths(hidden, "params.hidden", (16,)),
            embedding=_count(embedding, "params.embedding", 8),
            top_hidden=_widths(top_hidden, "params.top_hidden", (16,)),
            combine=_choice(combine, "params.combine", COMBINES, "concat"),
            batch_size=_count(batch_size, "params.batch_size", 64),
            learning_rate=self.learning_rate)
        if secure_sum is not None and not isinstance(secure_sum, bool):
            raise ConfigError(f"params.secure_sum: expected true or false, got {secure_sum!r}")
        self.secure_sum = bool(secure_sum)
        if self.secure_sum and (self.split.combine != "sum" or len(self.columns) < 3):
            raise ConfigError(
                f"params.secure_sum: needs combine: sum (got {self.split.combine}) and two "
                f"feature parties or more (got {len(self.columns) - 1}): secure sum shows the "
                "label party the sum of the feature parties' embeddings, which with one party "
                "is its embedding")

    def check(self, spec: JobSpec) -> None:
        # every split-learning party keeps its own checkpoint (there is no server)
        super().check(dataclasses.replace(spec, checkpoint_dir=None)
                      if self.model == "split-nn" else spec)
        if spec.checkpoint_dir and self.secure_sum:
            raise ConfigError("checkpoint_dir: a feature party cannot resume in the middle of "
                              "a secure-sum session; remove checkpoint_dir or secure_sum")
        pipeline = pipeline_of(spec)
        if self.model == "linear" and pipeline:
            raise ConfigError(f"pipeline: vertical parties exchange encrypted residuals and "
                              f"masked gradients, not model updates, so "
                              f"{[p.type for p in spec.pipeline]} would never run (the "
                              "protection is built in); remove it")
        if self.model == "split-nn" and (len(pipeline) > 1 or any(
                not isinstance(s, SplitNoiseStage) for s in pipeline)):
            raise ConfigError(f"pipeline: got {[p.type for p in spec.pipeline]}; allowed with "
                              "model split-nn: nothing or one split-noise stage (parties "
                              "exchange embeddings and gradients, not model updates)")
        self.refuse_aggregator(spec, "sums the parties' scores itself")
        if spec.model.type != "sklearn-sgd" or spec.model.params:
            raise ConfigError(f"model: topology vertical trains its own model over the "
                              f"parties' columns (params.model: {', '.join(MODELS)}), so "
                              f"{spec.model.type!r} would never be used; remove the key")
        if spec.data.partition == "files":
            raise ConfigError("data.partition: topology vertical splits one dataset by columns "
                              "among its parties; partition: files gives clients rows")
        self.refuse_unused(spec, "every party takes part in every step",
                           "clients.min_clients", "clients.per_round")
        self.refuse_unused(spec, "parties exchange scores and gradients, not updates",
                           "clients.max_examples")
        # the parties are params.parties: a count that disagrees would be ignored (the
        # default count cannot be told from one written, so only a different one is refused)
        if spec.clients.count not in (ClientSection.count, len(self.columns)):
            raise ConfigError(f"clients.count: {spec.clients.count}, but topology vertical has "
                              f"{len(self.columns)} parties (params.parties); remove clients")
        if spec.clients.epochs != ClientSection.epochs:
            step = "one gradient step" if self.model == "linear" else "one epoch"
            raise ConfigError(f"clients.epochs: not used by topology vertical (a round is "
                              f"{step}; rounds sets how many); remove it")

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
        label: LabelSide | None = None
        if self.label_party in actors:
            label = self._label(spec, data[self.label_party], others, task)
            runtimes[label.party] = Runtime(label_graph(label, transport_for(label.party), where))
        features = [self._feature(spec, p, data[p], others, task)
                    for p in others if p in actors]
        for f in features:
            group = f"{spec.job_id}.{f.party}" if spec.checkpoint_dir else None
            runtimes[f.party] = Runtime(feature_graph(f, transport_for(f.party), where, group))
        rounds = _Rounds(label, job.report_round, LinkMeter(*(r.graph for r in runtimes.values())),
                         len(others))
        if label is not None:
            label.round_listeners.append(rounds.on_round)

        def params() -> Params | None:
            # the model as seen here: every party's part that runs here; only with test
            # metrics (the runner would otherwise evaluate it as the job's ordinary model,
            # which it is not)
            if label is None or not (rounds.history and rounds.history[-1].metrics):
                return None
            out: dict[str, Any] = {}
            parties: list[LabelSide | FeatureSide] = [label, *features]
            for pod in parties:
                out |= _params_of(pod)
            return out

        def stop_reason() -> str | None:
            if label is not None:
                return label.stop_reason
            return next((f.stop_reason for f in features if f.stop_reason), None)

        return Assembly(
            runtimes, label.party if label is not None else None,
            history=lambda: list(rounds.history), params=params,
            records=lambda: {f.party: [{"rejected": dict(f.rejected.counts),
                                        "rounds": _rounds_of(f)}] for f in features},
            stop_reason=stop_reason)

    def _noise(self, spec: JobSpec) -> SplitNoiseStage | None:
        stage = next(iter(pipeline_of(spec)), None)
        return stage if isinstance(stage, SplitNoiseStage) else None

    def _label(self, spec: JobSpec, own: PartyData, others: list[str], task: Task,
               ) -> LabelSide:
        assert own.train_y is not None and own.test_y is not None
        common: dict[str, Any] = dict(
            job_id=spec.job_id, party=self.label_party, parties=others, task=task,
            train=(own.train_ids, own.train_x, own.train_y),
            test=(own.test_ids, own.test_x, own.test_y), rounds=spec.rounds,
            round_timeout=spec.round_timeout, join_timeout=5 * spec.round_timeout)
        if self.model == "split-nn":
            return SplitLabelPod(spec=self.split, seed=spec.seed, noise=self._noise(spec),
                                 secure_sum=self.secure_sum,
                                 checkpoint=_checkpoint(spec, self.label_party), **common)
        return LabelPartyPod(learning_rate=self._linear_rate(task), key_bits=self.key_bits,
                             fraction_bits=self.fraction_bits, **common)

    def _feature(self, spec: JobSpec, party: str, own: PartyData, others: list[str],
                 task: Task) -> FeatureSide:
        common: dict[str, Any] = dict(
            job_id=spec.job_id, party=party, label_party=self.label_party, task=task,
            ids=own.ids, x=own.x, idle_timeout=3 * spec.round_timeout,
            join_timeout=5 * spec.round_timeout)  # as long as the label party waits for it
        if self.model == "split-nn":
            return SplitFeaturePod(spec=self.split, seed=spec.seed, parties=others,
                                   noise=self._noise(spec), secure_sum=self.secure_sum,
                                   checkpoint=_checkpoint(spec, party), **common)
        return FeaturePartyPod(learning_rate=self._linear_rate(task), **common)

    def _linear_rate(self, task: Task) -> float:
        """The linear model's step: the one given, else 0.5, or 0.1 on a regression task. A
        logistic loss's curvature is at most a quarter of a squared error's, so 0.5 there is
        a far smaller step than on a regression, where it diverged on correlated columns
        (diabetes: r2 0.06 after one step, -4.5 after eight)."""
        if self.rate_given or task.kind != "regression":
            return self.learning_rate
        return 0.1


def _checkpoint(spec: JobSpec, party: str) -> Path | None:
    """Where a split-learning party keeps its state (resumed from after a restart)."""
    return Path(spec.checkpoint_dir) / f"vertical-{party}.pt" if spec.checkpoint_dir else None


def _params_of(pod: LabelSide | FeatureSide) -> dict[str, Any]:
    """A party's part of the trained model, under names that say whose it is."""
    if isinstance(pod, SplitLabelPod | SplitFeaturePod):
        return pod.params()
    if isinstance(pod, LabelPartyPod):
        return {f"weights/{pod.party}": pod.weights, "bias": pod.bias}
    assert isinstance(pod, FeaturePartyPod)
    return {f"weights/{pod.party}": pod.weights}


def _rounds_of(pod: FeatureSide) -> int:
    """How far a feature party got: rounds (linear) or batches (split learning)."""
    return pod.round if isinstance(pod, FeaturePartyPod) else \
        pod.seq if isinstance(pod, SplitFeaturePod) else 0


def _widths(value: Any, key: str, default: tuple[int, ...]) -> tuple[int, ...]:
    if value is None:
        return default
    if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 4096 for v in value):
        raise ConfigError(f"{key}: expected a list of layer widths (integers 1 to 4096), got "
                          f"{value!r}")
    return tuple(value)


def _count(value: Any, key: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 1_000_000:
        raise ConfigError(f"{key}: expected an integer from 1 to 1000000, got {value!r}")
    return value


def _choice(value: Any, key: str, allowed: tuple[str, ...], default: str) -> str:
    if value is None:
        return default
    if value not in allowed:
        raise ConfigError(f"{key}: got {value!r}; allowed: {', '.join(allowed)}")
    return str(value)


def _fraction(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ConfigError(f"{key}: expected a fraction in (0, 1], got {value!r}")
    return float(value)


class _Rounds:
    """The label party's rounds as the job's RoundRecords (metrics on the held-out people)."""

    def __init__(self, label: LabelSide | None, report: Callable[[RoundRecord], None],
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
