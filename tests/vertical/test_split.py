"""Split learning: as accurate as the same network trained centrally, a feature party never
receives labels or another party's columns, the secure sum gives the label party only the sum,
noise is applied and accounted, and a trained network serves new people."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("private_set_intersection.python")
pytest.importorskip("torch")
pytest.importorskip("dp_accounting")

from foedus.codec import encode
from foedus.core.message import Kind, Message
from foedus.vertical.linear import Task
from foedus.vertical.split import (
    SplitNet,
    SplitSpec,
    bottom_model,
    load_state,
    predict,
    state_of,
)
from foedus.vertical.split_noise import SplitNoiseStage
from foedus.vertical.split_pods import SplitFeaturePod
from tests.vertical.helpers import SplitRun, run_split

EPOCHS = 4
SPEC = SplitSpec(batch_size=32)
#: breast cancer's 30 columns over a hospital (with the diagnoses), a lab and an insurer
COLUMNS = {"hospital": range(0, 10), "lab": range(10, 20), "insurer": range(20, 30)}


@pytest.fixture(scope="module")
def concat() -> SplitRun:
    return asyncio.run(run_split("breast_cancer", COLUMNS, epochs=EPOCHS, spec=SPEC,
                                 keep_received=True))


def test_split_learning_is_as_accurate_as_the_same_network_trained_centrally(
        concat: SplitRun) -> None:
    run = concat
    assert run.label.stop_reason is None and len(run.label.history) == EPOCHS
    final = run.label.history[-1].metrics
    twin = run.twin(SPEC, EPOCHS)
    assert final["accuracy"] >= 0.9
    assert abs(final["accuracy"] - twin["accuracy"]) <= 0.02
    assert final["loss"] == pytest.approx(twin["loss"], rel=1e-3)  # the same steps, in fact


def test_a_feature_party_receives_no_labels_and_no_other_partys_columns(
        concat: SplitRun) -> None:
    lab = concat.features["lab"]
    assert lab.received
    steps = {(m.meta["step"], tuple(sorted(m.params))) for m in lab.received}
    assert steps == {("psi", ("request",)), ("align", ("salt", "test", "train")),
                     ("step", ("rows",)), ("step", ("gradient", "rows")), ("stop", ())}
    # what arrives: PSI bytes, digests, batch positions, and gradients of lab's own width
    for m in lab.received:
        for name, a in m.params.items():
            assert (name, str(a.dtype)) in {("request", "uint8"), ("salt", "uint8"),
                                            ("train", "uint8"), ("test", "uint8"),
                                            ("rows", "int64"), ("gradient", "float32")}
            if name == "gradient":
                assert a.shape[1] == SPEC.embedding
    # ...and no message holds, in any encoding, the labels or a column of another party
    hospital, insurer = concat.data["hospital"], concat.data["insurer"]
    assert hospital.train_y is not None
    blocks, y = concat.blocks("train")
    secrets = [hospital.train_y, y, 1 - y]
    secrets += [hospital.train_x[:, j] for j in range(3)] + [insurer.x[:, j] for j in range(3)]
    secrets += [blocks["hospital"][:, j] for j in range(3)]
    secrets += [blocks["insurer"][:, j] for j in range(3)]
    payloads = b"".join(encode(m) for m in lab.received)
    for secret in secrets:  # 32 values: a short run of 0/1 bytes is in any payload
        for dtype in (np.float64, np.float32, np.int64, np.uint8):
            needle = np.asarray(secret[:32]).astype(dtype).tobytes()
            assert needle not in payloads


def test_the_trained_network_predicts_for_new_people_each_party_answering_for_its_own(
        concat: SplitRun) -> None:
    params = concat.label.params() | concat.features["lab"].params() \
        | concat.features["insurer"].params()
    net = SplitNet.build(SPEC, concat.task, {p: len(c) for p, c in COLUMNS.items()}, seed=99)
    load_state(net.top, params, "top")
    for p in COLUMNS:
        load_state(net.bottoms[p], params, f"bottom/{p}")
    parts = {p: (d.test_ids, d.test_x) if p == "hospital" else (d.ids, d.x)
             for p, d in concat.data.items()}
    ids, labels = predict(parts, net)
    assert set(ids) == set(concat.label.test_ids)
    own = concat.data["hospital"]
    truth = dict(zip(own.test_ids, own.test_y, strict=True))  # type: ignore[arg-type]
    accuracy = float(np.mean(labels == np.asarray([truth[i] for i in ids])))
    assert accuracy == pytest.approx(concat.label.history[-1].metrics["accuracy"])


async def test_with_secure_sum_the_label_party_only_ever_holds_the_sum() -> None:
    spec = SplitSpec(batch_size=64, combine="sum")
    run = await run_split("breast_cancer", COLUMNS, epochs=2, spec=spec, secure_sum=True,
                          keep_received=True)
    assert run.label.stop_reason is None and len(run.label.history) == 2
    twin = run.twin(spec, 2)
    final = run.label.history[-1].metrics
    assert final["loss"] == pytest.approx(twin["loss"], rel=1e-3)  # fixed point: 2**-24
    lab = run.features["lab"]
    # lab's answers never carried its embeddings: only keys, shares and the masked vector
    sent = {m.meta["step"] for m in lab.received}
    assert {"roster", "routed", "unmask"} <= sent
    assert not run.label.rejected.counts and not lab.rejected.counts


async def test_noise_is_applied_accounted_and_costs_accuracy_a_little() -> None:
    noise = SplitNoiseStage(embedding_noise=0.3, gradient_noise=0.3, embedding_clip=2.0)
    run = await run_split("breast_cancer", COLUMNS, epochs=EPOCHS, spec=SPEC, noise=noise)
    metrics = [r.metrics for r in run.label.history]
    eps = [m["dp_epsilon_embeddings"] for m in metrics]
    assert eps == sorted(eps) and eps[0] > 0  # spent every epoch
    assert metrics[-1]["dp_epsilon_gradients"] == pytest.approx(
        noise.metrics(EPOCHS)["dp_epsilon_gradients"])
    twin = run.twin(SPEC, EPOCHS)
    assert metrics[-1]["loss"] != pytest.approx(twin["loss"], rel=1e-3)  # it was noised
    assert metrics[-1]["accuracy"] >= 0.85


def test_noise_refuses_an_embedding_above_its_clip_norm_and_clips_gradients() -> None:
    stage = SplitNoiseStage(embedding_noise=1.0, gradient_noise=1.0, gradient_clip=1.0)
    rng = np.random.default_rng(0)
    with pytest.raises(Exception, match="above the clip norm"):
        stage.noise_embeddings(np.full((2, 4), 3.0, np.float32), rng)
    g = stage.noise_gradients(np.full((10_000, 2), 100.0), 4, np.random.default_rng(1))
    # clipped to norm 1 per example, then N(0, 1) noise, then / batch: mean ~ (1/sqrt 2) / 4
    assert g.mean() == pytest.approx(2 ** -0.5 / 4, abs=0.01)
    assert g.std() == pytest.approx(1 / 4, abs=0.01)


class _Forgetful(SplitFeaturePod):
    """Loses its answer to the third batch once (as across a crash after its checkpoint)."""

    lost = False

    def _reply(self, step: str, round_: int, params: dict[str, np.ndarray]) -> None:
        if self.seq == 3 and not _Forgetful.lost:
            _Forgetful.lost = True
            self._answer = self._message(Kind.UPDATE, step, round_, params, seq=self.seq)
            return
        super()._reply(step, round_, params)


async def test_the_label_party_asks_again_and_gets_the_same_answer(concat: SplitRun) -> None:
    run = await run_split("breast_cancer", COLUMNS, epochs=EPOCHS, spec=SPEC,
                          round_timeout=12, feature_cls=_Forgetful)  # asks after 2 s
    assert _Forgetful.lost and run.label.stop_reason is None
    assert not run.label.rejected.counts  # the answer came once: the second time asked
    for asked_again, once in zip(run.label.history, concat.label.history, strict=True):
        assert asked_again.metrics["accuracy"] == once.metrics["accuracy"]
        assert asked_again.metrics["loss"] == pytest.approx(once.metrics["loss"], rel=1e-6)


def test_a_partys_initial_network_depends_on_the_seed_and_its_name_only() -> None:
    def weights(party: str) -> dict[str, np.ndarray]:
        return state_of(bottom_model(10, SPEC, 0, party), "b")

    names = ["lab", "insurer"] * 8
    serial = [weights(p) for p in names]
    with ThreadPoolExecutor(4) as pool:  # parties in one process build theirs in threads
        concurrent = list(pool.map(weights, names))
    for one, other in zip(serial, concurrent, strict=True):
        assert all(np.array_equal(one[k], other[k]) for k in one)
    assert not np.array_equal(serial[0]["b/0.weight"], serial[1]["b/0.weight"])


def _party() -> SplitFeaturePod:
    return SplitFeaturePod(job_id="split", party="lab", label_party="hospital",
                           task=Task("binary", (0, 1)), ids=["a", "b"], x=np.ones((2, 2)),
                           spec=SPEC, seed=0, parties=["lab"])


def _step(**params: np.ndarray) -> Message:
    return Message.create(Kind.MODEL, job_id="split", round=1, sender="hospital",
                          recipient="lab", params=params,
                          meta={"step": "step", "run": "r", "seq": 1, "part": "train"})


@pytest.mark.parametrize("params", [
    {},  # no rows
    {"rows": np.asarray([5], np.int64)},  # past the order
    {"rows": np.asarray([0.0])},  # not positions
    {"rows": np.asarray([0], np.int64), "gradient": np.zeros((3, 8), np.float32)},
])
def test_a_feature_party_refuses_a_batch_it_cannot_use(params: dict[str, np.ndarray]) -> None:
    party = _party()
    party.run_id = "r"
    party.on_request(_step())  # before the order
    party._rows = {"train": np.asarray([0, 1]), "test": np.asarray([], np.int64)}
    party.on_request(_step(**params))
    assert party.rejected.counts == {"malformed": 2}
    assert party.take_outbox() == [] and party.seq == 0
