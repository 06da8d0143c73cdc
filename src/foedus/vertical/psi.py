"""Entity alignment by private set intersection: which people every party holds, in one order.

Vertical parties hold different columns of the same people under a shared identifier (a
customer number, a national id). Before training they must agree on the rows they have in
common and put them in the same order, without showing each other the rest of their ids.
The intersection itself is openmined-psi's ECDH protocol (commutative encryption of every id
under each side's secret key; the ``vertical`` extra), never hand-rolled here. This module
only decides who plays which side and how the order is agreed.

Per feature party ``F`` (the PSI *server*, holding its ids ``S_F``) and the label party ``L``
(the PSI *client*, holding ``S_L``):

1. ``L -> F``: a request, ``L``'s ids each encrypted under ``L``'s key (:meth:`PsiQuerier.request`).
2. ``F -> L``: a setup (``F``'s ids encrypted under ``F``'s key, the RAW data structure: no
   false positives) and a response (the request re-encrypted under ``F``'s key)
   (:meth:`PsiResponder.respond`). ``F`` learns ``|S_L|`` and nothing else.
3. ``L`` computes ``S_L & S_F`` (:meth:`PsiQuerier.shared`): it learns which of *its own* ids
   ``F`` holds, and ``|S_F|``, nothing about ``F``'s other ids.
4. ``L`` intersects over every feature party and sends each one the *order*: the common ids'
   salted SHA-256 digests, sorted (:func:`order_of`). Every digest is of an id ``F`` holds
   itself, so ``F`` learns the common ids (a subset of its own) and nothing about ``L``'s other
   ids; sorting by a salted hash hides where a row sits in anyone's table. ``F`` maps the
   digests to its rows with :func:`rows_in_order`.

With two parties the common ids are exactly the ids ``F`` shares with ``L``; with more, ``F``
learns only those that every party holds (the rows the model is trained on). The protocol is
secure against honest-but-curious parties: a label party that lies in step 4 could name any
subset of ``F``'s ids; it cannot name ids that ``F`` does not hold (they match no row and are
refused).

**Cost.** The protocol costs four elliptic-curve operations per id pair (``L`` and ``F`` each
hash and encrypt their own ids, ``F`` re-encrypts ``L``'s, ``L`` decrypts them): about 0.1 ms
each on one core here, all of it inside openmined-psi's C++ (a profile finds no per-id Python
work worth the name). openmined-psi releases the GIL but one client or server object is not
thread-safe, so each side splits its ids into one chunk per core and gives every chunk an
object of its own made from the *same* key (:data:`MIN_CHUNK` ids at least): the messages are
byte for byte those of a single call (the RAW setup is sorted, as the library sorts it), only
computed on every core of the party.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from foedus.core.errors import require

REQUIRES_EXTRA = "vertical"
#: bytes of one order digest (SHA-256)
DIGEST_BYTES = 32
#: the fewest ids worth a thread of their own (below it, one call does the whole set)
MIN_CHUNK = 2048

T = TypeVar("T")


def _psi() -> Any:
    return require("private_set_intersection.python", "vertical")


def cores() -> int:
    """The cores this process may run on (its affinity, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _workers(workers: int | None) -> int:
    if workers is None:
        return cores()
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    return workers


def chunks(n: int, workers: int) -> list[slice]:
    """``range(n)`` cut into at most ``workers`` contiguous slices of at least
    :data:`MIN_CHUNK` (one slice, possibly empty, when ``n`` is small)."""
    parts = max(1, min(workers, n // MIN_CHUNK))
    bounds = [n * k // parts for k in range(parts + 1)]
    return [slice(a, b) for a, b in itertools.pairwise(bounds)]


def _each(work: Callable[[slice], T], parts: list[slice]) -> list[T]:
    """``work`` on every slice, in threads when there are several (openmined-psi's C++
    releases the GIL); results in the slices' order, the first exception raised."""
    if len(parts) == 1:
        return [work(parts[0])]
    with ThreadPoolExecutor(len(parts), thread_name_prefix="psi") as pool:
        return list(pool.map(work, parts))


class PsiQuerier:
    """The label party's side of one PSI run with one feature party (a fresh key each run, so
    two feature parties cannot link what they were sent)."""

    def __init__(self, ids: Sequence[str], *, workers: int | None = None) -> None:
        self.ids = list(ids)
        self.workers = _workers(workers)
        self._key: bytes = _psi().client.CreateWithNewKey(True).GetPrivateKeyBytes()

    def _client(self) -> Any:
        """A library client under this run's key (one per thread: they are not thread-safe)."""
        return _psi().client.CreateFromKey(self._key, True)

    def request(self) -> bytes:
        """Step 1: this party's ids, encrypted under its own key."""
        parts = _each(lambda s: self._client().CreateRequest(self.ids[s]),
                      chunks(len(self.ids), self.workers))
        if len(parts) == 1:
            return parts[0].SerializeToString()  # type: ignore[no-any-return]
        msg = _psi().Request()
        msg.reveal_intersection = parts[0].reveal_intersection
        for part in parts:
            msg.encrypted_elements.extend(part.encrypted_elements)
        return msg.SerializeToString()  # type: ignore[no-any-return]

    def shared(self, setup: bytes, response: bytes) -> set[str]:
        """Step 3: the ids of this party that the other holds too.

        Raises :class:`ValueError` for anything the library cannot read (a hostile or broken
        peer), never a library-specific exception.
        """
        psi = _psi()
        try:
            setup_msg, response_msg = psi.ServerSetup(), psi.Response()
            setup_msg.ParseFromString(setup)
            response_msg.ParseFromString(response)
            if len(response_msg.encrypted_elements) != len(self.ids):
                raise ValueError(f"the response has {len(response_msg.encrypted_elements)} "
                                 f"elements for a request of {len(self.ids)}")
            elements = response_msg.encrypted_elements

            def found(part: slice) -> list[int]:
                sub = psi.Response()
                sub.encrypted_elements.extend(elements[part])
                rows = self._client().GetIntersection(setup_msg, sub)
                if any(not 0 <= i < part.stop - part.start for i in rows):
                    raise ValueError("the PSI answer names rows the request did not have")
                return [part.start + i for i in rows]

            indices = [i for rows in _each(found, chunks(len(self.ids), self.workers))
                       for i in rows]
        except ValueError:
            raise
        except Exception as exc:  # DecodeError, RuntimeError from the C++ core
            raise ValueError(f"unreadable PSI answer ({type(exc).__name__}: {exc})") from exc
        return {self.ids[i] for i in indices}


class PsiResponder:
    """A feature party's side: answers PSI requests over its own ids."""

    def __init__(self, ids: Sequence[str], *, max_request: int = 10_000_000,
                 workers: int | None = None) -> None:
        self.ids = list(ids)
        self.max_request = max_request
        self.workers = _workers(workers)
        self._key: bytes = _psi().server.CreateWithNewKey(True).GetPrivateKeyBytes()

    def _server(self) -> Any:
        """A library server under this party's key (one per thread)."""
        return _psi().server.CreateFromKey(self._key, True)

    def respond(self, request: bytes) -> tuple[bytes, bytes]:
        """Step 2: ``(setup, response)`` for one request; :class:`ValueError` if unreadable."""
        psi = _psi()
        try:
            msg = psi.Request()
            msg.ParseFromString(request)
            count = len(msg.encrypted_elements)
            if not 0 < count <= self.max_request:
                raise ValueError(f"a request of {count} ids (at most {self.max_request})")
            setups = _each(lambda s: self._server().CreateSetupMessage(
                0.0, count, self.ids[s], psi.DataStructure.RAW), chunks(len(self.ids),
                                                                        self.workers))
            setup = setups[0]
            if len(setups) > 1:  # the library sorts a RAW setup: so does the merge
                setup = psi.ServerSetup()
                setup.raw.encrypted_elements.extend(sorted(
                    e for part in setups for e in part.raw.encrypted_elements))

            def answer(part: slice) -> Any:
                sub = psi.Request()
                sub.reveal_intersection = msg.reveal_intersection
                sub.encrypted_elements.extend(msg.encrypted_elements[part])
                return self._server().ProcessRequest(sub)

            responses = _each(answer, chunks(count, self.workers))
            response = responses[0]
            if len(responses) > 1:
                response = psi.Response()
                for part in responses:
                    response.encrypted_elements.extend(part.encrypted_elements)
        except ValueError:
            raise
        except Exception as exc:
            raise ValueError(f"unreadable PSI request ({type(exc).__name__}: {exc})") from exc
        return setup.SerializeToString(), response.SerializeToString()


def digest(salt: bytes, entity: str) -> bytes:
    """The order key of one id: SHA-256 of the run's salt and the id (both sides compute it)."""
    return hashlib.sha256(salt + b"\x00" + entity.encode()).digest()


def order_of(salt: bytes, ids: Sequence[str] | set[str]) -> tuple[list[str], np.ndarray]:
    """``ids`` sorted by digest, and the digests as a ``(n, 32)`` uint8 array to send."""
    keyed = sorted((digest(salt, i), i) for i in ids)
    digests = np.frombuffer(b"".join(d for d, _ in keyed), np.uint8).reshape(-1, DIGEST_BYTES)
    return [i for _, i in keyed], digests


def rows_in_order(salt: bytes, digests: np.ndarray, ids: Sequence[str]) -> np.ndarray:
    """The indices into ``ids`` of the rows ``digests`` names, in its order.

    Raises :class:`ValueError` when the digests are malformed, repeat, or name an id this
    party does not hold: an order it cannot follow is refused, never guessed.
    """
    if digests.dtype != np.uint8 or digests.ndim != 2 or digests.shape[1] != DIGEST_BYTES:
        raise ValueError(f"an order must be (n, {DIGEST_BYTES}) uint8, got "
                         f"{digests.dtype} {digests.shape}")
    mine = {digest(salt, entity): row for row, entity in enumerate(ids)}
    rows: list[int] = []
    for d in digests:
        row = mine.get(bytes(d))
        if row is None:
            raise ValueError("the order names an id this party does not hold")
        rows.append(row)
    if len(set(rows)) != len(rows):
        raise ValueError("the order names an id twice")
    return np.asarray(rows, dtype=np.int64)


def intersect(label_ids: Sequence[str], parties: Mapping[str, Sequence[str]],
              salt: bytes) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """Run the whole alignment in one process: the common ids in their agreed order, the
    label party's rows in that order (indices into ``label_ids``) and each feature party's (by
    name). What the pods do over a transport, step by step, for tests and notebooks."""
    common = set(label_ids)
    for ids in parties.values():
        querier, responder = PsiQuerier(label_ids), PsiResponder(ids)
        common &= querier.shared(*responder.respond(querier.request()))
    ordered, digests = order_of(salt, common)
    rows = {name: rows_in_order(salt, digests, ids) for name, ids in parties.items()}
    return ordered, rows_in_order(salt, digests, label_ids), rows
