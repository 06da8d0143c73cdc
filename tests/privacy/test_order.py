"""Graph-build-time order and pairing checks for update pipelines."""

from __future__ import annotations

import pytest

from foedus.compress.lossless import ZstdStage
from foedus.compress.qsgd import QSGDStage
from foedus.compress.sparsify import TopKStage
from foedus.core.errors import ConfigError, PodError
from foedus.core.filter import LOSSLESS, LOSSY, Filter, Half, Stage
from foedus.core.message import Message
from foedus.privacy.dp import CentralDPStage, ClipStage, LocalDPStage
from foedus.privacy.order import check_filters, check_pipeline, check_stages
from foedus.privacy.secagg_pods import SecureSumSettings, SecureSumStage
from foedus.security.signing import SignStage
from foedus.sim.attacks import ByzantineStage
from foedus.testing import make_message, run_pod


def local_dp() -> LocalDPStage:
    return LocalDPStage(clip_norm=1.0, noise_multiplier=0.5)


def secure() -> SecureSumStage:
    return SecureSumStage(SecureSumSettings(max_dropouts=1))


@pytest.mark.parametrize("pipeline", [
    [ClipStage(1.0)],
    [local_dp(), QSGDStage()],
    [ClipStage(1.0), secure(), ZstdStage()],
    [CentralDPStage(clients_per_round=5, clip_norm=1.0, noise_multiplier=1.0), TopKStage()],
    [],
])
def test_well_ordered_pipelines_pass(pipeline: list[object]) -> None:
    check_pipeline(pipeline)  # type: ignore[arg-type]


def test_clipping_after_noise_is_refused_naming_both_stages() -> None:
    with pytest.raises(ConfigError, match=r"pipeline\[1\] \(ClipStage\).*pipeline\[0\] "
                                          r"\(LocalDPStage\)"):
        check_pipeline([local_dp(), ClipStage(1.0)])


@pytest.mark.parametrize("lossy", [QSGDStage, TopKStage])
def test_lossy_compression_after_secure_masking_is_refused(lossy: type) -> None:
    with pytest.raises(ConfigError, match=rf"{lossy.__name__}.*after secure masking.*"
                                          r"SecureSumStage"):
        check_pipeline([ClipStage(1.0), secure(), lossy()])


def test_noise_after_secure_masking_is_refused() -> None:
    with pytest.raises(ConfigError, match="after secure masking"):
        check_pipeline([secure(), local_dp()])


def test_privacy_stages_after_a_codec_are_refused() -> None:
    with pytest.raises(ConfigError, match="after the lossy step"):
        check_pipeline([QSGDStage(), ClipStage(1.0)])


def halves(stages: list[object]) -> tuple[list[Filter], list[Filter]]:
    client = [f for s in stages if (f := s.client()) is not None]  # type: ignore[attr-defined]
    server = [f for s in reversed(stages) if (f := s.server()) is not None]  # type: ignore[attr-defined]
    return client, server


def test_decoders_in_reverse_client_order_pass() -> None:
    client, server = halves([local_dp(), QSGDStage(), ZstdStage()])
    check_filters(client, server)


def test_decoders_in_the_wrong_order_are_refused_naming_the_filters() -> None:
    client, server = halves([local_dp(), QSGDStage(), ZstdStage()])
    wrong = [server[1], server[0], server[2]]  # qsgd decoder before zstd decoder
    with pytest.raises(ConfigError, match=rf"{wrong[0].name!r} undoes 'qsgd'.*'zstd'"):
        check_filters(client, wrong)


def test_a_missing_decoder_is_refused() -> None:
    client, server = halves([ClipStage(1.0), ZstdStage()])
    with pytest.raises(ConfigError, match="which no server filter undoes"):
        check_filters(client, server[:1])  # the zstd decoder alone: clipping stays undone


# ---- check_stages: declarations, read before round 1 ---------------------------------------------
class Scale(Filter):
    """A third party's client filter: rescales the update and says so on the trail."""

    pushes = ("scale",)

    def __init__(self, factor: float) -> None:
        super().__init__("scale")
        self.factor = factor

    def process(self, msg: Message) -> Message:
        params = {k: v * self.factor for k, v in msg.params.items()}
        return msg.replace(params=params).push_trail("scale")


class Unscale(Filter):
    pops = ("scale",)

    def __init__(self, factor: float) -> None:
        super().__init__("unscale")
        self.factor = factor

    def process(self, msg: Message) -> Message:
        params = {k: v / self.factor for k, v in msg.params.items()}
        return msg.pop_trail("scale").replace(params=params)


class ScaleStage(Stage):
    """Scales on the client and never undoes it: the README's example as a stage."""

    privacy_operations = (LOSSY,)

    def client(self) -> Filter:
        return Scale(2.0)


class PairedScaleStage(ScaleStage):
    privacy_operations = (LOSSLESS,)

    def server(self) -> Filter:
        return Unscale(2.0)


class Undeclared(Stage):
    def client(self) -> Filter:
        return Scale(2.0)


def test_a_client_tag_no_server_filter_removes_is_refused_naming_filter_and_tag() -> None:
    with pytest.raises(ConfigError, match=r"^client filter 'scale' appends 'scale', which no "
                                          r"server filter undoes.*pops = \('scale',\)$"):
        check_stages([ScaleStage()])


def test_a_stage_whose_server_half_removes_its_tag_passes_and_composes() -> None:
    check_stages([ClipStage(1.0), PairedScaleStage(), ZstdStage()])


def test_an_undeclared_stage_is_refused_saying_what_to_declare() -> None:
    with pytest.raises(ConfigError, match=r"pipeline\[1\] \(Undeclared\) does not declare "
                                          r"privacy_operations.*\('lossy',\).*or \(\)"):
        check_stages([ClipStage(1.0), Undeclared()])


def test_an_unknown_operation_is_refused_listing_the_vocabulary() -> None:
    class Odd(Stage):
        privacy_operations = ("squash",)

    with pytest.raises(ConfigError, match="unknown privacy operation 'squash'; allowed: attack"):
        check_pipeline([Odd()])


def test_a_lossy_third_party_stage_before_clipping_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"pipeline\[1\] \(ClipStage\).*after the lossy "
                                          r"step pipeline\[0\] \(ScaleStage\)"):
        check_stages([ScaleStage(), ClipStage(1.0)])


def test_a_server_filter_removing_a_tag_no_client_pushed_is_refused() -> None:
    class OnlyUnscale(Stage):
        privacy_operations = ()

        def server(self) -> Filter:
            return Unscale(2.0)

    with pytest.raises(ConfigError, match="server filter 'unscale' undoes 'scale', which no "
                                          "client filter applied"):
        check_stages([ClipStage(1.0), OnlyUnscale()])


def test_halves_in_the_wrong_order_are_refused() -> None:
    class Backwards(PairedScaleStage):
        """Its server half undoes the clipping before its own scaling: the wrong way round."""

        def halves(self) -> tuple[Half | None, Half | None]:
            return Half("scale", pushes=("scale",)), Half("unscale", pops=("dp.clip", "scale"))

    with pytest.raises(ConfigError, match=r"server filter 'unscale' undoes 'dp\.clip' but the last "
                                          r"client filter still to undo is 'scale'"):
        check_stages([ClipStage(1.0), Backwards()])


def test_nothing_may_change_an_update_after_signing() -> None:
    signed = SignStage(private_key="keys/{sender}.key", public_keys={})
    check_stages([ClipStage(1.0), ZstdStage(), signed])
    with pytest.raises(ConfigError, match=r"\(lossless\) comes after signing"):
        check_stages([signed, ZstdStage()])


def test_every_built_in_stage_passes_in_a_sensible_order() -> None:
    check_stages([ByzantineStage(["client-000"]), local_dp(), QSGDStage(), ZstdStage()])
    check_stages([CentralDPStage(clients_per_round=3, clip_norm=1.0, noise_multiplier=1.0),
                  TopKStage()])
    check_stages([ClipStage(1.0), secure(), ZstdStage()])


def test_checking_stages_has_no_side_effects_on_seeds_or_server_halves() -> None:
    qsgd, dp = QSGDStage(seed=1), local_dp()
    central = CentralDPStage(clients_per_round=3, clip_norm=1.0, noise_multiplier=1.0)
    check_stages([dp, qsgd])
    check_stages([central])
    assert next(qsgd._clients) == 0 and dp._clients == 0
    assert central._receiver is None


def test_a_filter_that_appends_an_undeclared_tag_is_caught_when_it_runs() -> None:
    class Sneaky(Filter):
        def process(self, msg: Message) -> Message:
            return msg.push_trail("sneaky")

    # in a graph the failure is recorded as the pod's error: the message goes nowhere
    with pytest.raises(PodError, match=r"ConfigError: filter 'sneaky' \(Sneaky\) appended "
                                       r"'sneaky' to the trail but declares pushes=\(\)"):
        run_pod(Sneaky("sneaky"), {"in": [make_message()]})


def test_a_filter_that_removes_an_undeclared_tag_is_caught_when_it_runs() -> None:
    class Eraser(Filter):
        def process(self, msg: Message) -> Message:
            return msg.pop_trail("scale")

    with pytest.raises(PodError, match="removed 'scale' from the trail but declares pops"):
        run_pod(Eraser("eraser"), {"in": [make_message().push_trail("scale")]})


def test_declared_filters_and_chains_run_through_the_trail_check() -> None:
    out = run_pod(Scale(2.0) | Scale(3.0), {"in": [make_message(params={"w": [1.0]})]})
    assert out["out"][0].trail == ("scale", "scale")
    assert (Scale(2.0) | Unscale(2.0)).pushes == ("scale",)
    back = run_pod(Unscale(2.0), {"in": out["out"]})
    assert back["out"][0].trail == ("scale",)


@pytest.mark.parametrize("lossy", [QSGDStage, TopKStage])
def test_lossy_compression_after_a_lossless_codec_is_refused(lossy: type) -> None:
    """zstd turns the update into one uint8 array, which qsgd and topk pass through untouched:
    such a pipeline used to run with the lossy stage silently doing nothing."""
    with pytest.raises(ConfigError, match=rf"pipeline\[1\] \({lossy.__name__}\) \(lossy\) comes "
                                          r"after the lossless codec pipeline\[0\] \(ZstdStage\)"):
        check_pipeline([ZstdStage(), lossy()])
    check_pipeline([lossy(), ZstdStage()])  # the documented order
