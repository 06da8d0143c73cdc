"""Vertical parties on one in-process transport, and their centralized twins (the linear
model and split learning)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from foedus.core.runtime import Runtime, run_graphs
from foedus.data.datasets import load_dataset
from foedus.transport.local import LocalTransport
from foedus.vertical.data import PartyData, joined, split_vertically
from foedus.vertical.linear import Fit, Task, fit_centralized
from foedus.vertical.pods import (
    FeaturePartyPod,
    LabelPartyPod,
    Topics,
    feature_graph,
    label_graph,
)
from foedus.vertical.split import SplitSpec
from foedus.vertical.split import fit_centralized as fit_split
from foedus.vertical.split_noise import SplitNoiseStage
from foedus.vertical.split_pods import SplitFeaturePod, SplitLabelPod


@dataclass
class Run:
    task: Task
    data: dict[str, PartyData]
    label: LabelPartyPod
    features: dict[str, FeaturePartyPod]

    def twin(self, rounds: int, learning_rate: float) -> Fit:
        """The same model trained centrally on the joined columns of the aligned rows."""
        table = joined(self.data, self.label.train_ids, self.label.party)
        return fit_centralized(table.x, table.y, self.task, rounds=rounds,
                               learning_rate=learning_rate)


async def run_vertical(dataset: str, columns: Mapping[str, Sequence[int]], *, rounds: int,
                       learning_rate: float, share: float = 0.8, seed: int = 0,
                       keep_received: bool = False, round_timeout: float = 60,
                       feature_cls: type[FeaturePartyPod] = FeaturePartyPod) -> Run:
    train, test, spec = load_dataset(dataset, seed=seed)
    task = Task.of(spec)
    label_party = next(iter(columns))
    data = split_vertically(train, test, columns, label_party,
                            share=dict.fromkeys(columns, share), seed=seed)
    own = data[label_party]
    assert own.train_y is not None and own.test_y is not None
    label = LabelPartyPod(
        job_id="vfl", party=label_party, parties=[p for p in columns if p != label_party],
        task=task, train=(own.train_ids, own.train_x, own.train_y),
        test=(own.test_ids, own.test_x, own.test_y), rounds=rounds,
        learning_rate=learning_rate, key_bits=1024, round_timeout=round_timeout)
    features = {
        p: feature_cls(job_id="vfl", party=p, label_party=label_party, task=task,
                           ids=data[p].ids, x=data[p].x, learning_rate=learning_rate,
                           keep_received=keep_received)
        for p in columns if p != label_party}
    transport, topics = LocalTransport(), Topics("foedus.vfl.vertical")
    await run_graphs(Runtime(label_graph(label, transport, topics)),
                     *(Runtime(feature_graph(f, transport, topics)) for f in features.values()))
    return Run(task, data, label, features)


@dataclass
class SplitRun:
    task: Task
    data: dict[str, PartyData]
    label: SplitLabelPod
    features: dict[str, SplitFeaturePod]

    def blocks(self, which: str = "train") -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Every party's columns of the aligned people sorted by id (the order the split run
        draws its batches in), and their labels."""
        people = sorted(self.label.train_ids if which == "train" else self.label.test_ids)
        out = {}
        for party, data in self.data.items():
            ids, x = (data.train_ids, data.train_x) if party == self.label.party else \
                (data.ids, data.x)
            if which == "test" and party == self.label.party:
                ids, x = data.test_ids, data.test_x
            row = {e: i for i, e in enumerate(ids)}
            out[party] = x[[row[e] for e in people]]
        own = self.data[self.label.party]
        labels = dict(zip(own.train_ids + own.test_ids,
                          np.concatenate([own.train_y, own.test_y]), strict=True))  # type: ignore[list-item]
        return out, np.asarray([labels[e] for e in people])

    def twin(self, spec: SplitSpec, epochs: int, seed: int = 0) -> dict[str, float]:
        """The test metrics of the same network trained centrally on the joined columns."""
        blocks, y = self.blocks("train")
        net = fit_split(blocks, y, self.task, spec, epochs=epochs, seed=seed)
        test, test_y = self.blocks("test")
        return self.task.metrics(net.scores(test), test_y)


async def run_split(dataset: str, columns: Mapping[str, Sequence[int]], *, epochs: int,
                    spec: SplitSpec, share: float = 0.8, seed: int = 0,
                    secure_sum: bool = False, noise: SplitNoiseStage | None = None,
                    keep_received: bool = False, round_timeout: float = 60,
                    feature_cls: type[SplitFeaturePod] = SplitFeaturePod) -> SplitRun:
    """Split learning over ``columns``' parties (the first holds the labels) in one process."""
    train, test, data_spec = load_dataset(dataset, seed=seed)
    task = Task.of(data_spec)
    label_party = next(iter(columns))
    data = split_vertically(train, test, columns, label_party,
                            share=dict.fromkeys(columns, share), seed=seed)
    own = data[label_party]
    assert own.train_y is not None and own.test_y is not None
    others = [p for p in columns if p != label_party]
    label = SplitLabelPod(
        job_id="split", party=label_party, parties=others, task=task,
        train=(own.train_ids, own.train_x, own.train_y),
        test=(own.test_ids, own.test_x, own.test_y), rounds=epochs, spec=spec, seed=seed,
        noise=noise, secure_sum=secure_sum, round_timeout=round_timeout)
    features = {
        p: feature_cls(job_id="split", party=p, label_party=label_party, task=task,
                       ids=data[p].ids, x=data[p].x, spec=spec, seed=seed, parties=others,
                       noise=noise, secure_sum=secure_sum, keep_received=keep_received)
        for p in others}
    transport, topics = LocalTransport(), Topics("foedus.split.vertical")
    await run_graphs(Runtime(label_graph(label, transport, topics)),
                     *(Runtime(feature_graph(f, transport, topics)) for f in features.values()))
    return SplitRun(task, data, label, features)
