"""Splitting one dataset into vertical parties, for demos, tests and simulations.

Real vertical parties each bring their own table; to try the protocol on a bundled dataset,
:func:`split_vertically` gives every entity (row) an id, gives each party its columns of a
seeded random subset of the entities (so overlaps are partial, as between real
organisations) in its own random row order, and the labels to the label party only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from foedus.data.datasets import Dataset


@dataclass(frozen=True)
class PartyData:
    """One party's table: its ids and columns of its train and held-out entities; the labels
    only for the label party (``None`` elsewhere)."""

    train_ids: list[str]
    train_x: np.ndarray
    test_ids: list[str]
    test_x: np.ndarray
    train_y: np.ndarray | None = None
    test_y: np.ndarray | None = None

    @property
    def ids(self) -> list[str]:
        """Every id this party holds (a feature party does not know which are held out)."""
        return self.train_ids + self.test_ids

    @property
    def x(self) -> np.ndarray:
        return np.concatenate([self.train_x, self.test_x])


def split_vertically(train: Dataset, test: Dataset, columns: Mapping[str, Sequence[int]],
                     label_party: str, *, share: Mapping[str, float], seed: int,
                     ) -> dict[str, PartyData]:
    """Each party's :class:`PartyData`: ``columns[p]`` of a ``share[p]`` fraction of the
    entities (train and test alike), drawn with ``seed``; ids are shuffled so they say nothing
    about a row's position or split."""
    rng = np.random.default_rng(seed)
    total = len(train) + len(test)
    names = [f"entity-{i:06d}" for i in rng.permutation(total)]
    out: dict[str, PartyData] = {}
    for party, cols in columns.items():
        held = np.sort(rng.permutation(total)[: max(1, round(share[party] * total))])
        rng.shuffle(held)  # this party's own row order
        tr = held[held < len(train)]
        te = held[held >= len(train)] - len(train)
        cols = list(cols)
        labels = party == label_party
        out[party] = PartyData(
            [names[i] for i in tr], train.x[tr][:, cols].astype(np.float64),
            [names[len(train) + i] for i in te], test.x[te][:, cols].astype(np.float64),
            train.y[tr] if labels else None, test.y[te] if labels else None)
    return out


def joined(parties: Mapping[str, PartyData], order: Sequence[str], label_party: str,
           which: str = "train") -> Dataset:
    """The centralized twin's table: every party's columns of ``order``'s ids side by side
    (the label party's first, then the others in ``parties``' order), with the labels."""
    blocks, y = [], None
    for party in [label_party, *(p for p in parties if p != label_party)]:
        data = parties[party]
        ids, x = (data.train_ids, data.train_x) if which == "train" else \
            (data.test_ids, data.test_x)
        row = {e: i for i, e in enumerate(ids)}
        index = [row[e] for e in order]
        blocks.append(x[index])
        if party == label_party:
            labels = data.train_y if which == "train" else data.test_y
            assert labels is not None
            y = labels[index]
    assert y is not None
    return Dataset(np.concatenate(blocks, axis=1), y)
