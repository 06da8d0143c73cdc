"""The command line: the demo reaches the bar, job files run, mistakes are one line."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from foedus.cli import Progress, main
from foedus.roles.server import RoundRecord

ROOT = Path(__file__).parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "foedus.cli", *args], capture_output=True, text=True, timeout=600,
        cwd=ROOT,
    )


def test_demo_reaches_90_percent_on_non_iid_digits_within_30_rounds() -> None:
    result = run_cli("demo", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["rounds"] == 30 and summary["clients"] == 10
    assert summary["final_accuracy"] >= 0.90
    assert len(summary["history"]) == 30
    assert all(r["accepted"] == 10 for r in summary["history"])


def test_demo_with_the_torch_adapter_reaches_the_same_bar() -> None:
    pytest.importorskip("torch")
    result = run_cli("demo", "--json", "--model", "torch-mlp")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["final_accuracy"] >= 0.90


def test_demo_prints_progress_and_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--rounds", "3", "--clients", "4"]) == 0
    captured = capsys.readouterr()
    assert "round   3/3 [" in captured.err and "accuracy" in captured.err
    assert "finished: 3 rounds, 4 clients" in captured.out


# tests/test_examples.py runs every example (its model, aggregator and bar) in process; here
# the command line path, which is the same for all of them, runs a classification and a
# regression example through `foedus run --json`
EXAMPLES = [ROOT / "examples" / name for name in ("wine-iid.yaml",
                                                   "diabetes-federated-forest.yaml")]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_jobs_run_from_the_command_line(example: Path) -> None:
    if "torch" in example.name:
        pytest.importorskip("torch")
    result = run_cli("run", str(example), "--rounds", "5", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["rounds"] == 5
    final = summary["final_metrics"]
    if "accuracy" in final:
        assert final["accuracy"] == summary["final_accuracy"] > 0.5
    else:  # a regression: r2 above 0, better than predicting the mean
        assert final["r2"] > 0.0


def test_a_regression_job_prints_its_final_metrics(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(ROOT / "examples" / "diabetes-federated-forest.yaml"),
                 "--rounds", "4"]) == 0
    summary = capsys.readouterr().out
    assert "final loss " in summary and ", r2 " in summary


@pytest.mark.parametrize(("content", "message"), [
    ("rounds: many\n", "rounds: expected an integer >= 1, got 'many'"),
    ("aggregator: fedmagic\n", "aggregator: unknown aggregator 'fedmagic'; allowed: "),
    ("model: {type: sklearn-sgd, params: {depth: 3}}\n", "unexpected keyword argument 'depth'"),
    ("transport: carrier-pigeon\n", "transport: unknown transport 'carrier-pigeon'"),
    ("data: {dataset: imagenet}\n", "data: unknown dataset 'imagenet'; allowed: "),
])
def test_a_malformed_job_file_gets_one_line_naming_the_key(
    tmp_path: Path, content: str, message: str
) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(content)
    result = run_cli("run", str(job))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_actor_lists_a_topology_jobs_actors_and_refuses_splitting_a_local_job(
    tmp_path: Path,
) -> None:
    job = tmp_path / "tree.yaml"
    job.write_text(
        "job_id: tree\nrounds: 2\nclients: {count: 4}\ntopology: {type: hierarchical, params: "
        "{tree: [{edge: a, children: [client-000, client-001]}, "
        "{edge: b, children: [client-002, client-003]}]}}\n"
    )
    listed = run_cli("actor", str(job))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["server", "a", "client-000", "client-001", "b",
                                     "client-002", "client-003"]
    split = run_cli("actor", str(job), "server,a")
    assert split.returncode == 2
    assert "use a networked transport" in split.stderr


def test_a_resumed_server_says_so_in_its_output(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(f"job_id: resumable\nrounds: 2\nclients: {{count: 3}}\n"
                   f"data: {{dataset: digits, partition: iid}}\ncheckpoint_dir: {tmp_path}\n")
    first = run_cli("run", str(job))
    assert first.returncode == 0, first.stderr
    assert "resumed" not in first.stderr + first.stdout
    again = run_cli("run", str(job), "--rounds", "4")  # the same job, two more rounds
    assert again.returncode == 0, again.stderr
    assert "foedus: resumed from the checkpoint of round 2" in again.stderr
    assert "resumed after round 2 from the job's checkpoint" in again.stdout
    assert [line.split()[1] for line in again.stderr.splitlines()
            if line.startswith("round")] == ["3/4", "4/4"]



def test_a_pod_that_fails_the_job_is_said_once_in_the_commands_error_line(
    tmp_path: Path,
) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(f"job_id: junk\nrounds: 2\nclients: {{count: 2}}\ncheckpoint_dir: {tmp_path}\n")
    (tmp_path / "junk.ckpt").write_bytes(b"junk")  # the server's driver refuses to start over
    ran = run_cli("run", str(job))
    assert ran.returncode == 2, ran.stderr
    refusal = "pod 'server', wire 'run': CheckpointError: no readable checkpoint for job 'junk'"
    assert ran.stderr.count(refusal) == 1, ran.stderr  # the runtime logged it too
    assert ran.stderr.splitlines()[-1].startswith(f"foedus: error: {refusal}")

def test_the_foedus_command_sets_a_job_up_without_the_cyclic_collector_then_turns_it_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``foedus run`` in its own process: no cyclic collection while the job is set up (each
    walked every object torch or scikit-learn made), the collector on again, everything set up
    frozen, once the actors started, so the rounds run with it."""
    import argparse
    import gc

    from foedus import cli
    from foedus.config.spec import JobSpec

    during: dict[str, list[bool]] = {"set-up": [], "rounds": []}
    real_prepare = cli.prepare

    def prepare(spec: JobSpec) -> object:
        during["set-up"].append(gc.isenabled())
        return real_prepare(spec)

    monkeypatch.setattr(cli, "prepare", prepare)
    monkeypatch.setattr(cli, "_progress", lambda spec, as_json: (
        lambda record: during["rounds"].append(gc.isenabled())))
    spec = JobSpec.from_dict({"job_id": "gc", "rounds": 2, "clients": {"count": 2}})
    args = argparse.Namespace(json=True, owns_process=True, history_csv=None, plot=None)
    try:
        assert cli._run(spec, args) == 0
        assert during == {"set-up": [False], "rounds": [True, True]}
        assert gc.isenabled() and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.enable()


# ---- a line naming a local command builds that command's parser only -------------------------
@pytest.mark.parametrize("argv", [
    ["run", "job.yaml"],
    ["-v", "run", "job.yaml", "--rounds", "2", "--json", "--history-csv", "h.csv"],
    ["demo", "--clients", "3", "--model", "torch-mlp"],
    ["server", "job.yaml", "--plot", "p.png"],
    ["client", "job.yaml", "--index", "4"],
    ["actor", "job.yaml", "server,client-000", "--json"],
    ["sim", "job.yaml", "--backend", "process", "--per-round", "2", "--workers", "2"],
    ["plugins"],
    ["--verbose", "plugins"],
])
def test_the_parser_of_one_command_reads_its_line_as_the_whole_parser_does(
    argv: list[str],
) -> None:
    from foedus.cli import _named_command, build_parser, parse_command_line

    named = _named_command(argv)
    assert named is not None and named in argv
    assert build_parser(named).parse_known_args(argv) == (build_parser().parse_args(argv), [])
    assert parse_command_line(argv) == build_parser().parse_args(argv)


@pytest.mark.parametrize("argv", [
    ["--help"], ["-h", "run"], ["rn", "job.yaml"], ["submit", "job.yaml"], ["--verb", "run"],
    ["--", "run"], [],
])
def test_help_typos_and_federation_commands_get_every_parser(argv: list[str]) -> None:
    from foedus.cli import _named_command

    assert _named_command(argv) is None


@pytest.mark.parametrize("argv", [
    ["run", "--help"], ["run"], ["run", "job.yaml", "--rounds", "x"],
    ["run", "job.yaml", "--bogus"], ["-v", "plugins", "extra"], ["run", "job.yaml", "-v"],
    ["sim", "job.yaml", "--backend", "nowhere"], ["client", "job.yaml"],
])
def test_help_and_mistakes_read_as_with_the_whole_parser(
    argv: list[str], capsys: pytest.CaptureFixture[str],
) -> None:
    from foedus.cli import build_parser, parse_command_line

    outputs = []
    for parse in (parse_command_line, build_parser().parse_args):
        with pytest.raises(SystemExit) as exited:
            parse(argv)
        outputs.append((exited.value.code, capsys.readouterr()))
    assert outputs[0] == outputs[1]
    assert outputs[0][1].out or "usage: foedus" in outputs[0][1].err


def test_the_local_and_the_federation_s_commands_are_every_command() -> None:
    """What _main dispatches to the federation is what is not a local command."""
    from foedus.cli import LOCAL_COMMANDS, build_parser
    from foedus.federation.cli import COMMANDS

    usage = " ".join(build_parser().format_usage().split())  # {demo,run,...} on one line
    choices = usage.partition("{")[2].partition("}")[0].split(",")
    assert sorted(choices) == sorted([*LOCAL_COMMANDS, *COMMANDS])
    assert not set(LOCAL_COMMANDS) & set(COMMANDS)


def test_a_reader_that_stops_reading_ends_the_command_without_a_traceback() -> None:
    """`foedus plugins | head -1`: the pipe is closed before the command writes; it ends as a
    Unix tool killed by SIGPIPE does (status 141), with nothing on stderr."""
    command = subprocess.Popen([sys.executable, "-c", "from foedus.cli import main; "
                                "import sys; sys.exit(main())", "plugins"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    assert command.stdout is not None and command.stderr is not None
    command.stdout.close()  # the reader is gone before the first line is written
    stderr = command.stderr.read().decode()
    assert command.wait(timeout=120) == 141 and stderr == ""


# ---- the progress line ------------------------------------------------------------------------
def test_the_progress_line_prints_privacy_numbers_with_their_significant_digits() -> None:
    """dp_delta 1e-5 used to print as "dp_delta 0.0000" and dp_rounds as "dp_rounds 3.0000"."""
    record = RoundRecord(3, accepted=10, metrics={
        "accuracy": 0.5, "dp_delta": 1e-5, "dp_epsilon": 4.72854, "dp_rounds": 3.0,
        "loss": 0.000123, "secure_sum_survivors": 9.0})
    stream = io.StringIO()
    Progress(3, stream)(record)
    line = stream.getvalue()
    assert ("accuracy 0.5000  dp_delta 1e-05  dp_epsilon 4.729  dp_rounds 3  loss 0.000123  "
            "secure_sum_survivors 9  updates 10") in line
    big = io.StringIO()
    Progress(3, big)(RoundRecord(3, metrics={"dp_epsilon": 936.81, "dp_delta": 1e-6}))
    assert "dp_delta 1e-06  dp_epsilon 936.8  " in big.getvalue()


@pytest.mark.parametrize("command", ["actor", "client"])
def test_actors_run_without_the_server_exit_1_when_the_job_failed_as_they_saw_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    """A process of actors keeps no rounds, yet may see the job fail (a vertical job's label
    party whose feature parties never came): its exit status says so, as ``--json`` does."""
    from foedus import cli
    from foedus.runner import JobResult

    stopped = JobResult(job_id="v", clients=2, history=[], params={}, duration_s=0.1,
                        extra={"stop_reason": "parties ['bank'] never joined",
                               "rounds_trained": {"client-000": 0}})

    async def ran(*_: object, **__: object) -> JobResult:
        return stopped

    monkeypatch.setattr(cli, "run_actors", ran)
    monkeypatch.setattr(cli, "run_client", ran)
    job = tmp_path / "job.yaml"
    job.write_text("job_id: v\nclients: {count: 2}\n"
                   "transport: {type: mqtt, params: {host: 127.0.0.1, port: 1}}\n")
    args = ["actor", str(job), "client-000"] if command == "actor" else [
        "client", str(job), "--index", "0"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "client-000 finished after 0 rounds" in err
    assert "job 'v' failed: stopped before round 1: parties ['bank'] never joined" in err
    stopped.extra["stop_reason"] = None  # an ordinary client process: no failure of its own
    assert main(args) == 0
