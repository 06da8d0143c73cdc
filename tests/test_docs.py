"""Every fenced code block of README.md and docs/*.md is a test case (id ``file:line``).

What each fence language means (a fence without a language fails: authors must choose):

* ``python``: runs in a fresh interpreter (``python -c``, ``PYTHONPATH=src``, cwd a temporary
  directory, 120 s timeout) and must exit 0. Blocks that need a real component say so in an
  HTML comment on the line right before the fence, ``<!-- doc-test: needs=mlflow -->`` (names
  comma-separated); see ``NEEDS``: each name is a fixture of the suite that starts the
  component on loopback, plus the environment variables the block reads (standard ones where
  the library has them: ``MLFLOW_TRACKING_URI``, ``AWS_ENDPOINT_URL``). Such cases are marked
  ``integration``.
* ``yaml``: every document of the block (``---`` separates alternatives) must validate with
  ``JobSpec.from_dict`` (plugin names, parameters, topology) and must not repeat a key. A
  document with a ``job_id`` is a whole job file and is validated as is. Any other document is a
  fragment: **merge rule**: its top-level keys replace the same keys of the minimal job
  ``{job_id: doc-fragment}`` (every other key keeps ``JobSpec``'s default); nothing is merged
  deeper. Broker and Prometheus configurations are not YAML job files and are fenced ``text``.
* ``toml``: parsed with ``tomllib``.
* ``bash`` / ``sh``: each command line (``\\``-continuations joined, comments and blank lines
  dropped) is classified by ``SKIP_RULES`` first, then must be a foedus command (``foedus``,
  ``.venv/bin/foedus`` or ``python -m foedus``, optionally after ``VAR=value`` assignments).
  Those run as written, in order, with ``bash -c``, the venv's ``bin`` first on ``PATH``, in a
  working directory that mirrors the repository (a symlink to each of its top-level entries,
  so commands that write files, such as ``foedus certs``, do not write into the checkout), and
  must exit 0, or the status the line states in a trailing comment ``# exits N``. A line that
  is neither a foedus command nor covered by a skip rule fails the case. Skip rules, each with
  its reason (a skipped line is reported in the case's output, never dropped silently):

  1. ``pip install`` / ``apt``/``apt-get``: installs software on the machine.
  2. ``bash scripts/*.sh``: sets a machine up and runs the demo or the whole suite
     (``scripts/test.sh`` is what CI runs; the suite cannot run itself).
  3. ``foedus server`` / ``foedus client``, and ``foedus actor JOB IDS``: halves of a
     multi-process job that wait for each other (``tests/test_cli_processes.py`` runs such
     pairs against a real broker).
  4. a command naming a remote cluster (``--ray-address ray://...``): no such host here.
  5. broker administration tools (``kafka-topics.sh``): they need a production broker's admin
     credentials.
* Files: a ``python`` or ``yaml`` block whose first line is a comment naming a relative path
  (``# my_site/data.py``, ``# job.yaml``) is also written to that path in the working directory
  of its page's ``bash`` blocks, so a page can show a plugin module and a job and then the
  command that runs them.
* ``NOT_EXECUTABLE`` lists the other languages and why (output samples, diagrams, configs of
  other programs).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from foedus.config.spec import JobSpec
from tests.docblocks import PAGES, ROOT, Block, read_blocks
from tests.mlops.conftest import mlflow_server, s3_endpoint  # noqa: F401 (fixtures by name)

VENV_BIN = ROOT / ".venv" / "bin"

#: fence languages that are shown, not run, and why
NOT_EXECUTABLE: dict[str, str] = {
    "text": "diagrams, formulas, file layouts and configurations of other programs "
            "(mosquitto.conf, ACLs, Prometheus) shown for reading",
    "console": "transcripts: a command with the output it prints, or commands of other tools",
}

#: what a ``needs=`` name starts (a fixture of the suite) and the environment it gives the block
NEEDS: dict[str, str] = {
    "mlflow": "mlflow_server",  # MLFLOW_TRACKING_URI
    "s3": "s3_endpoint",  # AWS_ENDPOINT_URL and throwaway credentials
}

#: python blocks that are still sketches (``...`` placeholders, top-level ``await``, names they
#: never define) and need rewriting as runnable examples: (page, a line of the block) -> what is
#: missing. Strict xfail: a block that starts running must leave this list.
DOC_SKETCHES: dict[tuple[str, str], str] = {
}

SKIP_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^(sudo\s+)?(pip3?|\S*/pip3?)\s+install\b|^(sudo\s+)?apt(-get)?\s"),
     "rule 1: installs software"),
    (re.compile(r"^bash\s+scripts/\S+\.sh\b"), "rule 2: sets up a machine / runs the suite"),
    (re.compile(r"\bfoedus\s+(server|client)\b|\bfoedus\s+actor\s+\S+\s+\S"),
     "rule 3: one half of a multi-process job"),
    (re.compile(r"--ray-address\s+ray://"), "rule 4: names a remote cluster"),
    (re.compile(r"^kafka-topics\.sh\b"), "rule 5: broker administration"),
]
FOEDUS_COMMAND = re.compile(
    r"^(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*(?:\.venv/bin/foedus|foedus|python3? -m foedus)\b")
EXITS = re.compile(r"#.*\bexits (\d+)\b")
BLOCKS = [b for page in PAGES for b in read_blocks(page)]


def _params(langs: tuple[str, ...]) -> list[Any]:
    cases = []
    for b in BLOCKS:
        if b.lang not in langs:
            continue
        marks = [pytest.mark.integration] if b.options.get("needs") else []
        for (page, text), why in DOC_SKETCHES.items():
            if b.lang == "python" and b.page.name == page and text in b.code:
                marks.append(pytest.mark.xfail(strict=True, reason=why))
        cases.append(pytest.param(b, id=b.id, marks=marks))
    return cases


def test_every_block_is_collected_and_has_a_known_language() -> None:
    assert any(b.page.name == "extending.md" for b in BLOCKS)
    known = {"python", "yaml", "toml", "bash", "sh", *NOT_EXECUTABLE}
    bad = [f"{b.id}: ```{b.lang}" for b in BLOCKS if b.lang not in known]
    assert not bad, ("fences need a language (python, yaml, toml, bash, or one of "
                     f"{sorted(NOT_EXECUTABLE)}): {bad}")
    unknown = [f"{b.id}: {b.options}" for b in BLOCKS
               if set(b.options) - {"needs"}
               or set(filter(None, b.options.get("needs", "").split(","))) - set(NEEDS)]
    assert not unknown, f"unknown doc-test annotations (keys: needs; needs: {sorted(NEEDS)})"


# ---- python ----------------------------------------------------------------------------------

def _needs_env(block: Block, request: pytest.FixtureRequest) -> dict[str, str]:
    env: dict[str, str] = {}
    for name in filter(None, block.options.get("needs", "").split(",")):
        value = request.getfixturevalue(NEEDS[name])
        if name == "mlflow":
            env["MLFLOW_TRACKING_URI"] = value
        elif name == "s3":
            env.update(AWS_ENDPOINT_URL=value, AWS_ACCESS_KEY_ID="doc", AWS_SECRET_ACCESS_KEY="doc",
                       AWS_DEFAULT_REGION="us-east-1")
    return env


@pytest.mark.parametrize("block", _params(("python",)))
def test_python_block_runs(block: Block, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **_needs_env(block, request)}
    done = subprocess.run([sys.executable, "-c", block.code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{block.id} exited {done.returncode}:\n{done.stderr[-3000:]}"


# ---- yaml and toml ---------------------------------------------------------------------------

class _StrictLoader(yaml.SafeLoader):  # type: ignore[misc]
    """safe_load that refuses a repeated key (YAML keeps only the last: a silent mistake)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    keys = [loader.construct_object(k) for k, _ in node.value]
    repeated = sorted({str(k) for k in keys if keys.count(k) > 1})
    if repeated:
        raise yaml.constructor.ConstructorError(
            None, None, f"repeated key(s) {repeated}", node.start_mark)
    return dict(loader.construct_pairs(node))


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def as_job(document: Any) -> dict[str, Any]:
    """The merge rule of the module docstring: a fragment's top-level keys over a minimal job."""
    assert isinstance(document, dict), f"a YAML block must be a mapping, got {document!r}"
    if "job_id" in document:
        return document
    return {"job_id": "doc-fragment", **document}


@pytest.mark.parametrize("block", _params(("yaml",)))
def test_yaml_block_is_a_valid_job(block: Block) -> None:
    documents = list(yaml.load_all(block.code, Loader=_StrictLoader))
    assert documents
    for document in documents:
        JobSpec.from_dict(as_job(document))


@pytest.mark.parametrize("block", _params(("toml",)))
def test_toml_block_parses(block: Block) -> None:
    tomllib.loads(block.code)


# ---- shell -----------------------------------------------------------------------------------

def command_lines(code: str) -> Iterator[str]:
    """The block's commands: continuations joined, blank and comment-only lines dropped."""
    pending = ""
    for raw in code.splitlines():
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line = (pending + raw).strip()
        pending = ""
        if line and not line.startswith("#"):
            yield line


def skip_reason(line: str) -> str | None:
    for pattern, reason in SKIP_RULES:
        if pattern.search(line):
            return reason
    return None


def _workdir(tmp: Path, page: Path) -> Path:
    work = tmp / "repo"
    work.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in (".git",):
            (work / entry.name).symlink_to(entry)
    for b in read_blocks(page):
        if b.file_name is not None:
            target = work / b.file_name
            assert not target.exists(), f"{b.id} would overwrite {b.file_name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(b.code)
    return work


@pytest.mark.parametrize("block", _params(("bash", "sh")))
def test_shell_block_runs(block: Block, tmp_path: Path) -> None:
    lines = list(command_lines(block.code))
    assert lines, f"{block.id} has no command"
    plan: list[tuple[str, str | None]] = []
    for line in lines:
        reason = skip_reason(line)
        if reason is None and not FOEDUS_COMMAND.match(line):
            pytest.fail(f"{block.id}: {line!r} is neither a foedus command nor covered by a skip "
                        "rule of tests/test_docs.py")
        plan.append((line, reason))
    work = _workdir(tmp_path, block.page)
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("FOEDUS_PLUGINS", None)
    for line, reason in plan:
        if reason is not None:
            print(f"skipped ({reason}): {line}")
            continue
        wanted = int(m.group(1)) if (m := EXITS.search(line)) else 0
        done = subprocess.run(["bash", "-c", line], cwd=work, env=env, capture_output=True,
                              text=True, timeout=150)
        print(f"ran (exit {done.returncode}): {line}")
        assert done.returncode == wanted, (
            f"{block.id}: {line!r} exited {done.returncode}, wanted {wanted}:\n"
            f"{done.stderr[-3000:]}")


def test_rules_classify_lines() -> None:
    assert skip_reason("pip install 'foedus[mqtt]'") is not None
    assert skip_reason(".venv/bin/foedus client job.yaml --index 0") is not None
    assert skip_reason(".venv/bin/foedus actor tree.yaml north,client-000") is not None
    assert skip_reason(".venv/bin/foedus actor examples/digits-sklearn.yaml") is None
    assert FOEDUS_COMMAND.match("PYTHONPATH=. FOEDUS_PLUGINS=a.b foedus run job.yaml")
    assert not FOEDUS_COMMAND.match("rm -rf /")
    assert list(command_lines("# c\na \\\n  b\n\nc  # x\n")) == ["a    b", "c  # x"]
