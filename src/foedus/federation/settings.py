"""Reading ``coordinator.yaml`` and ``site.yaml``: one-line errors naming the key, as for job
files, and relative paths resolved against the config file's directory (so a config works
wherever the service is started from)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO, Any

import yaml

from foedus.core.errors import ConfigError
from foedus.transport.tls import TLSConfig

__all__ = ["SITE_KEYS", "lock_state_dir", "path_of", "read_config", "tls_of"]

#: every key of ``site.yaml``: the site agent and ``foedus site-audit`` read the same file
SITE_KEYS = frozenset({"coordinator", "state_dir", "tls", "heartbeat_s", "catalog", "policy",
                       "warm"})


def read_config(path: str | Path, allowed: set[str] | frozenset[str],
                required: set[str]) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]}: unknown key; allowed: "
                          f"{', '.join(sorted(allowed))}")
    missing = sorted(required - set(raw))
    if missing:
        raise ConfigError(f"{path}: {missing[0]}: required")
    raw["_base"] = Path(path).resolve().parent
    return raw


def path_of(raw: dict[str, Any], value: Any, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a path, got {value!r}")
    p = Path(value).expanduser()
    base: Path = raw["_base"]
    return p if p.is_absolute() else base / p


def tls_of(raw: dict[str, Any], *, identity: bool) -> TLSConfig:
    """``tls: {ca, cert, key}``; a site must present its certificate (its identity)."""
    tls = raw.get("tls")
    if not isinstance(tls, dict):
        raise ConfigError("tls: expected {ca: FILE, cert: FILE, key: FILE}")
    unknown = sorted(set(tls) - {"ca", "cert", "key"})
    if unknown:
        raise ConfigError(f"tls.{unknown[0]}: unknown key; allowed: ca, cert, key")
    for key in ("ca", "cert", "key"):
        if key not in tls:
            raise ConfigError(f"tls.{key}: required")
    config = TLSConfig(path_of(raw, tls["ca"], "tls.ca"), path_of(raw, tls["cert"], "tls.cert"),
                       path_of(raw, tls["key"], "tls.key"), require_client_cert=False)
    config.check_files(need_identity=identity)
    return config


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable and writable by this user only (mode 0600, also
    when the file existed): a job file on disk can hold the credentials of its transport
    (docs/security.md), which other users of the machine must not read."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(text)


def lock_state_dir(state_dir: Path, service: str) -> IO[str]:
    """Hold ``state_dir`` for this process, the one ``foedus {service}`` using it; the open
    lock file, which holds it until closed or the process ends (even killed). A second
    service on the same state would run every job's actor twice and interleave two writers'
    lines in the audit log, breaking its hash chain for good: it is refused, naming the pid
    that holds the state."""
    state_dir.mkdir(parents=True, exist_ok=True)
    lock = (state_dir / f"{service}.lock").open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise ConfigError(f"state_dir: {str(state_dir)!r} is in use by another foedus "
                          f"{service} (pid {holder}); each {service} needs a state_dir of its "
                          "own") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock
