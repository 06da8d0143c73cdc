"""The public API is curated: this list changes only by decision."""

from __future__ import annotations

import foedus

PINNED = [
    "Aggregator", "BudgetExhausted", "Chain", "ClientPod", "CodecError", "ConfigError",
    "DataSpec", "Dataset", "Downlink", "FedAvg", "Filter", "FoedusError", "Graph", "GraphError",
    "Header", "JobResult", "JobSpec", "Kind", "LocalTransport", "Message", "MissingExtra",
    "ModelAdapter", "Pod", "PodError", "PrivacyError", "RejectedUpdate", "RoundRecord", "Runtime",
    "ServerPod", "Stage", "Subscription", "Topology", "Transport", "TransportClosed",
    "TransportError", "Uplink", "Wire", "aggregators", "build_model", "decode", "encode",
    "load_dataset", "load_job", "model_adapters", "partition", "run_actors", "run_job",
    "run_job_sync", "stages", "topologies", "transports",
]


def test_public_names_are_pinned() -> None:
    assert sorted(foedus.__all__) == sorted(PINNED)


def test_every_public_name_exists() -> None:
    for name in foedus.__all__:
        assert hasattr(foedus, name), name


def test_every_error_derives_from_the_one_root() -> None:
    errors = [getattr(foedus, n) for n in foedus.__all__ if n.endswith(("Error", "Exhausted",
                                                                         "Closed", "Extra"))]
    errors.append(foedus.RejectedUpdate)
    assert all(issubclass(e, foedus.FoedusError) for e in errors)


def test_missing_extra_names_the_extra_to_install() -> None:
    from foedus.core.errors import require

    try:
        require("surely_not_installed_module_xyz", "kafka")
    except foedus.MissingExtra as exc:
        assert "pip install 'foedus[kafka]'" in str(exc)
    else:
        raise AssertionError("require() did not raise")


def test_every_subpackage_imports_by_its_dotted_name_in_a_fresh_interpreter() -> None:
    # a public name equal to a subpackage's (e.g. a registry called ``models``) would shadow
    # it, and ``import foedus.models.sklearn as m`` would then fail
    import subprocess
    import sys

    code = ("import foedus.models.sklearn as a, foedus.aggregate.fedavg as b, "
            "foedus.transport.local as c, foedus.data.partition as d, foedus.roles.server as e")
    subprocess.run([sys.executable, "-c", code], check=True)
