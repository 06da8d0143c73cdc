"""What a viewer may see of a job file: every credential in it replaced by :data:`MARK`.

A job file can hold credentials its actors need to reach the transport or an MLOps service
(MQTT's ``password``, Kafka's ``sasl_password``, S3's ``access_key``/``secret_key``, MQTT's
``session_secret``, a password inside a URL such as ``https://user:pw@mlflow`` or
``kafkas://broker?sasl_password=pw``). The coordinator keeps the exact text, because the sites
run it and hash it into their audit logs; everything it *shows* (the API, the console, the CLI
output built on the API) goes through :func:`redact` first.

What counts as a secret is decided by the name of the key that holds it, so a new plugin's
``api_token`` or ``client_secret`` is covered without a list to keep up to date:

* a key whose ``_``/``-``-separated words include ``password``, ``passwd``, ``secret``,
  ``token``, ``credential(s)``, ``apikey``, or ``sasl_password``-style compounds of them;
* a key ending in ``key`` other than ``key`` itself (``access_key``, ``secret_key``,
  ``api_key``, ``private_key``). A bare ``key`` is TLS's private-key *path*
  (:class:`~foedus.transport.tls.TLSConfig` takes paths only, never key material), and a
  path says where a file is, not what is in it: it stays visible, as ``ca`` and ``cert`` do;
* in any string that reads as a URL, the password of its ``user:password@`` part and the
  value of every query parameter whose name is secret by the rules above.

A secret's value is replaced whatever its type (a mapping under ``credentials`` goes whole),
except ``null``, an empty string and booleans, which hide nothing (``password: null`` still
tells a viewer that no password is set). Over-redacting a harmless value only hides it from
viewers; the sites still get it.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

import yaml

__all__ = ["MARK", "Redacted", "is_secret_key", "literal_secrets", "redact", "scrub"]

#: what a viewer sees in place of a secret
MARK = "***"
_SECRET_WORDS = frozenset({"password", "passwd", "passphrase", "secret", "token", "credential",
                           "credentials", "apikey"})
_WORD = re.compile(r"[_\-.\s]+")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
#: a secret shorter than this is hidden in the job file but not searched for in free text
#: (a reason or an event): replacing every "ab" in a sentence would garble it and hide little
MIN_SCRUBBED = 4


def is_secret_key(name: object) -> bool:
    """Whether a job file's key names a credential (the rules in the module's docstring)."""
    if not isinstance(name, str):
        return False
    lowered = name.lower()
    words = [w for w in _WORD.split(lowered) if w]
    if any(w in _SECRET_WORDS for w in words):
        return True
    return lowered != "key" and lowered.endswith("key")


@dataclass(frozen=True)
class Redacted:
    """A job file as viewers see it, and the literal secrets taken out of it.

    ``text`` is the exact text when the file holds no secret (so its SHA-256 is the one the
    sites logged); ``secrets`` lists each hidden value with where it was (``transport.params.
    password``), for :func:`scrub` and for the warning a submitter gets."""

    text: str
    secrets: tuple[tuple[str, str], ...]
    sha256: str

    @property
    def values(self) -> frozenset[str]:
        return frozenset(v for _, v in self.secrets)

    @property
    def places(self) -> list[str]:
        return sorted({where for where, _ in self.secrets})


@functools.lru_cache(maxsize=4096)
def redact(job_yaml: str) -> Redacted:
    """``job_yaml`` with every secret replaced by :data:`MARK`. Remembered per text: the
    console's jobs page asks for every job's every few seconds, and YAML is slow to parse.

    A text that does not read as YAML is shown as nothing but a note: the coordinator only
    stores text it parsed, so only a damaged row could get here, and its secrets cannot be
    found in it."""
    digest = hashlib.sha256(job_yaml.encode()).hexdigest()
    try:
        job = yaml.safe_load(job_yaml)
    except yaml.YAMLError:
        return Redacted("# the stored job file does not read as YAML; not shown\n", (), digest)
    found: list[tuple[str, str]] = []
    shown = _walk(job, "", found)
    if not found:
        return Redacted(job_yaml, (), digest)
    return Redacted(yaml.safe_dump(shown, sort_keys=False), tuple(found), digest)


def _walk(value: Any, where: str, found: list[tuple[str, str]]) -> Any:
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            here = f"{where}.{key}" if where else str(key)
            if is_secret_key(key) and _hides_something(item):
                found.extend((here, v) for v in _leaves(item))
                out[key] = MARK
            else:
                out[key] = _walk(item, here, found)
        return out
    if isinstance(value, list):
        return [_walk(item, f"{where}[{i}]", found) for i, item in enumerate(value)]
    if isinstance(value, str) and _URL.match(value):
        return _url(value, where, found)
    return value


def _hides_something(value: Any) -> bool:
    return not (value is None or isinstance(value, bool) or value == "")


def _leaves(value: Any) -> Iterable[str]:
    """Every scalar under a secret, as text (a mapping under ``credentials`` has several)."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    elif _hides_something(value):
        yield str(value)


def _url(text: str, where: str, found: list[tuple[str, str]]) -> str:
    """A URL with its userinfo password and its secret query values replaced."""
    try:
        parts = urlsplit(text)
    except ValueError:  # a malformed IPv6 host: not a URL the transports would take either
        return text
    netloc = parts.netloc
    if parts.password:
        found.extend((f"{where} (password in the URL)", v)
                     for v in {parts.password, unquote(parts.password)})
        host = netloc.rpartition("@")[2]
        netloc = f"{quote(unquote(parts.username or ''), safe='')}:{MARK}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(is_secret_key(k) and v for k, v in pairs):
            kept = []
            for k, v in pairs:
                if is_secret_key(k) and v:
                    found.extend((f"{where} (?{k}= in the URL)", form)
                                 for form in {v, quote(v, safe='')})
                    kept.append(f"{quote(k, safe='')}={MARK}")
                else:
                    kept.append(f"{quote(k, safe='')}={quote(v, safe='')}")
            query = "&".join(kept)
    if netloc == parts.netloc and query == parts.query:
        return text
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub(value: Any, secrets: frozenset[str]) -> Any:
    """``value`` (a reason, an event, a round record...) with every occurrence of a job's
    secret replaced by :data:`MARK`: an error message can quote the setting that failed (a
    bootstrap URL with its ``sasl_password``), and it is shown to the same viewers."""
    hidden = sorted((s for s in secrets if len(s) >= MIN_SCRUBBED), key=len, reverse=True)
    if not hidden:
        return value
    return _scrub(value, hidden)


def _scrub(value: Any, hidden: list[str]) -> Any:
    if isinstance(value, str):
        for secret in hidden:
            if secret in value:
                value = value.replace(secret, MARK)
        return value
    if isinstance(value, dict):
        return {k: _scrub(v, hidden) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, hidden) for v in value]
    return value


def literal_secrets(job_yaml: str) -> str | None:
    """The warning a submitter gets for a job file holding credentials as literal text (None
    when it holds none): the job still runs, since foedus has no way yet to name a secret that
    each site supplies itself (docs/security.md), but the submitter learns that every site
    assigned the job receives these values and that viewers see the marker instead."""
    places = redact(job_yaml).places
    if not places:
        return None
    return (f"the job file holds a literal secret ({', '.join(places)}); every site receives "
            f"it, viewers see {MARK!r}")
