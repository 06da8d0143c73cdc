"""The vertical protocol: lossless against its centralized twin, and a feature party never
receives labels, residuals or another party's columns in the clear."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("private_set_intersection.python")
pytest.importorskip("phe")

from foedus.codec import encode
from foedus.core.message import Kind, Message
from foedus.vertical.data import joined
from foedus.vertical.linear import Task
from foedus.vertical.pods import FeaturePartyPod
from tests.vertical.helpers import Run, run_vertical

ROUNDS, LR = 4, 0.5
#: breast cancer's 30 columns over a hospital (with the diagnoses), a lab and an insurer
COLUMNS = {"hospital": range(0, 10), "lab": range(10, 20), "insurer": range(20, 30)}


@pytest.fixture(scope="module")
def breast_cancer() -> Run:
    return asyncio.run(run_vertical("breast_cancer", COLUMNS, rounds=ROUNDS, learning_rate=LR,
                                    keep_received=True))


def _twin_metrics(run: Run, rounds: int, lr: float) -> tuple[dict[str, float], np.ndarray]:
    fit = run.twin(rounds, lr)
    test = joined(run.data, run.label.test_ids, run.label.party, "test")
    return run.task.metrics(fit.scores(test.x), test.y), fit.weights


def test_three_parties_train_on_exactly_the_entities_all_of_them_hold(breast_cancer: Run) -> None:
    run = breast_cancer
    common = set(run.data["hospital"].train_ids)
    for p in ("lab", "insurer"):
        common &= set(run.data[p].ids)
    assert set(run.label.train_ids) == common
    assert 0 < len(common) < min(len(d.train_ids) for d in run.data.values())  # partial
    assert run.label.stop_reason is None and len(run.label.history) == ROUNDS


def test_breast_cancer_over_three_parties_is_lossless_against_its_twin(breast_cancer: Run) -> None:
    run = breast_cancer
    twin, weights = _twin_metrics(run, ROUNDS, LR)
    final = run.label.history[-1].metrics
    assert abs(final["accuracy"] - twin["accuracy"]) <= 0.01
    assert final["accuracy"] >= 0.9
    # the weights themselves agree, each party's block of the joined model
    np.testing.assert_allclose(run.label.weights, weights[0:10], atol=1e-6)
    np.testing.assert_allclose(run.features["lab"].weights, weights[10:20], atol=1e-6)
    np.testing.assert_allclose(run.features["insurer"].weights, weights[20:30], atol=1e-6)


def test_a_feature_party_receives_no_labels_residuals_or_others_columns(
        breast_cancer: Run) -> None:
    run = breast_cancer
    lab = run.features["lab"]
    assert lab.received, "keep_received recorded nothing"
    steps = {(m.meta["step"], tuple(sorted(m.params))) for m in lab.received}
    assert steps == {("psi", ("request",)), ("align", ("public_key", "salt", "test", "train")),
                     ("residuals", ("residuals",)), ("unmasked", ("gradient",)),
                     ("stop", ())}
    # only bytes arrive (PSI messages, digests, the key, ciphertexts, masked values)...
    assert all(a.dtype == np.uint8 for m in lab.received for a in m.params.values())
    assert all(isinstance(v, str | int) for m in lab.received for v in m.meta.values())
    # ...and none holds, in any float encoding, the labels, the residuals of any round or a
    # column of another party, in the aligned order or the owner's
    hospital, insurer = run.data["hospital"], run.data["insurer"]
    assert hospital.train_y is not None
    table = joined(run.data, run.label.train_ids, "hospital")
    fit_rounds = [run.twin(t, LR) for t in range(ROUNDS)]
    secrets = [hospital.train_y, table.y, *(run.task.residuals(f.scores(table.x), table.y)[:, 0]
                                           for f in fit_rounds)]
    secrets += [hospital.train_x[:, j] for j in range(3)] + [insurer.x[:, j] for j in range(3)]
    secrets += [table.x[:, j] for j in (0, 1, 20, 21)]
    payloads = b"".join(encode(m) for m in lab.received)
    for secret in secrets:
        for dtype in (np.float64, np.float32, np.int64):
            needle = np.asarray(secret[:4]).astype(dtype).tobytes()
            assert needle not in payloads


async def test_diabetes_regression_over_two_parties_matches_its_twin_r2() -> None:
    lr = 0.2  # gradient descent on the squared error diverges on diabetes at 0.5
    run = await run_vertical("diabetes", {"clinic": range(0, 5), "registry": range(5, 10)},
                             rounds=ROUNDS, learning_rate=lr)
    assert run.task == Task("regression")
    twin, weights = _twin_metrics(run, ROUNDS, lr)
    final = run.label.history[-1].metrics
    assert abs(final["r2"] - twin["r2"]) <= 0.01 and final["r2"] > 0.2
    np.testing.assert_allclose(run.features["registry"].weights, weights[5:10], atol=1e-6)


def _party() -> FeaturePartyPod:
    return FeaturePartyPod(job_id="vfl", party="lab", label_party="hospital",
                           task=Task("binary", (0, 1)), ids=["a", "b"], x=np.ones((2, 2)),
                           learning_rate=0.1)


def _from(sender: str, step: str, recipient: str = "lab", **params: np.ndarray) -> Message:
    return Message.create(Kind.MODEL, job_id="vfl", round=1, sender=sender,
                          recipient=recipient, params=params, meta={"step": step, "run": "r"})


@pytest.mark.parametrize(("msg", "reason"), [
    (_from("mallory", "residuals"), "not_for_me"),
    (_from("hospital", "residuals", recipient="insurer"), "not_for_me"),
    (_from("hospital", "residuals"), "other_run"),  # no run joined yet
    (_from("hospital", "psi", request=np.zeros(3, np.uint8)), "malformed"),
    (_from("hospital", "psi"), "malformed"),
    (_from("hospital", "psi", request=np.zeros((2, 2), np.float64)), "malformed"),
])
def test_a_feature_party_refuses_what_it_cannot_use_and_counts_why(msg: Message,
                                                                   reason: str) -> None:
    party = _party()
    party.on_request(msg)  # never raises
    assert party.rejected.counts == {reason: 1}
    assert party.take_outbox() == []


def test_a_feature_party_refuses_every_step_out_of_order() -> None:
    party = _party()
    party.run_id = "r"
    for step in ("align", "residuals", "unmasked", "nonsense"):
        party.on_request(_from("hospital", step, gradient=np.zeros((2, 5), np.uint8)))
    assert party.rejected.counts == {"malformed": 3, "unknown_step": 1}
    assert party.take_outbox() == []


class _Garbling(FeaturePartyPod):
    """Sends a malformed gradient and a stale round's before each real one."""

    def _residuals(self, msg: Message) -> None:
        self.emit("reply", self._message(Kind.UPDATE, "gradient", msg.round,
                                         {"gradient": np.zeros((3, 7), np.uint8)}))
        self.emit("reply", self._message(Kind.UPDATE, "gradient", msg.round + 5, {}))
        super()._residuals(msg)


class _Silent(FeaturePartyPod):
    """Never answers the residuals."""

    def _residuals(self, msg: Message) -> None:
        pass


async def test_the_label_party_refuses_garbage_from_a_party_and_goes_on() -> None:
    run = await run_vertical("breast_cancer", {"hospital": range(0, 15), "lab": range(15, 30)},
                             rounds=2, learning_rate=LR, feature_cls=_Garbling)
    assert run.label.stop_reason is None and len(run.label.history) == 2
    assert run.label.rejected.counts == {"malformed": 2, "unexpected": 2}
    assert run.label.history[-1].rejected == {"malformed": 1, "unexpected": 1}


async def test_a_silent_party_stops_the_job_with_a_reason_everyone_hears() -> None:
    run = await run_vertical("breast_cancer", {"hospital": range(0, 15), "lab": range(15, 30)},
                             rounds=2, learning_rate=LR, feature_cls=_Silent, round_timeout=2)
    assert run.label.history == []
    assert run.label.stop_reason is not None and "['lab'] did not answer step 'gradient'" \
        in run.label.stop_reason
    assert run.features["lab"].stop_reason == f"the label party stopped: {run.label.stop_reason}"


async def test_wine_multiclass_over_two_parties_is_lossless_against_its_twin() -> None:
    run = await run_vertical("wine", {"winery": range(0, 7), "lab": range(7, 13)},
                             rounds=3, learning_rate=LR)
    assert run.task.kind == "multiclass" and run.task.outputs == 3
    twin, weights = _twin_metrics(run, 3, LR)
    assert abs(run.label.history[-1].metrics["accuracy"] - twin["accuracy"]) <= 0.01
    np.testing.assert_allclose(run.features["lab"].weights, weights[7:13], atol=1e-6)
