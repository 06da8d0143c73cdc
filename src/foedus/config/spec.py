"""The job file schema and its validation.

A job file names registered plugins only (``type: fedavg``), never import paths. Every mistake
becomes a one-line :class:`ConfigError` naming the key and, where there is a fixed set, the
allowed values: ``clients.count: expected an integer >= 1, got 'ten'``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

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
        _known_keys(raw, cls, "")
        data = raw.get("data", {})
        clients = raw.get("clients", {})
        _mapping(data, "data")
        _mapping(clients, "clients")
        _known_keys(data, DataSection, "data.")
        _known_keys(clients, ClientSection, "clients.")
        spec = cls(
            job_id=_str(raw, "job_id", cls.job_id),
            seed=_int(raw, "seed", 0, minimum=0),
            rounds=_int(raw, "rounds", cls.rounds, minimum=1),
            round_timeout=_float(raw, "round_timeout", cls.round_timeout, positive=True),
            data=_data_section(data),
            clients=ClientSection(
                count=_int(clients, "count", 10, minimum=1, prefix="clients."),
                epochs=_int(clients, "epochs", 1, minimum=1, prefix="clients."),
                min_clients=(
                    _int(clients, "min_clients", 1, minimum=1, prefix="clients.")
                    if "min_clients" in clients else None
                ),
                per_round=(
                    _int(clients, "per_round", 1, minimum=1, prefix="clients.")
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
            checkpoint_dir=_optional_str(raw, "checkpoint_dir"),
            mlops=_section(raw, "mlops"),
        )
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
        alpha=_float(data, "alpha", 0.5, positive=True, prefix="data."),
        test_fraction=_float(data, "test_fraction", 0.2, positive=True, prefix="data."),
        options=_section(data, "options"),
        min_size=_int(data, "min_size", 2, minimum=1, prefix="data."),
        column=column,
        keep_column=keep,
        server_options=dict(server),
    )


def load_job(path: str | Path) -> JobSpec:
    """Read and validate a YAML job file."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read job file {str(path)!r}: {exc.strerror}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from exc
    return JobSpec.from_dict(raw if raw is not None else {})


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


def _int(raw: dict[str, Any], key: str, default: int, *, minimum: int, prefix: str = "") -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{prefix}{key}: expected an integer >= {minimum}, got {_show(value)}")
    return value


def _float(
    raw: dict[str, Any], key: str, default: float, *, positive: bool, prefix: str = ""
) -> float:
    value = raw.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or (
        positive and value <= 0
    ):
        raise ConfigError(f"{prefix}{key}: expected a positive number, got {_show(value)}")
    return float(value)


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
        raise ConfigError(f"{where}.{unknown[0]}: unknown key; allowed: type, params")
    name = value.get("type")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.type: expected a plugin name, got {_show(name)}")
    params = value.get("params", {}) or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{where}.params: expected a mapping, got {_show(params)}")
    return Plugin(name, dict(params))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
