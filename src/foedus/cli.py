"""The ``foedus`` command: ``demo``, ``run``, ``server``, ``client``, ``actor``, ``sim``,
``plugins``, ``certs``.

Every command that runs a job dispatches through its topology (:mod:`foedus.runner`), so a job
file means the same thing to each. Exit status: 0 when the job (or the actors run here)
finished and learned; 1 when it ran to its end without producing a model (every round failed);
2 for errors a user can fix (a bad job file, a missing extra) and for an actor that failed (a
transport that gave up reconnecting to a hub gone for good), printed as one line; 130 when
interrupted. Only bugs produce tracebacks.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TextIO

from foedus.config.spec import ClientSection, DataSection, JobSpec, Plugin, load_job
from foedus.core.errors import FoedusError
from foedus.core.message import Message
from foedus.plugins import catalogue, format_catalogue, load_plugins
from foedus.roles.client import ClientPod
from foedus.roles.server import RoundRecord
from foedus.runner import (
    JobResult,
    prepare,
    run_actors,
    run_client,
    run_job_sync,
    run_server,
    run_sync,
)

BAR_WIDTH = 24


class Progress:
    """Prints one line per round: a bar, the global model's metrics, answers and time."""

    def __init__(self, rounds: int, stream: TextIO | None = None) -> None:
        self.rounds = rounds
        self.stream = stream
        self.first = True

    def __call__(self, record: RoundRecord) -> None:
        if self.first and record.round > 1:  # the rounds before came from a checkpoint
            print(f"foedus: resumed from the checkpoint of round {record.round - 1}",
                  file=self.stream or sys.stderr, flush=True)
        self.first = False
        done = int(BAR_WIDTH * record.round / self.rounds)
        bar = "#" * done + "." * (BAR_WIDTH - done)
        metrics = "  ".join(f"{k} {_metric(k, v)}" for k, v in sorted(record.metrics.items()))
        extra = ""
        if record.rejected:
            extra += f"  rejected {sum(record.rejected.values())}"
        if record.failed_clients:
            extra += f"  failed {len(record.failed_clients)}"
        if record.status != "ok":
            extra += f"  [{record.status}]"
        moved = (f"  in {_size(record.bytes_in)} out {_size(record.bytes_out)}"
                 if record.bytes_in or record.bytes_out else "")
        print(
            f"round {record.round:>3}/{self.rounds} [{bar}] {metrics}  "
            f"updates {record.accepted}{moved}  {record.duration_s:.2f}s{extra}",
            file=self.stream or sys.stderr,
            flush=True,
        )


#: metric name prefixes printed with 4 significant digits: privacy numbers (a delta of 1e-5,
#: an epsilon of 936.8, a count of rounds) and counts (survivors of a secure sum)
SIGNIFICANT = ("dp_", "secure_sum_")


def _metric(name: str, value: float) -> str:
    """One metric as a progress line shows it: 4 decimals (accuracy 0.9400), except privacy
    numbers and counts, and any value too small for 4 decimals, which keep 4 significant digits:
    a fixed 4 decimals printed a delta of 1e-5 as 0.0000 and 3 rounds as 3.0000."""
    if name.startswith(SIGNIFICANT) or 0 < abs(value) < 1e-3:
        return f"{value:.4g}"
    return f"{value:.4f}"


def _client_round(client: ClientPod, answer: Message, moved: tuple[int, int]) -> None:
    """One line per answer of a client run in this process (where no server runs), once it
    left: ``client-000 round   3: sent its update (trained on 143 examples)  train_loss 0.41
    in 5.4 kB out 5.4 kB`` (the model received and the update sent since its previous answer).
    The count and metrics are the local round's, before the job's pipeline: what left may
    carry less (differential privacy sends a weight of 1 and no metrics)."""
    if answer.error is not None:
        what = f"sent an error: {answer.error}"
    else:
        metrics = "".join(f"  {k} {_metric(k, v)}" for k, v in sorted(answer.metrics.items()))
        what = f"sent its update (trained on {answer.num_examples} examples){metrics}"
    print(f"{client.client_id} round {answer.round:>3}: {what}  in {_size(moved[0])} "
          f"out {_size(moved[1])}", file=sys.stderr, flush=True)


def _waiting(spec: JobSpec) -> Callable[[float], None]:
    def say(seconds: float) -> None:
        print(f"foedus: no model from the server of job {spec.job_id!r} after {seconds:.0f}s; "
              f"is it running, on the same transport ({spec.transport.type})?",
              file=sys.stderr, flush=True)
    return say


def _size(n: int) -> str:
    """A byte count the way a person reads it."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _print_summary(result: JobResult) -> None:
    s = result.summary()
    best = max(
        (r for r in result.history if "accuracy" in r.metrics),
        key=lambda r: r.metrics["accuracy"], default=None,
    )
    topology = "" if s["topology"] == "centralized" else f" ({s['topology']})"
    who = s.get("participants") or f"{s['clients']} clients"
    print(f"\nfoedus: job {s['job_id']!r}{topology} finished: {s['rounds']} rounds, {who}, "
          f"{s['duration_s']:.1f}s")
    final = dict(result.final_metrics)
    if s["final_accuracy"] is not None:
        print(f"  final accuracy {s['final_accuracy']:.4f}, final loss {s['final_loss']:.4f}")
        final.pop("accuracy")
        final.pop("loss", None)
    if final:  # e.g. a regression's loss (MSE) and r2, a federated forest's open nodes
        print("  final " + ", ".join(f"{name} {value:.4g}" for name, value in final.items()))
    if best is not None:
        print(f"  best accuracy  {best.metrics['accuracy']:.4f} (round {best.round})")
    failed = sum(len(r.failed_clients) for r in result.history)
    missing = sum(r.missing_clients for r in result.history)
    print(f"  updates accepted {s['updates_accepted']}, rejected {s['updates_rejected']}, "
          f"failed clients {failed}, missing answers {missing}")
    if s["bytes_in"] or s["bytes_out"]:
        print(f"  the {s.get('leader') or 'actors here'} received {_size(s['bytes_in'])} and "
              f"sent {_size(s['bytes_out'])}")
    if "bytes_up" in s:
        print(f"  simulated on {s['workers']} {s['backend']} worker(s), "
              f"start-up {s['startup_s']}s, moved {s['bytes_down'] / 1e6:.1f} MB down and "
              f"{s['bytes_up'] / 1e6:.1f} MB up")
    if s.get("resumed_from"):
        print(f"  resumed after round {s['resumed_from']} from the job's checkpoint")
    if s.get("stop_reason"):
        print(f"  stopped early: {s['stop_reason']}")
    if result.failure:
        print(f"  FAILED: {result.failure}")
    elif result.near_chance:
        print(f"  WARNING: {result.near_chance}")


def demo_spec(args: argparse.Namespace) -> JobSpec:
    """The demo job: digits split non-IID across clients, FedAvg, in-process transport."""
    return JobSpec(
        job_id="demo",
        seed=args.seed,
        rounds=args.rounds,
        data=DataSection(dataset="digits", partition="dirichlet", alpha=args.alpha),
        clients=ClientSection(count=args.clients, epochs=args.epochs),
        model=Plugin(args.model),
    )


def _simulate(spec: JobSpec, args: argparse.Namespace) -> int:
    from foedus.sim import run_simulation_sync

    clients = {"count": args.clients or spec.clients.count, "epochs": spec.clients.epochs}
    if args.per_round or spec.clients.per_round:
        clients["per_round"] = args.per_round or spec.clients.per_round
    checked = JobSpec.from_dict({"clients": clients}).clients  # same validation as a job file
    spec = replace(spec, clients=replace(checked, min_clients=spec.clients.min_clients))
    options: dict[str, object] = {"backend": args.backend, "workers": args.workers}
    if args.ray_address:
        options["address"] = args.ray_address
    result = run_simulation_sync(spec, on_round=_progress(spec, args.json), **options)
    return _report(result, args)


def _progress(spec: JobSpec, as_json: bool) -> Progress | None:
    """A progress bar over the job's rounds (a FedBuff job's versions), unless JSON is asked."""
    return None if as_json else Progress(prepare(spec).rounds(spec))


def _actors(spec: JobSpec, args: argparse.Namespace) -> int:
    if not args.actors:
        print("\n".join(prepare(spec).actors(spec)))
        return 0
    names = args.actors.split(",")
    result = run_sync(run_actors(
        spec, names, on_round=_progress(spec, args.json),
        on_client_round=None if args.json else _client_round, on_waiting=_waiting(spec)))
    if result.history or args.json:
        return _report(result, args)
    return _actors_ended(result, names)  # no server here: say what these actors did


def _actors_ended(result: JobResult, actors: Sequence[str], label: str = "") -> int:
    """Say what each actor run here did; the exit status: 1 when the job failed as these
    actors saw it (a label party whose feature parties never came), else 0."""
    for actor in actors:
        print(f"foedus: {label}{_actor_done(result, actor)}", file=sys.stderr)
    if result.failure:
        print(f"foedus: job {result.job_id!r} failed: {result.failure}", file=sys.stderr)
        return 1
    return 0


def _actor_done(result: JobResult, actor: str) -> str:
    """``client-000 finished after 3 rounds (received 16.3 kB, sent 54.4 kB)``."""
    trained = result.extra.get("rounds_trained", {})
    moved = result.extra.get("actor_bytes", {}).get(actor)
    done = f" after {trained[actor]} rounds" if actor in trained else ""
    if moved:
        done += f" (received {_size(moved['bytes_in'])}, sent {_size(moved['bytes_out'])})"
    return f"{actor} finished{done}"


def _run(spec: JobSpec, args: argparse.Namespace) -> int:
    on_round = _progress(spec, args.json)
    if not getattr(args, "owns_process", False):
        return _report(run_job_sync(spec, on_round=on_round), args)
    # This process is the job's (the foedus command): no cyclic garbage collection while the
    # job is set up, then everything set up is frozen out of later collections. Each full
    # collection walked every object torch or scikit-learn had created, three or four times
    # during the set-up of a ten-client job (0.15-0.3 s for torch); what it would have freed
    # then is a few thousand objects, which stay.
    gc.disable()

    def started() -> None:
        gc.freeze()
        gc.enable()

    try:
        result = run_sync(run_actors(spec, prepare(spec).actors(spec), on_round=on_round,
                                        on_ready=started))
    finally:
        gc.enable()
    return _report(result, args)


def _report(result: JobResult, args: argparse.Namespace) -> int:
    """Print the summary and write the files asked for; the exit status says whether the job
    produced a model."""
    _write_reports(result, args)
    if args.json:
        print(json.dumps(result.summary(), indent=2))
    else:
        _print_summary(result)
    if result.failure:
        print(f"foedus: job {result.job_id!r} failed: {result.failure}", file=sys.stderr)
        return 1
    return 0


def _add_report_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--history-csv", metavar="FILE", help="write one row per round to FILE")
    parser.add_argument("--plot", metavar="FILE.png|FILE.svg",
                        help="draw the per-round metrics to FILE (needs foedus[plot])")


def _write_reports(result: JobResult, args: argparse.Namespace) -> None:
    """The files asked for with --history-csv and --plot, once the job has ended."""
    if getattr(args, "history_csv", None):
        from foedus.report import write_csv

        print(f"foedus: rounds written to {write_csv(result.history, args.history_csv)}",
              file=sys.stderr)
    if getattr(args, "plot", None):
        from foedus.report import plot

        path = plot(result.history, args.plot, title=f"job {result.job_id}")
        print(f"foedus: chart written to {path}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; ``argv=None`` (the ``foedus`` command) means this process ends next."""
    try:
        status = _main(argv)
        if argv is None:
            sys.stdout.flush()  # here, not at exit, where a closed pipe is a traceback
    except BrokenPipeError:
        # whoever read our output stopped reading (`foedus jobs --json | head`): end the way
        # a Unix tool killed by SIGPIPE does, without a traceback; the exit's own flush of the
        # rest must not try the closed pipe again
        if argv is None:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    if argv is None:
        # The process exits next: keep the cyclic collector from walking every object torch
        # and scikit-learn created at interpreter shutdown (~0.7 s for torch). Reference
        # counting, atexit handlers and buffered output still finish as usual.
        gc.freeze()
    return status


#: the commands this module defines (federation.COMMANDS are the federation's), in the order
#: ``foedus --help`` lists them
LOCAL_COMMANDS = ("demo", "run", "server", "client", "actor", "sim", "plugins", "certs")


def _named_command(arg_list: Sequence[str]) -> str | None:
    """The local command ``arg_list`` names, when nothing else on the line needs the other
    commands' parsers: only ``-v`` before it, and one of :data:`LOCAL_COMMANDS`. ``None``
    otherwise (help, a typo, a federation command): then every parser is built, so usage and
    errors read as always."""
    for arg in arg_list:
        if arg not in ("-v", "--verbose"):
            return arg if arg in LOCAL_COMMANDS else None
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; with ``command``, only that command's sub-parser is built
    (what parsing a line naming it needs): the others' 90-odd arguments cost milliseconds of
    every job's start-up."""
    parser = argparse.ArgumentParser(
        prog="foedus", description="Federated learning: run a job here (demo, run, sim), one "
        "actor of it (server, client, actor), or a federation's coordinator, sites and jobs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    def wanted(name: str) -> bool:
        return command is None or command == name

    if wanted("demo"):
        demo = sub.add_parser("demo", help="federated training on digits, in-process")
        demo.add_argument("--clients", type=int, default=10)
        demo.add_argument("--rounds", type=int, default=30)
        demo.add_argument("--epochs", type=int, default=1, help="local epochs per round")
        demo.add_argument("--alpha", type=float, default=0.5, help="Dirichlet label skew")
        demo.add_argument("--seed", type=int, default=0)
        demo.add_argument("--model", default="sklearn-sgd", help="sklearn-sgd or torch-mlp")
        demo.add_argument("--json", action="store_true", help="print a JSON summary on stdout")

    if wanted("run"):
        run = sub.add_parser("run", help="run a job file in this process")
        run.add_argument("job", help="path to a YAML job file")
        run.add_argument("--rounds", type=int, help="override the job's rounds")
        run.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
        _add_report_options(run)

    if wanted("server"):
        server = sub.add_parser("server", help="run only the server of a job (clients elsewhere)")
        server.add_argument("job", help="path to a YAML job file")
        server.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
        _add_report_options(server)

    if wanted("client"):
        client = sub.add_parser("client", help="run one client of a job until the server stops")
        client.add_argument("job", help="path to a YAML job file")
        client.add_argument("--index", type=int, required=True, help="which client (0-based)")

    if wanted("actor"):
        actor = sub.add_parser("actor", help="run some actors of a job (any topology) here")
        actor.add_argument("job", help="path to a YAML job file")
        actor.add_argument("actors", nargs="?",
                           help="comma-separated actor ids (omit to list them)")
        actor.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
        _add_report_options(actor)

    if wanted("sim"):
        sim = sub.add_parser("sim", help="simulate a job file with virtual clients on a pool")
        sim.add_argument("job", help="path to a YAML job file (its transport is not used)")
        sim.add_argument("--rounds", type=int, help="override the job's rounds")
        sim.add_argument("--clients", type=int, help="override clients.count")
        sim.add_argument("--per-round", type=int, help="override clients.per_round (sampling)")
        sim.add_argument("--backend", default="thread", choices=["thread", "process", "ray"])
        sim.add_argument("--workers", type=int,
                         help="pool size (default: 1 thread, or all cores)")
        sim.add_argument("--ray-address", help="an existing Ray cluster (default: start one here)")
        sim.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
        _add_report_options(sim)

    if wanted("plugins"):
        sub.add_parser("plugins", help="list every registered plugin and the extra it needs")

    if wanted("certs"):
        sub.add_parser(
            "certs", add_help=False,
            help="create a deployment's TLS certificates (CA, server, one per client)",
        )

    if command is None:  # coordinator, site, submit, jobs, logs, cancel, sites, users
        from foedus.federation import cli as federation

        federation.add_commands(sub)
    return parser


def parse_command_line(arg_list: Sequence[str]) -> argparse.Namespace:
    """``arg_list`` parsed as the whole parser parses it. A line naming a local command is read
    by that command's parser alone; what it leaves unrecognised is reported by the whole parser
    (whose usage line lists every command), as is every line naming no local command."""
    named = _named_command(arg_list)
    if named is not None:
        args, unrecognised = build_parser(named).parse_known_args(arg_list)
        if not unrecognised:
            return args
    return build_parser().parse_args(arg_list)


def _main(argv: Sequence[str] | None) -> int:
    # Many clients share this process: one math thread each beats oversubscribing the cores
    # (measured 4x faster for Keras on torch). Must be set before torch is imported.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    arg_list = list(sys.argv[1:] if argv is None else argv)
    if arg_list[:1] == ["certs"]:
        from foedus.certs import main_certs

        return main_certs(arg_list[1:])
    args = parse_command_line(arg_list)
    args.owns_process = argv is None  # the foedus command: the process ends with it
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command not in LOCAL_COMMANDS:  # the federation's: they need no plugin
            from foedus.federation import cli as federation

            return federation.run_command(args)
        load_plugins()  # the user's FOEDUS_PLUGINS too, before a job file names what they add
        if args.command == "plugins":
            print(format_catalogue(catalogue()))
            return 0
        if args.command == "demo":
            spec = JobSpec.from_dict(
                {"rounds": args.rounds, "clients": {"count": args.clients, "epochs": args.epochs},
                 "data": {"alpha": args.alpha}, "seed": args.seed}
            )  # validates the numbers the same way a job file would
            return _run(replace(demo_spec(args), rounds=spec.rounds), args)
        if getattr(args, "plot", None):
            from foedus.report import check_plot_path

            check_plot_path(args.plot)  # a wrong file name is refused before the job runs
        spec = load_job(args.job)
        if getattr(args, "rounds", None) is not None:
            spec = replace(spec, rounds=JobSpec.from_dict({"rounds": args.rounds}).rounds)
        if args.command == "sim":
            return _simulate(spec, args)
        if args.command == "server":
            on_round = _progress(spec, args.json)
            return _report(run_sync(run_server(spec, on_round=on_round)), args)
        if args.command == "actor":
            return _actors(spec, args)
        if args.command == "client":
            result = run_sync(run_client(spec, args.index, on_client_round=_client_round,
                                            on_waiting=_waiting(spec)))
            return _actors_ended(result, list(result.extra.get("rounds_trained", {})),
                                 label="client ")
        return _run(spec, args)
    except FoedusError as exc:
        print(f"foedus: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("foedus: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
