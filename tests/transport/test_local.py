"""The in-process transport passes the transport contract."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from foedus.testing.transport_contract import MakeTransport, TransportContract
from foedus.transport.base import Transport
from foedus.transport.local import LocalTransport


class TestLocalTransport(TransportContract):
    @pytest.fixture
    async def make_transport(self) -> AsyncIterator[MakeTransport]:
        shared = LocalTransport()  # one "deployment": every client is a view of it

        class View(Transport):
            """A per-actor handle whose close() does not close the shared deployment."""

            name = "local-view"

            def __init__(self) -> None:
                self._closed = False

            async def publish(self, topic, payload, *, key=None, retain=False):  # type: ignore[no-untyped-def]
                self._check()
                await shared.publish(topic, payload, key=key, retain=retain)

            async def subscribe(self, topic, *, group=None):  # type: ignore[no-untyped-def]
                self._check()
                return await shared.subscribe(topic, group=group)

            async def close(self) -> None:
                self._closed = True

            def _check(self) -> None:
                from foedus.core.errors import TransportClosed

                if self._closed:
                    raise TransportClosed("view closed")

        async def make() -> Transport:
            return View()

        yield make
        await shared.close()
