"""The coordinator's state: sites, users, jobs, assignments, round records and events, in SQL.

Everything the coordinator knows lives here and nowhere else, so a coordinator killed and
restarted loses no job. The database is an embedded SQLite file by default, or PostgreSQL
(:mod:`foedus.federation.database` is the seam). The SQL is written once, for both: ``?``
placeholders, ``INSERT ... ON CONFLICT ... DO UPDATE``, plain types, no backend-only
functions, JSON stored as text. The schema lives only in :data:`MIGRATIONS`, applied in order
and recorded in ``schema_version``, so both databases always have the same tables.

Tokens are stored as SHA-256 hashes: they are 256 random bits, so a fast hash is enough (no
dictionary to attack) and a stolen database gives no usable token.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from foedus.federation.database import Database, Transaction, open_database
from foedus.federation.redact import redact, scrub

__all__ = ["JOB_STATES", "MIGRATIONS", "ROLES", "Job", "Store", "hash_token", "new_token"]

#: a job's life: queued (offered to its sites) -> running (its server started) -> one of the
#: terminal states
JOB_STATES = ("queued", "running", "finished", "failed", "cancelled")
TERMINAL = ("finished", "failed", "cancelled")
#: what each role may do, the weakest first; a role may do everything the ones before it may
ROLES = ("viewer", "submitter", "admin")

#: the schema, one list of statements per version; append, never edit a released one
MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE schema_version (version INTEGER NOT NULL)",
        """CREATE TABLE sites (
            name TEXT PRIMARY KEY, version TEXT NOT NULL, offers TEXT NOT NULL,
            first_seen DOUBLE PRECISION NOT NULL, last_seen DOUBLE PRECISION NOT NULL)""",
        """CREATE TABLE users (
            name TEXT PRIMARY KEY, role TEXT NOT NULL, token_hash TEXT NOT NULL UNIQUE,
            created DOUBLE PRECISION NOT NULL)""",
        """CREATE TABLE jobs (
            id TEXT PRIMARY KEY, owner TEXT NOT NULL, state TEXT NOT NULL, reason TEXT,
            job_yaml TEXT NOT NULL, sites TEXT NOT NULL, checkpoint_dir TEXT NOT NULL,
            server_pid INTEGER, result TEXT, created DOUBLE PRECISION NOT NULL,
            updated DOUBLE PRECISION NOT NULL)""",
        """CREATE TABLE assignments (
            job_id TEXT NOT NULL, site TEXT NOT NULL, actor TEXT NOT NULL, state TEXT NOT NULL,
            reason TEXT, updated DOUBLE PRECISION NOT NULL, PRIMARY KEY (job_id, actor))""",
        """CREATE TABLE rounds (
            job_id TEXT NOT NULL, round INTEGER NOT NULL, record TEXT NOT NULL,
            PRIMARY KEY (job_id, round))""",
        """CREATE TABLE events (
            job_id TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, text TEXT NOT NULL)""",
    ],
    [   # a queued job fails when its sites have not all answered by this time (None: never)
        "ALTER TABLE jobs ADD COLUMN queue_deadline DOUBLE PRECISION",
    ],
    [   # the web console's sessions (foedus.federation.console.sessions): the session id's
        # hash, its user, and the user's token hash at login (a re-keyed user's sessions end)
        """CREATE TABLE console_sessions (
            id_hash TEXT PRIMARY KEY, user_name TEXT NOT NULL, token_hash TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL, last_used DOUBLE PRECISION NOT NULL)""",
    ],
]


def new_token() -> str:
    """A fresh bearer token: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Job:
    id: str
    owner: str
    state: str
    reason: str | None
    job_yaml: str
    sites: list[str]
    checkpoint_dir: str
    server_pid: int | None
    result: dict[str, Any] | None
    created: float
    updated: float
    #: when the job fails if its sites have not all answered (None: it waits forever)
    queue_deadline: float | None = None

    def shown(self) -> Job:
        """The job as every user sees it: its file with each credential replaced by
        :data:`~foedus.federation.redact.MARK`, and those credentials scrubbed from its reason
        and result. Only the sites get the exact file (with their offer); nobody gets it
        through the API or the console, the submitter included (they have their file)."""
        shown = redact(self.job_yaml)
        return replace(self, job_yaml=shown.text, reason=scrub(self.reason, shown.values),
                       result=scrub(self.result, shown.values))

    def public(self) -> dict[str, Any]:
        """What the API shows of a job (:meth:`shown`), with ``job_sha256``: the SHA-256 of
        the exact file, which each site's audit log records for the offer it received."""
        job = self.shown()
        return {"id": job.id, "owner": job.owner, "state": job.state, "reason": job.reason,
                "server_pid": job.server_pid,
                "sites": job.sites, "created": job.created, "updated": job.updated,
                "result": job.result, "job_yaml": job.job_yaml,
                "job_sha256": redact(self.job_yaml).sha256,
                "queue_deadline": job.queue_deadline}


class Store:
    """The coordinator's database (an SQLite path or a ``postgresql://`` URL); every method is
    one short transaction.

    The coordinator calls it from its event loop: each call is well under a millisecond on
    SQLite and about one round trip on a local PostgreSQL, so it is not worth a thread hop.
    ``clock`` gives every timestamp (tests pass a fake one to move time on).
    """

    def __init__(self, where: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.db: Database = open_database(where)
        self.clock = clock
        self._migrate()

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _tx(self, *, durable: bool = True) -> Iterator[Transaction]:
        with self.db.transaction(durable=durable) as tx:
            yield tx

    def schema_version(self) -> int:
        with self._tx() as cur:
            cur.execute("SELECT MAX(version) FROM schema_version")
            return int(cur.fetchone()[0] or 0)

    def _migrate(self) -> None:
        with self._tx() as cur:
            self.db.lock_for_migration(cur)
            version = 0
            if self.db.has_table(cur, "schema_version"):
                cur.execute("SELECT MAX(version) FROM schema_version")
                version = cur.fetchone()[0] or 0
            for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements:
                    cur.execute(statement)
                cur.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))

    # ---- users ---------------------------------------------------------------------------

    def add_user(self, name: str, role: str, token: str) -> None:
        if role not in ROLES:
            raise ValueError(f"role: got {role!r}; allowed: {', '.join(ROLES)}")
        with self._tx() as cur:
            cur.execute("INSERT INTO users (name, role, token_hash, created) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (name) DO UPDATE SET role = excluded.role, "
                        "token_hash = excluded.token_hash",
                        (name, role, hash_token(token), self.clock()))

    def user_role(self, name: str) -> str | None:
        """The role of the user called ``name``, None when there is none."""
        with self._tx() as cur:
            cur.execute("SELECT role FROM users WHERE name = ?", (name,))
            row = cur.fetchone()
        return str(row[0]) if row else None

    def user_by_token(self, token: str) -> tuple[str, str] | None:
        """``(name, role)`` of the token's user, or None."""
        with self._tx() as cur:
            cur.execute("SELECT name, role FROM users WHERE token_hash = ?", (hash_token(token),))
            row = cur.fetchone()
        return (row[0], row[1]) if row else None

    def has_admin(self) -> bool:
        with self._tx() as cur:
            cur.execute("SELECT COUNT(*) FROM users WHERE role = 'admin'")
            return bool(cur.fetchone()[0])

    # ---- console sessions ----------------------------------------------------------------

    def open_session(self, session_id: str, token: str) -> tuple[str, str] | None:
        """A console session for the token's user, kept by the hash of ``session_id`` only:
        ``(name, role)``, or None (and no session) for a token that is no user's."""
        now = self.clock()
        with self._tx() as cur:
            cur.execute("SELECT name, role, token_hash FROM users WHERE token_hash = ?",
                        (hash_token(token),))
            row = cur.fetchone()
            if row is None:
                return None
            cur.execute("INSERT INTO console_sessions (id_hash, user_name, token_hash, created, "
                        "last_used) VALUES (?, ?, ?, ?, ?)",
                        (hash_token(session_id), row[0], row[2], now, now))
        return row[0], row[1]

    def session(self, session_id: str, idle_s: float) -> tuple[str, str, float] | None:
        """``(name, role, last used)`` of an open session; None when there is none, it was
        unused for longer than ``idle_s``, or its user was re-keyed or removed since (such a
        session is deleted)."""
        key = hash_token(session_id)
        with self._tx() as cur:
            cur.execute("SELECT u.name, u.role, s.last_used FROM console_sessions s "
                        "JOIN users u ON u.name = s.user_name AND u.token_hash = s.token_hash "
                        "WHERE s.id_hash = ?", (key,))
            row = cur.fetchone()
            if row is None or self.clock() - row[2] > idle_s:
                cur.execute("DELETE FROM console_sessions WHERE id_hash = ?", (key,))
                return None
        return row[0], row[1], row[2]

    def touch_session(self, session_id: str) -> None:
        """The session was used now. Not durable: losing it to a power cut only shortens
        the session's idle time."""
        with self._tx(durable=False) as cur:
            cur.execute("UPDATE console_sessions SET last_used = ? WHERE id_hash = ?",
                        (self.clock(), hash_token(session_id)))

    def close_session(self, session_id: str) -> None:
        with self._tx() as cur:
            cur.execute("DELETE FROM console_sessions WHERE id_hash = ?",
                        (hash_token(session_id),))

    def close_idle_sessions(self, idle_s: float) -> int:
        """Delete the sessions unused for longer than ``idle_s``; how many."""
        with self._tx() as cur:
            cur.execute("DELETE FROM console_sessions WHERE last_used < ?",
                        (self.clock() - idle_s,))
            return cur.rowcount

    # ---- sites ---------------------------------------------------------------------------

    def heartbeat(self, name: str, version: str, offers: dict[str, Any]) -> None:
        """A site is alive. Not durable (:mod:`foedus.federation.database`): its next
        heartbeat is seconds away, and a hundred sites must not keep the disk flushing."""
        now = self.clock()
        with self._tx(durable=False) as cur:
            cur.execute("INSERT INTO sites (name, version, offers, first_seen, last_seen) "
                        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                        "version = excluded.version, offers = excluded.offers, "
                        "last_seen = excluded.last_seen",
                        (name, version, json.dumps(offers), now, now))

    def sites(self, online_within: float) -> list[dict[str, Any]]:
        now = self.clock()
        with self._tx() as cur:
            cur.execute("SELECT name, version, offers, first_seen, last_seen FROM sites")
            rows = sorted(cur.fetchall())  # by name, byte order whatever the DB's collation
        return [{"name": r[0], "version": r[1], "offers": json.loads(r[2]),
                 "online": now - r[4] <= online_within, "last_seen": r[4]} for r in rows]

    # ---- jobs ----------------------------------------------------------------------------

    def add_job(self, job_id: str, owner: str, job_yaml: str, actors: dict[str, str],
                checkpoint_dir: str, queue_timeout: float | None = None) -> None:
        """A queued job and one ``offered`` assignment per site actor (actor -> site); it
        fails if they have not all answered within ``queue_timeout`` seconds."""
        now = self.clock()
        deadline = None if queue_timeout is None else now + queue_timeout
        with self._tx() as cur:
            cur.execute("INSERT INTO jobs (id, owner, state, job_yaml, sites, checkpoint_dir, "
                        "created, updated, queue_deadline) "
                        "VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
                        (job_id, owner, job_yaml, json.dumps(sorted(set(actors.values()))),
                         checkpoint_dir, now, now, deadline))
            for actor, site in actors.items():
                cur.execute("INSERT INTO assignments (job_id, site, actor, state, updated) "
                            "VALUES (?, ?, ?, 'offered', ?)", (job_id, site, actor, now))
            cur.execute("INSERT INTO events (job_id, at, text) VALUES (?, ?, ?)",
                        (job_id, now, f"submitted by {owner}"))

    def job(self, job_id: str) -> Job | None:
        found = self.jobs(job_id=job_id)
        return found[0] if found else None

    def jobs(self, *, job_id: str | None = None, states: tuple[str, ...] = ()) -> list[Job]:
        sql = ("SELECT id, owner, state, reason, job_yaml, sites, checkpoint_dir, server_pid, "
               "result, created, updated, queue_deadline FROM jobs")
        args: list[Any] = []
        where = []
        if job_id is not None:
            where.append("id = ?")
            args.append(job_id)
        if states:
            where.append(f"state IN ({', '.join('?' for _ in states)})")
            args += states
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._tx() as cur:
            cur.execute(sql + " ORDER BY created, id", args)
            rows = cur.fetchall()
        return [Job(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7],
                    json.loads(r[8]) if r[8] else None, r[9], r[10], r[11]) for r in rows]

    def set_job(self, job_id: str, *, state: str | None = None, reason: str | None = None,
                server_pid: int | None = None, result: dict[str, Any] | None = None,
                event: str | None = None) -> None:
        sets: list[str] = ["updated = ?"]
        args: list[Any] = [self.clock()]
        for column, value in (("state", state), ("reason", reason), ("server_pid", server_pid)):
            if value is not None:
                sets.append(f"{column} = ?")
                args.append(value)
        if result is not None:
            sets.append("result = ?")
            args.append(json.dumps(result))
        with self._tx() as cur:
            cur.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", (*args, job_id))
            if event:
                cur.execute("INSERT INTO events (job_id, at, text) VALUES (?, ?, ?)",
                            (job_id, self.clock(), event))

    def finish_job(self, job_id: str, state: str, reason: str | None,
                   result: dict[str, Any] | None = None) -> bool:
        """Move a job that has not ended yet to a terminal state and, unless it finished,
        tell its sites to stop its actors (a finished job's clients end by themselves on the
        server's stop message, and stopping them would race that clean exit); False when it
        had already ended (a cancel racing the server's end)."""
        now = self.clock()
        with self._tx() as cur:
            cur.execute("UPDATE jobs SET state = ?, reason = ?, result = ?, updated = ? "
                        "WHERE id = ? AND state IN ('queued', 'running')",
                        (state, reason, json.dumps(result) if result else None, now, job_id))
            if cur.rowcount == 0:
                return False
            if state != "finished":
                cur.execute("UPDATE assignments SET state = 'stop', updated = ? WHERE job_id = ? "
                            "AND state IN ('offered', 'accepted', 'running')", (now, job_id))
            cur.execute("INSERT INTO events (job_id, at, text) VALUES (?, ?, ?)",
                        (job_id, now, f"{state}" + (f": {reason}" if reason else "")))
        return True

    # ---- assignments ---------------------------------------------------------------------

    def assignments(self, *, site: str | None = None,
                    job_id: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT job_id, site, actor, state, reason FROM assignments"
        args: list[Any] = []
        if site is not None:
            sql += " WHERE site = ?"
            args.append(site)
        elif job_id is not None:
            sql += " WHERE job_id = ?"
            args.append(job_id)
        with self._tx() as cur:
            cur.execute(sql + " ORDER BY job_id, actor", args)
            rows = cur.fetchall()
        return [{"job_id": r[0], "site": r[1], "actor": r[2], "state": r[3], "reason": r[4]}
                for r in rows]

    def set_assignment(self, job_id: str, site: str, actor: str, state: str,
                       reason: str | None = None, *, only_from: tuple[str, ...] = ()) -> bool:
        """Change one assignment of ``site`` (a site can only ever touch its own), optionally
        only from the given states; False when nothing matched."""
        sql = ("UPDATE assignments SET state = ?, reason = ?, updated = ? "
               "WHERE job_id = ? AND site = ? AND actor = ?")
        args: list[Any] = [state, reason, self.clock(), job_id, site, actor]
        if only_from:
            sql += f" AND state IN ({', '.join('?' for _ in only_from)})"
            args += only_from
        with self._tx() as cur:
            cur.execute(sql, args)
            changed = cur.rowcount > 0
            if changed:
                cur.execute("INSERT INTO events (job_id, at, text) VALUES (?, ?, ?)",
                            (job_id, self.clock(), f"{site} {actor}: {state}"
                             + (f" ({reason})" if reason else "")))
        return changed

    # ---- rounds and events ---------------------------------------------------------------

    def add_round(self, job_id: str, record: dict[str, Any]) -> None:
        with self._tx() as cur:
            cur.execute("INSERT INTO rounds (job_id, round, record) VALUES (?, ?, ?) "
                        "ON CONFLICT (job_id, round) DO UPDATE SET record = excluded.record",
                        (job_id, int(record["round"]), json.dumps(record)))

    def rounds(self, job_id: str) -> list[dict[str, Any]]:
        with self._tx() as cur:
            cur.execute("SELECT record FROM rounds WHERE job_id = ? ORDER BY round", (job_id,))
            return [json.loads(r[0]) for r in cur.fetchall()]

    def latest_rounds(self) -> dict[str, dict[str, Any]]:
        """Each job's latest round record (jobs with none are left out), in one query: the
        console's jobs page reads it every few seconds for every job, which a query per job
        (all of its rounds) made take a second at 500 jobs of 100 rounds."""
        with self._tx() as cur:
            cur.execute("SELECT r.job_id, r.record FROM rounds r JOIN (SELECT job_id, "
                        "MAX(round) AS last FROM rounds GROUP BY job_id) m "
                        "ON r.job_id = m.job_id AND r.round = m.last")
            return {r[0]: json.loads(r[1]) for r in cur.fetchall()}

    def add_event(self, job_id: str, text: str) -> None:
        with self._tx() as cur:
            cur.execute("INSERT INTO events (job_id, at, text) VALUES (?, ?, ?)",
                        (job_id, self.clock(), text))

    def events(self, job_id: str) -> list[dict[str, Any]]:
        with self._tx() as cur:
            cur.execute("SELECT at, text FROM events WHERE job_id = ? ORDER BY at", (job_id,))
            return [{"at": r[0], "text": r[1]} for r in cur.fetchall()]
