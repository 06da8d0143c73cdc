"""How scripts/test.sh spreads the suite over xdist workers (tests/conftest.py): a test file is
one unit of work, each docs block is its own, and what needs the MLflow or S3 server runs with
tests/mlops/ (one worker starts those servers once)."""

from __future__ import annotations

from tests.conftest import SLOWEST_FIRST, _queue_rank, work_unit
from tests.docblocks import PAGES, read_blocks


def test_the_tests_of_a_file_are_one_unit_and_tests_mlops_is_one_unit() -> None:
    assert work_unit("tests/transport/test_kafka.py::test_a") == "tests/transport/test_kafka.py"
    assert work_unit("tests/transport/test_kafka.py::test_b[x-1]") == \
        "tests/transport/test_kafka.py"
    assert work_unit("tests/mlops/test_mlflow.py::test_a") == "tests/mlops/"
    assert work_unit("tests/mlops/test_e2e.py::test_b") == "tests/mlops/"


def test_a_docs_block_is_its_own_unit_unless_it_needs_a_server() -> None:
    blocks = [b for page in PAGES for b in read_blocks(page)]
    served = [b for b in blocks if b.options.get("needs")]
    plain = [b for b in blocks if b.lang == "python" and not b.options.get("needs")]
    assert served and plain  # the pages have both kinds
    for b in served:
        assert work_unit(f"tests/test_docs.py::test_python_block_runs[{b.id}]") == "tests/mlops/"
    nodeid = f"tests/test_docs.py::test_python_block_runs[{plain[0].id}]"
    assert work_unit(nodeid) == nodeid


def test_the_slowest_units_are_queued_first_and_docs_blocks_last() -> None:
    assert _queue_rank("tests/federation/test_federation.py::t") == 0
    assert _queue_rank(f"{SLOWEST_FIRST[-1]}::t") == len(SLOWEST_FIRST) - 1
    assert _queue_rank("tests/core/test_pod.py::t") == len(SLOWEST_FIRST)
    assert _queue_rank("tests/test_docs.py::test_python_block_runs[README.md:1]") == \
        len(SLOWEST_FIRST) + 1
