"""The job file schema and its validation.

A job file names registered plugins only (``type: fedavg``), never import paths. Every mistake
becomes a one-line :class:`ConfigError` naming the key and, where there is a fixed set, the
allowed values: ``clients.count: expected an integer >= 1, got 'ten'``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from foedus.aggregate.base import aggregators
from foedus.config.topology import topology_of
from foedus.core.errors import ConfigError
from foedus.data.shares import DataSection as DataSection  # re-exported: the job file's section
from foedus.models.base import models
from foedus.transport.base import transports


@dataclass(frozen=True)
class Plugin:
    """A registered plugin by name plus its keyword parameters."""

    type: str
    params: dict[str, Any] = field(default_factory=dict)


PARTITIONS = ("column", "dirichlet", "files", "iid", "quantity")  # see foedus.data.partition

# ---- documented maxima (docs/reliability.md): a job file is refused beyond them, in one line --
#: the largest job file read, in bytes
MAX_FILE_BYTES = 1 << 20
#: how deeply maps and lists may nest, and how many values a job file may hold in all, counting
#: every use of a YAML alias (so an alias bomb is refused instead of walked for ever)
MAX_DEPTH = 32
MAX_VALUES = 100_000
MAX_CLIENTS = 100_000
MAX_ROUNDS = 1_000_000
MAX_EPOCHS = 10_000
MAX_TIMEOUT = 7 * 24 * 3600.0  # seconds: a week
MAX_SEED = 2**32 - 1
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,100}")
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                   r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")


@dataclass(frozen=True)
class ClientSection:
    count: int = 10
    epochs: int = 1
    min_clients: int | None = None
    per_round: int | None = None  # sample this many clients each round (seeded); None: all
    #: the most examples one update may claim (FedAvg weighs by the claim); None: no bound.
    #: An update claiming more is refused as ``too_many_examples`` (docs/reliability.md)
    max_examples: int | None = None


@dataclass(frozen=True)
class JobSpec:
    """A validated job. Build it with :func:`load_job` or :meth:`from_dict`."""

    job_id: str = "foedus-job"
    seed: int = 0
    rounds: int = 10
    round_timeout: float = 60.0
    data: DataSection = field(default_factory=DataSection)
    clients: ClientSection = field(default_factory=ClientSection)
    model: Plugin = field(default_factory=lambda: Plugin("sklearn-sgd"))
    aggregator: Plugin = field(default_factory=lambda: Plugin("fedavg"))
    transport: Plugin = field(default_factory=lambda: Plugin("local"))
    topology: Plugin = field(default_factory=lambda: Plugin("centralized"))  # registered
    pipeline: tuple[Plugin, ...] = ()
    checkpoint_dir: str | None = None
    mlops: dict[str, Any] = field(default_factory=dict)  # checked by foedus.mlops.session

    @classmethod
    def from_dict(cls, raw: Any) -> JobSpec:
        _mapping(raw, "job")
        _check_size(raw)
        _known_keys(raw, cls, "")
        data = raw.get("data", {})
        clients = raw.get("clients", {})
        _mapping(data, "data")
        _mapping(clients, "clients")
        _known_keys(data, DataSection, "data.")
        _known_keys(clients, ClientSection, "clients.")
        spec = cls(
            job_id=_job_id(raw),
            seed=_int(raw, "seed", 0, minimum=0, maximum=MAX_SEED),
            rounds=_int(raw, "rounds", cls.rounds, minimum=1, maximum=MAX_ROUNDS),
            round_timeout=_float(raw, "round_timeout", cls.round_timeout, positive=True,
                                 maximum=MAX_TIMEOUT),
            data=_data_section(data),
            clients=ClientSection(
                count=_int(clients, "count", 10, minimum=1, maximum=MAX_CLIENTS,
                           prefix="clients."),
                epochs=_int(clients, "epochs", 1, minimum=1, maximum=MAX_EPOCHS,
                            prefix="clients."),
                min_clients=(
                    _int(clients, "min_clients", 1, minimum=1, maximum=MAX_CLIENTS,
                         prefix="clients.")
                    if "min_clients" in clients else None
                ),
                per_round=(
                    _int(clients, "per_round", 1, minimum=1, maximum=MAX_CLIENTS,
                         prefix="clients.")
                    if "per_round" in clients else None
                ),
                max_examples=(
                    _int(clients, "max_examples", 1, minimum=1, prefix="clients.")
                    if clients.get("max_examples") is not None else None
                ),
            ),
            model=_plugin(raw, "model", "sklearn-sgd"),
            aggregator=_plugin(raw, "aggregator", "fedavg"),
            transport=_plugin(raw, "transport", "local"),
            topology=_plugin(raw, "topology", "centralized"),
            pipeline=tuple(
                _plugin({"pipeline": item}, "pipeline", "", index=i)
                for i, item in enumerate(_list(raw, "pipeline"))
            ),
            checkpoint_dir=_checkpoint_dir(raw),
            mlops=_section(raw, "mlops"),
        )
        _check_endpoints(spec.mlops, "mlops")
        _check_endpoints(spec.transport.params, "transport.params")
        if spec.data.test_fraction >= 1:
            raise ConfigError(f"data.test_fraction: expected a number in (0, 1), got "
                              f"{spec.data.test_fraction}")
        per_round = spec.clients.per_round or spec.clients.count
        if spec.clients.per_round is not None and per_round > spec.clients.count:
            raise ConfigError(
                f"clients.per_round: expected at most clients.count={spec.clients.count}, "
                f"got {per_round}"
            )
        if spec.clients.min_clients is not None and spec.clients.min_clients > per_round:
            raise ConfigError(
                f"clients.min_clients: expected at most the clients per round ({per_round}), "
                f"got {spec.clients.min_clients}"
            )
        for key, registry, plugin in (("aggregator", aggregators, spec.aggregator),
                                      ("model", models, spec.model),
                                      ("transport", transports, spec.transport)):
            try:
                registry.get(plugin.type)  # a misspelt name is refused now, not mid-run
            except ConfigError as exc:
                raise ConfigError(f"{key}: {exc}") from exc
        topology_of(spec)  # the topology's parameters and its fit with the job, checked now
        return spec


def _data_section(data: dict[str, Any]) -> DataSection:
    scheme = _choice(data, "partition", "dirichlet", PARTITIONS, "data.")
    only = {"column": "column", "keep_column": "column", "server_options": "files"}
    for key, needs in only.items():
        if key in data and scheme != needs:
            raise ConfigError(f"data.{key}: only used with partition: {needs}, "
                              f"not {scheme}")
    column = data.get("column")
    if scheme == "column" and (
        isinstance(column, bool) or not isinstance(column, int | str) or column == ""
        or (isinstance(column, int) and column < 0)
    ):
        raise ConfigError("data.column: partition: column needs a feature index (>= 0) or "
                          f"column name, got {_show(column)}")
    keep = data.get("keep_column", False)
    if not isinstance(keep, bool):
        raise ConfigError(f"data.keep_column: expected true or false, got {_show(keep)}")
    server = data.get("server_options") or {}
    _mapping(server, "data.server_options")
    return DataSection(
        dataset=_str(data, "dataset", "digits", prefix="data."),
        partition=scheme,
        alpha=_float(data, "alpha", 0.5, positive=True, prefix="data.", maximum=1e6),
        test_fraction=_float(data, "test_fraction", 0.2, positive=True, prefix="data."),
        options=_section(data, "options"),
        min_size=_int(data, "min_size", 2, minimum=1, maximum=10**9, prefix="data."),
        column=column,
        keep_column=keep,
        server_options=dict(server),
    )


def load_job(path: str | Path) -> JobSpec:
    """Read and validate a YAML job file. Whatever the file holds, the answer is a
    :class:`JobSpec` or a one-line :class:`ConfigError`, quickly: the size is bounded before
    parsing, the parser's recursion is caught, and the parsed tree is measured (counting every
    use of an alias) before anything walks it."""
    where = repr(str(path))
    try:
        with Path(path).open("rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read job file {where}: {exc.strerror or exc}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"job file {where} is larger than {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"job file {where} is not UTF-8 text (byte {exc.start})") from exc
    try:
        raw = _parse_yaml(text)
    except yaml.YAMLError as exc:
        first = str(exc).replace("\n", " ")[:200]
        raise ConfigError(f"job file {where}: not valid YAML: {first}") from exc
    except RecursionError as exc:
        raise ConfigError(f"job file {where}: nested deeper than {MAX_DEPTH} levels") from exc
    if raw is None:
        raise ConfigError(f"job file {where} is empty; a job needs at least a job_id")
    return JobSpec.from_dict(raw)


def _parse_yaml(text: str) -> Any:
    """The document in ``text`` as :func:`yaml.safe_load` reads it, read by libyaml when PyYAML
    has it (the same constructor, at a tenth of the pure-Python parser's time: a millisecond of
    every job's start-up). libyaml words its errors differently and nests deeper than Python's
    recursion lets the pure-Python parser, so a file it refuses, or whose tree is too deep or
    too large for :func:`_check_size`, is read again by the pure-Python parser: every refusal
    stays exactly as it was."""
    fast = getattr(yaml, "CSafeLoader", None)
    if fast is not None:
        try:
            raw = yaml.load(text, Loader=fast)  # CSafeLoader: the safe constructor
            _check_size(raw)
            return raw
        except (yaml.YAMLError, RecursionError, ConfigError):
            pass  # the pure-Python parser words the refusal
    return yaml.safe_load(text)


# ---- small validators; each names the key it checks ------------------------------------------
def _mapping(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {_show(value)}")


def _known_keys(raw: dict[str, Any], section: type, prefix: str) -> None:
    allowed = [f.name for f in fields(section)]
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"{prefix}{key}: unknown key; allowed: {', '.join(allowed)}")


def _optional_str(raw: dict[str, Any], key: str) -> str | None:
    return _str(raw, key, "") if raw.get(key) is not None else None


def _section(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key) or {}
    _mapping(value, key)
    return dict(value)


def _str(raw: dict[str, Any], key: str, default: str, prefix: str = "") -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{prefix}{key}: expected a non-empty string, got {_show(value)}")
    return value


def _int(raw: dict[str, Any], key: str, default: int, *, minimum: int,
         maximum: int | None = None, prefix: str = "") -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum or (
        maximum is not None and value > maximum
    ):
        upto = f" (at most {maximum})" if maximum is not None else ""
        raise ConfigError(f"{prefix}{key}: expected an integer >= {minimum}, got "
                          f"{_show(value)}{upto}")
    return value


def _float(
    raw: dict[str, Any], key: str, default: float, *, positive: bool, prefix: str = "",
    maximum: float | None = None,
) -> float:
    value = raw.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(
        value
    ) or (positive and value <= 0) or (maximum is not None and value > maximum):
        upto = f", at most {maximum:g}" if maximum is not None else ""
        raise ConfigError(f"{prefix}{key}: expected a positive number, got {_show(value)} "
                          f"(finite{upto})")
    return float(value)


def _job_id(raw: dict[str, Any]) -> str:
    value = _str(raw, "job_id", JobSpec.job_id)
    if not _JOB_ID.fullmatch(value):
        raise ConfigError(f"job_id: expected a letter or digit then letters, digits, '.', '_' "
                          f"or '-' (at most 101 characters), got {_show(value)}")
    return value


def _checkpoint_dir(raw: dict[str, Any]) -> str | None:
    value = _optional_str(raw, "checkpoint_dir")
    if value is not None and (Path(value).exists() and not Path(value).is_dir()):
        raise ConfigError(f"checkpoint_dir: {_show(value)} exists and is not a directory")
    if value is not None and "\x00" in value:
        raise ConfigError("checkpoint_dir: a path cannot hold a NUL character")
    return value


def _check_size(raw: Any) -> None:
    """Refuse a tree nested deeper than :data:`MAX_DEPTH` or holding more than
    :data:`MAX_VALUES` values, counting a value again at each place an alias puts it. Stops at
    the first bound passed, so an alias bomb (a billion values from a few lines) costs at most
    :data:`MAX_VALUES` steps. Iterative: no depth can exhaust the stack."""
    stack: list[tuple[Any, int, str]] = [(raw, 1, "job")]
    values = 0
    while stack:
        value, depth, where = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise ConfigError(f"{where}: nested deeper than {MAX_DEPTH} levels")
            values += len(value)
            if values > MAX_VALUES:
                raise ConfigError(f"job file holds more than {MAX_VALUES} values (counting "
                                  f"every use of an alias), under {where}")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                label = str(key)[:40]
                stack.append((item, depth + 1, f"{where}[{label}]" if isinstance(value, list)
                              else label if where == "job" else f"{where}.{label}"))


#: keys of the mlops section and of transport parameters whose form is checked when loading
_PORT_KEYS = ("port",)
_HOST_KEYS = ("host", "hostname")
_URL_KEYS = ("uri", "url", "endpoint", "endpoint_url", "tracking_uri")


def _check_endpoints(section: Any, where: str) -> None:
    """Ports, hosts and URIs anywhere in ``section`` (keys ending in ``port``, ``host``,
    ``uri``/``url``/``endpoint``) must have their form: a port 0..65535 (0: any free one), a
    host name or bracketed IPv6 address, a URI with a scheme (and a host for network schemes).
    """
    stack: list[tuple[Any, str]] = [(section, where)]
    while stack:
        value, path = stack.pop()
        if isinstance(value, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(value))
            continue
        if not isinstance(value, dict):
            continue
        for key, item in value.items():
            name, here = str(key).lower(), f"{path}.{str(key)[:40]}"
            if isinstance(item, dict | list):
                stack.append((item, here))
            elif name.endswith(_PORT_KEYS):
                if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item < 65536:
                    raise ConfigError(f"{here}: expected a port 0..65535 (0: any free one), "
                                      f"got {_show(item)}")
            elif name.endswith(_HOST_KEYS) and item is not None:
                if not isinstance(item, str) or not _HOST.fullmatch(item) or len(item) > 253:
                    raise ConfigError(f"{here}: expected a host name or address, got "
                                      f"{_show(item)}")
            elif name.endswith(_URL_KEYS) and item is not None:
                _check_uri(item, here)


def _check_uri(item: Any, where: str) -> None:
    problem = None
    if not isinstance(item, str) or not item or any(c.isspace() for c in item):
        problem = "a URI without spaces"
    else:
        try:
            parsed = urlparse(item)
            port = parsed.port  # raises for a port that is not 0..65535
        except ValueError:
            problem, port, parsed = "a URI with a valid port", None, None
        if parsed is not None and not parsed.scheme:
            problem = "a URI with a scheme (http://, s3://, file:...)"
        elif parsed is not None and parsed.scheme in ("http", "https", "s3", "grpc", "mqtt",
                                                      "kafka", "tcp") and not parsed.hostname:
            problem = f"a {parsed.scheme} URI naming a host"
        elif port == 0:
            problem = "a URI with a port 1..65535"
    if problem:
        raise ConfigError(f"{where}: expected {problem}, got {_show(item)}")


def _choice(
    raw: dict[str, Any], key: str, default: str, allowed: tuple[str, ...], prefix: str = ""
) -> str:
    value = raw.get(key, default)
    if value not in allowed:
        raise ConfigError(f"{prefix}{key}: got {_show(value)}; allowed: {', '.join(allowed)}")
    return str(value)


def _list(raw: dict[str, Any], key: str) -> list[Any]:
    value = raw.get(key, [])
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list, got {_show(value)}")
    return value


def _plugin(raw: dict[str, Any], key: str, default: str, index: int | None = None) -> Plugin:
    where = f"{key}[{index}]" if index is not None else key
    value = raw.get(key, default)
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a name or {{type: NAME, params: {{...}}}}, "
                          f"got {_show(value)}")
    unknown = sorted(set(value) - {"type", "params"})
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key; allowed: type, params "
                          f"({_params_hint(key, value)})")
    name = value.get("type")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.type: expected a plugin name, got {_show(name)}")
    params = value.get("params", {}) or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{where}.params: expected a mapping, got {_show(params)}")
    return Plugin(name, dict(params))


def _params_hint(key: str, value: dict[Any, Any]) -> str:
    """Where a plugin's settings go, shown on the section as written: ``{type: central-dp,
    noise_multiplier: 1.0}`` used to get only "unknown key; allowed: type, params", which does
    not say that the settings belong under ``params:``. One line; a long value is elided."""
    whose = "the stage's" if key == "pipeline" else f"the {key}'s"
    name = value["type"][:40] if isinstance(value.get("type"), str) else "NAME"
    settings = {k: v for k, v in value.items() if k not in ("type", "params")}
    try:
        shown = yaml.safe_dump(settings, default_flow_style=True, sort_keys=False,
                               width=1 << 20).strip()
    except yaml.YAMLError:
        shown = ""
    if not shown or len(shown) > 100 or "\n" in shown:
        shown = "{" + ", ".join(f"{str(k)[:40]}: ..." for k in settings) + "}"
    return f"put {whose} settings under params:, e.g. {{type: {name}, params: {shown}}}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
