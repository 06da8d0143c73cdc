"""What a job leaves on a broker after it ends, and how to clear it.

A finished run leaves its last broadcast, the ``stop``, as the model topic's retained value
(MQTT retained messages; Kafka's ``<topic>__retained`` pointer plus the topic's log), and the
server's durable group position. Clients ignore a stop from a run they are not part of, so
leftovers cannot end the next run of the same job (see :mod:`foedus.roles.client`); clearing
them is still the clean way to re-run a job id, and the only one that spares clients started
before the server the wait for a model. :func:`clear_job_state` does it for any transport that
can: MQTT clears the retained chunks, Kafka deletes the job's topics (and their retained
pointers); the in-process transport keeps nothing between instances.
"""

from __future__ import annotations

from collections.abc import Sequence

from foedus.core.errors import ConfigError
from foedus.transport.base import Transport


def job_topics(job_id: str) -> tuple[str, str]:
    """The model and updates topics of a centralized job (``foedus.<job>.model``, ...)."""
    if not job_id or any(c in job_id for c in "/+#\x00 "):
        raise ConfigError(f"job_id {job_id!r} cannot name a topic")
    return f"foedus.{job_id}.model", f"foedus.{job_id}.updates"


async def clear_job_state(transport: Transport, job_id: str,
                          extra_topics: Sequence[str] = ()) -> list[str]:
    """Clear what earlier runs of ``job_id`` left on ``transport``'s broker; returns the topics
    it cleared. Run it while no actor of the job is running."""
    model, updates = job_topics(job_id)
    clear_retained = getattr(transport, "clear_retained", None)
    delete_topics = getattr(transport, "delete_topics", None)
    if clear_retained is not None:
        topics = [model, *extra_topics]
        for topic in topics:
            await clear_retained(topic)
        return topics
    if delete_topics is not None:
        topics = [model, updates, *extra_topics]
        await delete_topics(*topics)
        return topics
    return []
