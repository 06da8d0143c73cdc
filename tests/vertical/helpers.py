"""Vertical parties on one in-process transport, and their centralized twin."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
