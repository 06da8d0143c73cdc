"""What a site accepts, and how a job's data is filled from a data catalog. Pure functions, so
the rules are tested without a coordinator.

**Local policy** is enforced at the site whatever the coordinator says: the coordinator can
only *offer* a job; the site reads the job file itself and refuses it, with a reason the
submitter sees, when it breaks a rule. A key left out of the policy means "no limit".

**Data catalog**: a job names a catalog entry in ``data.dataset``, never a path. Each site
maps the entry to a registered dataset loader and its options (files, columns, ...), so paths
never leave the site and a job file that travels between organisations holds none.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from foedus.core.errors import ConfigError
from foedus.federation.ledger import Budget

__all__ = ["CatalogEntry", "Policy", "check_policy", "fill_data", "parse_catalog"]


@dataclass(frozen=True)
class Policy:
    """A site's local policy (the ``policy:`` section of ``site.yaml``)."""

    models: tuple[str, ...] | None = None  # model types accepted (None: any)
    aggregators: tuple[str, ...] | None = None  # aggregator types accepted
    stages: tuple[str, ...] | None = None  # pipeline stage types accepted
    transports: tuple[str, ...] | None = None  # transports accepted
    require_stages: tuple[str, ...] = ()  # protections every job must include (e.g. clip)
    max_rounds: int | None = None
    max_jobs: int | None = None  # jobs running here at once
    #: a job without a DP stage on a dataset with a privacy budget: refused unless True
    allow_non_dp: bool = False

    @classmethod
    def from_dict(cls, raw: Any) -> Policy:
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ConfigError(f"policy: expected a mapping, got {type(raw).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"policy.{unknown[0]}: unknown key; allowed: "
                              f"{', '.join(sorted(known))}")

        def names(key: str) -> tuple[str, ...] | None:
            value = raw.get(key)
            if value is None:
                return None
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"policy.{key}: expected a list of names, got {value!r}")
            return tuple(value)

        def number(key: str) -> int | None:
            value = raw.get(key)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"policy.{key}: expected an integer >= 1, got {value!r}")
            return value

        allow_non_dp = raw.get("allow_non_dp", False)
        if not isinstance(allow_non_dp, bool):
            raise ConfigError(f"policy.allow_non_dp: expected true or false, got "
                              f"{allow_non_dp!r}")
        return cls(models=names("models"), aggregators=names("aggregators"),
                   stages=names("stages"), transports=names("transports"),
                   require_stages=names("require_stages") or (),
                   max_rounds=number("max_rounds"), max_jobs=number("max_jobs"),
                   allow_non_dp=allow_non_dp)

    def as_dict(self) -> dict[str, Any]:
        """The policy as JSON, the form :meth:`from_dict` reads back: a site reports it in its
        heartbeat so users can see it and a dry run can tell which sites would accept a job."""
        return {f: list(v) if isinstance(v, tuple) else v
                for f, v in ((f, getattr(self, f)) for f in self.__dataclass_fields__)}


@dataclass(frozen=True)
class CatalogEntry:
    """One dataset a site offers: a registered loader and its options (paths stay here), and
    at a site its lifetime privacy budget (:mod:`foedus.federation.ledger`), if it has one."""

    dataset: str
    options: dict[str, Any] = field(default_factory=dict)
    budget: Budget | None = None


def parse_catalog(raw: Any, where: str = "catalog", *,
                  budgets: bool = False) -> dict[str, CatalogEntry]:
    """``catalog:`` of a config file; ``budgets``: entries may carry ``budget`` (a site's
    catalog; the coordinator's describes only the server's held-out data)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of entry name to "
                          "{dataset: LOADER, options: {...}}")
    out = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("dataset"), str):
            raise ConfigError(f"{where}.{name}: expected {{dataset: LOADER, options: {{...}}}}")
        allowed = {"dataset", "options", *(("budget",) if budgets else ())}
        unknown = sorted(set(entry) - allowed)
        if unknown:
            raise ConfigError(f"{where}.{name}.{unknown[0]}: unknown key; allowed: "
                              f"{', '.join(sorted(allowed))}")
        options = entry.get("options") or {}
        if not isinstance(options, dict):
            raise ConfigError(f"{where}.{name}.options: expected a mapping")
        budget = (Budget.from_dict(entry["budget"], f"{where}.{name}.budget")
                  if entry.get("budget") is not None else None)
        _check_loader(entry["dataset"], f"{where}.{name}.dataset")
        out[str(name)] = CatalogEntry(entry["dataset"], dict(options), budget)
    return out


def _check_loader(loader: str, where: str) -> None:
    """A catalog entry's loader must be registered: a misspelt one would start the service
    and fail each job that names the entry, far from the config file that is wrong."""
    from foedus.data.datasets import datasets  # the registry; a loader's module on lookup

    try:
        datasets.get(loader)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _type(plugin: Any) -> str:
    """A job file's plugin value (``fedavg`` or ``{type: fedavg, params: ...}``) -> its type."""
    if isinstance(plugin, dict):
        return str(plugin.get("type", ""))
    return str(plugin)


def check_policy(job: dict[str, Any], policy: Policy, running: int) -> str | None:
    """Why this site refuses ``job`` (a job file as a mapping), or None when it accepts it.
    ``running`` is how many jobs run here now."""
    model = _type(job.get("model", "sklearn-sgd"))
    aggregator = _type(job.get("aggregator", "fedavg"))
    transport = _type(job.get("transport", "local"))
    stages = [_type(s) for s in job.get("pipeline") or []]
    rounds = job.get("rounds", 10)
    for what, value, allowed in (("model type", model, policy.models),
                                 ("aggregator", aggregator, policy.aggregators),
                                 ("transport", transport, policy.transports)):
        if allowed is not None and value not in allowed:
            return f"{what} {value!r} is not accepted here (allowed: {', '.join(allowed)})"
    if policy.stages is not None:
        for stage in stages:
            if stage not in policy.stages:
                return (f"pipeline stage {stage!r} is not accepted here (allowed: "
                        f"{', '.join(policy.stages) or 'none'})")
    for needed in policy.require_stages:
        if needed not in stages:
            return f"this site requires pipeline stage {needed!r}, which the job lacks"
    if policy.max_rounds is not None and isinstance(rounds, int) and rounds > policy.max_rounds:
        return f"{rounds} rounds is more than this site allows ({policy.max_rounds})"
    if policy.max_jobs is not None and running >= policy.max_jobs:
        return f"this site already runs {running} jobs, its limit ({policy.max_jobs})"
    return None


def fill_data(job: dict[str, Any], catalog: dict[str, CatalogEntry], *,
              where: str = "here") -> dict[str, Any]:
    """The job file with ``data.dataset`` (a catalog entry) replaced by the entry's loader and
    ``data.options`` by the entry's options. Raises :class:`ConfigError` naming the entry when
    the catalog has none of that name; ``where``: whose catalog it is, for that message."""
    out = copy.deepcopy(job)
    data = dict(out.get("data") or {})
    name = str(data.get("dataset", "digits"))
    if name not in catalog:
        raise ConfigError(f"no data catalog entry {name!r} {where} (entries: "
                          f"{', '.join(sorted(catalog)) or 'none'})")
    entry = catalog[name]
    data["dataset"] = entry.dataset
    data["options"] = copy.deepcopy(entry.options)
    out["data"] = data
    return out
