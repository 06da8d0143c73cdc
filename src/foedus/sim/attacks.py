"""Byzantine clients on demand, to check that a job's aggregation survives them.

A robust aggregator is only as good as the attack it was tried against. The ``byzantine``
pipeline stage turns chosen clients into attackers: after honest local training, their update
is replaced just before it leaves the client, so everything else (transport, server, round
records) sees exactly what a real attacker would send. Three attacks, the usual ones in the
robust-aggregation literature:

* ``sign-flip``: the model negated and scaled by ``scale`` (a gradient-ascent attacker);
* ``noise``: Gaussian noise of standard deviation ``scale`` in place of the model;
* ``mixed``: the first attacker flips signs, the second sends noise, and so on alternately.

Job file::

    pipeline:
      - type: byzantine
        params: {attackers: [client-000, client-001], attack: mixed, scale: 10}
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from foedus.core.errors import ConfigError
from foedus.core.filter import ATTACK, Filter, Stage, stages
from foedus.core.message import Kind, Message

ATTACKS = ("sign-flip", "noise", "mixed")


class ByzantineFilter(Filter):
    """Replaces the attackers' updates; passes everyone else's unchanged."""

    def __init__(self, attackers: Sequence[str], attack: str, scale: float, seed: int) -> None:
        super().__init__("byzantine")
        self.attackers = list(attackers)
        self.attack = attack
        self.scale = scale
        self.rng = np.random.default_rng(seed)

    def process(self, msg: Message) -> Message:
        if msg.kind is not Kind.UPDATE or msg.sender not in self.attackers:
            return msg
        attack = self.attack
        if attack == "mixed":
            attack = ATTACKS[self.attackers.index(msg.sender) % 2]
        if attack == "sign-flip":
            params = {k: (-self.scale * v).astype(v.dtype) for k, v in msg.params.items()}
        else:
            params = {k: (self.scale * self.rng.standard_normal(v.shape)).astype(v.dtype)
                      for k, v in msg.params.items()}
        return msg.replace(params=params)


@stages.register("byzantine")
class ByzantineStage(Stage):
    """Client-side attack stage (there is nothing to undo on the server)."""

    privacy_operations = (ATTACK,)

    def __init__(self, attackers: Sequence[str], attack: str = "mixed", scale: float = 10.0,
                 seed: int = 0) -> None:
        if isinstance(attackers, str) or not attackers \
                or not all(isinstance(a, str) for a in attackers):
            raise ConfigError(f"byzantine: attackers must be a non-empty list of client ids, "
                              f"got {attackers!r}")
        if attack not in ATTACKS:
            raise ConfigError(f"byzantine: attack must be one of {list(ATTACKS)}, got {attack!r}")
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0:
            raise ConfigError(f"byzantine: scale must be a positive number, got {scale!r}")
        self.attackers = list(attackers)
        self.attack = attack
        self.scale = float(scale)
        self.seed = seed

    def client(self) -> Filter:
        return ByzantineFilter(self.attackers, self.attack, self.scale, self.seed)
