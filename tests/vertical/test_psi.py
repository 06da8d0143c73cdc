"""Entity alignment: the PSI gives exactly the shared ids, in one order on every side, and
refuses what it cannot read."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("private_set_intersection.python")

from foedus.vertical import psi
from foedus.vertical.psi import (
    PsiQuerier,
    PsiResponder,
    digest,
    intersect,
    order_of,
    rows_in_order,
)

SALT = b"run-salt"


def _ids(rng: np.random.Generator, population: int, share: float) -> list[str]:
    held = rng.permutation(population)[: int(population * share)]
    return [f"person-{i:05d}" for i in held]  # in this party's own (random) row order


@pytest.mark.parametrize("feature_parties", [1, 2, 3])
def test_the_intersection_is_exactly_the_shared_ids_in_one_order(feature_parties: int) -> None:
    rng = np.random.default_rng(feature_parties)
    label = _ids(rng, 400, 0.8)
    parties = {f"p{k}": _ids(rng, 400, 0.7) for k in range(feature_parties)}
    expected = set(label).intersection(*map(set, parties.values()))
    assert 0 < len(expected) < min(len(label), *map(len, parties.values()))  # partial overlap

    ordered, label_rows, rows = intersect(label, parties, SALT)

    assert set(ordered) == expected and len(ordered) == len(expected)
    assert [label[i] for i in label_rows] == ordered
    for name, ids in parties.items():
        assert [ids[i] for i in rows[name]] == ordered  # the same people, row for row
    assert ordered == sorted(ordered, key=lambda i: digest(SALT, i))


def test_each_run_answers_only_membership_of_the_label_partys_own_ids() -> None:
    label = ["a", "b", "c", "d"]
    querier, responder = PsiQuerier(label), PsiResponder(["c", "d", "e", "f", "g"])
    assert querier.shared(*responder.respond(querier.request())) == {"c", "d"}


def test_the_order_hides_where_rows_sit_but_every_side_can_follow_it() -> None:
    ordered, digests = order_of(SALT, {"x", "y", "z"})
    assert digests.shape == (3, 32) and digests.dtype == np.uint8
    mine = ["z", "q", "x", "y"]
    assert [mine[i] for i in rows_in_order(SALT, digests, mine)] == ordered
    assert order_of(b"other-salt", {"x", "y", "z"})[1].tobytes() != digests.tobytes()


@pytest.mark.parametrize("bad", [
    np.zeros((1, 32), np.uint8),  # an id this party does not hold
    np.zeros((2, 16), np.uint8),  # not digests
    np.zeros(32, np.float64),
])
def test_an_order_the_party_cannot_follow_is_refused(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        rows_in_order(SALT, bad, ["x", "y"])


def test_an_order_naming_a_row_twice_is_refused() -> None:
    _, digests = order_of(SALT, {"x"})
    with pytest.raises(ValueError, match="twice"):
        rows_in_order(SALT, np.concatenate([digests, digests]), ["x", "y"])


@pytest.mark.parametrize("garbage", [b"", b"garbage", bytes(range(256))])
def test_garbage_from_a_peer_is_a_value_error_on_both_sides(garbage: bytes) -> None:
    querier, responder = PsiQuerier(["a", "b"]), PsiResponder(["b", "c"])
    with pytest.raises(ValueError):
        responder.respond(garbage)
    setup, response = responder.respond(querier.request())
    for args in ((garbage, response), (setup, garbage)):
        with pytest.raises(ValueError):
            querier.shared(*args)


def test_ids_cut_into_one_chunk_per_worker_give_the_same_messages_as_one_call(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psi, "MIN_CHUNK", 8)
    rng = np.random.default_rng(7)
    label, feature = _ids(rng, 300, 0.8), _ids(rng, 300, 0.6)
    whole_q, whole_r = PsiQuerier(label, workers=1), PsiResponder(feature, workers=1)
    cut_q, cut_r = PsiQuerier(label, workers=3), PsiResponder(feature, workers=3)
    cut_q._key, cut_r._key = whole_q._key, whole_r._key  # the same run, computed twice

    request = whole_q.request()
    assert cut_q.request() == request
    assert cut_r.respond(request) == whole_r.respond(request)  # setup (sorted) and response
    answer = cut_r.respond(cut_q.request())
    assert cut_q.shared(*answer) == whole_q.shared(*answer) == set(label) & set(feature)


def test_chunks_cover_every_id_once_in_order() -> None:
    for n in (0, 1, psi.MIN_CHUNK - 1, 2 * psi.MIN_CHUNK + 5, 10 * psi.MIN_CHUNK):
        parts = psi.chunks(n, 4)
        assert [i for s in parts for i in range(n)[s]] == list(range(n))
        assert len(parts) <= 4 and (len(parts) == 1 or all(
            s.stop - s.start >= psi.MIN_CHUNK for s in parts))
    with pytest.raises(ValueError, match="workers"):
        PsiQuerier(["a"], workers=0)
