"""The server side of a secure-sum job's round loop: a :class:`ServerPod` that takes the secure-sum
pod's one summed update per round as the answer of every survivor.

It lives in ``roles`` (not beside the protocol pods in :mod:`foedus.privacy.secagg_pods`) because
it is a round role: ``privacy`` must not import ``roles``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from foedus.core.errors import RejectedUpdate
from foedus.core.message import Message
from foedus.privacy.secagg_pods import SUMMARY
from foedus.roles.admission import BAD_META
from foedus.roles.server import RoundRecord, ServerPod

log = logging.getLogger("foedus.privacy.secagg")


class SecureServerPod(ServerPod):
    """A :class:`ServerPod` that accepts the secure-sum pod's one update per round as one answer
    per survivor, and counts dropouts (or every member, if the sum failed) as failed clients.

    The summed update passes the same admission as any update
    (:meth:`~foedus.roles.collect.RoundCollector.offer_sum`): one per round, never replayed,
    the model's shape, bounded metrics and meta.

    Each round's record gets ``secure_sum_survivors`` and ``secure_sum_dropped`` in its
    ``metrics`` (counts), so a job's history shows that, and over how many clients, the sum ran.
    Dropped counts every participant whose input is not in the sum: one that vanished during
    the protocol, and one that never took part in the round at all (a client that died).
    """

    def __init__(self, *, secagg_sender: str = "secagg_server", **options: Any) -> None:
        super().__init__(**options)
        self.secagg_sender = secagg_sender
        self.collector.trust(secagg_sender)  # in-graph: only the secure-sum pod sends as it
        #: round -> (survivors, dropped) of that round's secure sum
        self.secure_sums: dict[int, tuple[list[str], list[str]]] = {}
        self.round_listeners.append(self._record_secure_sum)

    def _record_secure_sum(self, record: RoundRecord) -> None:
        survivors, dropped = self.secure_sums.get(record.round, ([], []))
        absent = set(self.participants or dropped) - set(survivors)
        record.metrics["secure_sum_survivors"] = float(len(survivors))
        record.metrics["secure_sum_dropped"] = float(len(absent))

    async def on_update(self, msg: Message) -> None:
        if msg.sender != self.secagg_sender:
            await super().on_update(msg)  # a client's failure passed on by the secure-sum pod
            return
        summary = msg.meta.get(SUMMARY)
        survivors, dropped = _names(summary, "survivors"), _names(summary, "dropped")
        if survivors is None or dropped is None:
            self.collector.reject(msg, RejectedUpdate(BAD_META, "no secure-sum summary"))
            self.collector.notify()
            return
        if await self.collector.offer_sum(msg, survivors, dropped):
            self.secure_sums[msg.round] = (survivors, dropped)


def _names(summary: Any, key: str) -> list[str] | None:
    """The client names under ``key`` of a secure-sum summary, or None if it is malformed."""
    if not isinstance(summary, Mapping):
        return None
    names = summary.get(key, ())
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        return None
    return list(names)
