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
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from foedus.core.errors import require

REQUIRES_EXTRA = "vertical"
#: bytes of one order digest (SHA-256)
DIGEST_BYTES = 32


def _psi() -> Any:
    return require("private_set_intersection.python", "vertical")


class PsiQuerier:
    """The label party's side of one PSI run with one feature party (a fresh key each run, so
    two feature parties cannot link what they were sent)."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = list(ids)
        self._client = _psi().client.CreateWithNewKey(True)

    def request(self) -> bytes:
        """Step 1: this party's ids, encrypted under its own key."""
        return self._client.CreateRequest(self.ids).SerializeToString()  # type: ignore[no-any-return]

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
            indices = self._client.GetIntersection(setup_msg, response_msg)
        except ValueError:
            raise
        except Exception as exc:  # DecodeError, RuntimeError from the C++ core
            raise ValueError(f"unreadable PSI answer ({type(exc).__name__}: {exc})") from exc
        if any(not 0 <= i < len(self.ids) for i in indices):
            raise ValueError("the PSI answer names rows the request did not have")
        return {self.ids[i] for i in indices}


class PsiResponder:
    """A feature party's side: answers PSI requests over its own ids."""

    def __init__(self, ids: Sequence[str], *, max_request: int = 10_000_000) -> None:
        self.ids = list(ids)
        self.max_request = max_request
        self._server = _psi().server.CreateWithNewKey(True)

    def respond(self, request: bytes) -> tuple[bytes, bytes]:
        """Step 2: ``(setup, response)`` for one request; :class:`ValueError` if unreadable."""
        psi = _psi()
        try:
            msg = psi.Request()
            msg.ParseFromString(request)
            count = len(msg.encrypted_elements)
            if not 0 < count <= self.max_request:
                raise ValueError(f"a request of {count} ids (at most {self.max_request})")
            setup = self._server.CreateSetupMessage(0.0, count, self.ids, psi.DataStructure.RAW)
            response = self._server.ProcessRequest(msg)
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
