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
from foedus.core.message import Kind, Message
from foedus.privacy.secagg_pods import SUMMARY
from foedus.roles.server import RoundRecord, ServerPod

log = logging.getLogger("foedus.privacy.secagg")


class SecureServerPod(ServerPod):
    """A :class:`ServerPod` that accepts the secure-sum pod's one update per round as one answer
    per survivor, and counts dropouts (or every member, if the sum failed) as failed clients.

    Kernel hook this stands in for: ``ServerPod.on_update`` treating ``meta["secagg_sum"]``
    (``survivors``, ``dropped``) from a trusted in-graph sender exactly as below.

    Each round's record gets ``secure_sum_survivors`` and ``secure_sum_dropped`` in its
    ``metrics`` (counts), so a job's history shows that, and over how many clients, the sum ran.
    """

    def __init__(self, *, secagg_sender: str = "secagg_server", **options: Any) -> None:
        super().__init__(**options)
        self.secagg_sender = secagg_sender
        #: round -> (survivors, dropped) of that round's secure sum
        self.secure_sums: dict[int, tuple[list[str], list[str]]] = {}
        self.round_listeners.append(self._record_secure_sum)

    def _record_secure_sum(self, record: RoundRecord) -> None:
        survivors, dropped = self.secure_sums.get(record.round, ([], []))
        record.metrics["secure_sum_survivors"] = float(len(survivors))
        record.metrics["secure_sum_dropped"] = float(len(dropped))

    async def on_update(self, msg: Message) -> None:
        summary = msg.meta.get(SUMMARY)
        if msg.sender != self.secagg_sender or not isinstance(summary, Mapping):
            await super().on_update(msg)
            return
        collector = self.collector
        async with collector.lock:
            record = collector.tally
            if record is None or msg.round != self.current_round \
                    or msg.header.job_id != self.job_id:
                collector.reject(msg, RejectedUpdate("stale_round", "secure sum for another round"))
                return
            survivors = [str(s) for s in summary.get("survivors", ())]
            dropped = [str(s) for s in summary.get("dropped", ())]
            record.senders.update(survivors, dropped)
            record.failed_clients.extend(dropped)
            self.secure_sums[msg.round] = (survivors, dropped)
            if msg.kind is Kind.ERROR or msg.error is not None:
                log.warning("round %d: %s", msg.round, msg.error)
            else:
                try:
                    self.aggregator.accept(msg.replace(meta={}))
                    for _, exc in self.aggregator.settle():  # the verdict now, not at close
                        raise exc
                except RejectedUpdate as exc:
                    collector.reject(msg, exc)
                else:
                    record.accepted += len(survivors)
        collector.notify()
