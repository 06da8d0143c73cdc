"""Graph-build-time order and pairing checks for update pipelines."""

from __future__ import annotations

import pytest

from foedus.compress.lossless import ZstdStage
from foedus.compress.qsgd import QSGDStage
from foedus.compress.sparsify import TopKStage
from foedus.core.errors import ConfigError
from foedus.core.filter import Filter
from foedus.privacy.dp import CentralDPStage, ClipStage, LocalDPStage
from foedus.privacy.order import check_filters, check_pipeline
from foedus.privacy.secagg_pods import SecureSumSettings, SecureSumStage


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
    with pytest.raises(ConfigError, match="after the encoder"):
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
    with pytest.raises(ConfigError, match="no server filter undoes"):
        check_filters(client, server[:1])  # the zstd decoder alone: clipping stays undone
