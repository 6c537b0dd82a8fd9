"""The run journal: SQLite in the state dir holding each run's intent (written BEFORE create), phases, instances,
costs, artifacts and measured speed, so no crash can lose a billing instance.

Every write is its own transaction (`BEGIN IMMEDIATE`, WAL, `synchronous=FULL`): once a call returns, the fact
survives a SIGKILL or a power cut. Readers never block the writer and wait (busy timeout) rather than fail, so
`gpurun runs` can read while `gpurun train` writes. The schema is versioned (gpurun/journal/schema.py).

Instances are recorded per create attempt. An attempt is "alive" (possibly billing) until the provider confirmed
it gone or confirmed nothing was created; an attempt in "intent" (create called, answer unknown) is alive.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gpurun.errors import JournalError
from gpurun.journal.reads import JournalReads
from gpurun.journal.records import (
    FINAL_STATES,
    PHASES,
    new_run_id,
)
from gpurun.journal.schema import MIGRATIONS, SCHEMA_VERSION
from gpurun.models import SshEndpoint, to_dict
from gpurun.settings import state_dir

BUSY_TIMEOUT_S = 15.0


def _json(value: Any) -> str:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = to_dict(value)
    return json.dumps(value if value is not None else {}, default=str, sort_keys=True)


class Journal(JournalReads):
    """The journal of every run. Open with Journal.open(); safe to share between threads of one process."""

    new_run_id = staticmethod(new_run_id)

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._lock = threading.RLock()
        #: rows that could not be read back, one line each naming the run: reported, skipped, never a traceback
        self.problems: list[str] = []

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r})"

    @classmethod
    def open(cls, path: Path | str | None = None) -> Journal:
        """Open (creating, 0600, and migrating as needed) the journal; default `<state dir>/journal.sqlite3`."""
        default = path is None
        path = Path(path) if path is not None else state_dir() / "journal.sqlite3"
        if default:
            _refuse_silent_reset(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Create it 0600 (never briefly world-readable). O_EXCL matters: closing any descriptor of a database
            # file drops this process's POSIX locks on it, which would corrupt another open Journal's writes.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"cannot open the run journal: {exc}", where=str(path)) from None
        conn.row_factory = sqlite3.Row
        journal = cls(path, conn)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")  # the intent must survive a power cut, not only a crash
            journal._migrate()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise JournalError(
                f"the run journal is unreadable: {exc}",
                where=str(path),
                hint="move the file aside to start a new journal (check your providers' consoles for instances)",
            ) from None
        except BaseException:
            conn.close()
            raise
        return journal

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction, committed before returning: each journal write is durable on its own."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")  # take the write lock now (waiting up to the busy timeout)
            except sqlite3.Error as exc:
                raise JournalError(f"cannot write the run journal: {exc}", where=str(self.path)) from None
            try:
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK")
                raise JournalError(f"cannot write the run journal: {exc}", where=str(self.path)) from None
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        """Several reads that see one consistent state, even while another process writes."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                yield
            finally:
                self._conn.execute("COMMIT")

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise JournalError(f"cannot read the run journal: {exc}", where=str(self.path)) from None

    def _migrate(self) -> None:
        if self._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return  # the common case: no write lock, no fsync on every command's open
        with self._write() as conn:  # re-read under the lock: another process may have just migrated
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise JournalError(
                    f"the run journal has schema version {version}; this gpurun knows up to {SCHEMA_VERSION}",
                    where=str(self.path),
                    hint="upgrade gpurun",
                )
            for step in MIGRATIONS[version:]:
                step(conn)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @property
    def schema_version(self) -> int:
        return int(self._read("PRAGMA user_version")[0][0])

    # ---- writes ------------------------------------------------------------------------------------------

    @staticmethod
    def _require_run(conn: sqlite3.Connection, run_id: str) -> None:
        if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
            raise JournalError(f"unknown run {run_id!r}", hint="`gpurun runs --all` lists the runs in the journal")

    @staticmethod
    def _current_attempt(conn: sqlite3.Connection, run_id: str) -> int:
        row = conn.execute("SELECT MAX(attempt) FROM instances WHERE run_id = ?", (run_id,)).fetchone()
        if row is None or row[0] is None:
            raise JournalError(f"unknown run {run_id!r}", hint="`gpurun runs --all` lists the runs in the journal")
        return int(row[0])

    @staticmethod
    def _append_phase(conn: sqlite3.Connection, run_id: str, name: str, detail: str, now: float) -> None:
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}; one of {', '.join(PHASES)}")
        conn.execute("INSERT INTO phases (run_id, name, detail, t) VALUES (?, ?, ?, ?)", (run_id, name, detail, now))
        state_sql = ", state = ?" if name in FINAL_STATES else ""
        args: tuple[Any, ...] = (name, now, name, run_id) if name in FINAL_STATES else (name, now, run_id)
        conn.execute(f"UPDATE runs SET phase = ?, updated_at = ?{state_sql} WHERE run_id = ?", args)

    def record_intent(
        self,
        run_id: str,
        *,
        provider: str,
        offer_id: str | None,
        gpu: str | None,
        quoted_price: float | None,
        budget: float | None,
        workload: Mapping[str, Any] | Any,
        estimate: Mapping[str, Any] | Any,
        output_dir: str | Path | None,
        config_toml: str | None,
        label: str | None,
    ) -> None:
        """Record that a run is about to rent `offer_id`. Call BEFORE create; from here on the run counts as alive."""
        now = time.time()
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None:
                raise JournalError(f"run {run_id!r} already exists", hint="use Journal.new_run_id() for each run")
            conn.execute(
                "INSERT INTO runs (run_id, created_at, updated_at, state, phase, label, budget, output_dir, workload,"
                " estimate, config_toml) VALUES (?, ?, ?, 'active', 'intent', ?, ?, ?, ?, ?, ?)",
                (run_id, now, now, label, budget, None if output_dir is None else str(output_dir), _json(workload),
                 _json(estimate), config_toml),
            )  # fmt: skip
            self._insert_attempt(conn, run_id, 1, provider, offer_id, gpu, quoted_price, now)
            conn.execute("INSERT INTO phases (run_id, name, detail, t) VALUES (?, 'intent', ?, ?)",
                         (run_id, f"{provider}:{offer_id}", now))  # fmt: skip

    @staticmethod
    def _insert_attempt(conn: sqlite3.Connection, run_id: str, attempt: int, provider: str, offer_id: str | None,
                        gpu: str | None, quoted_price: float | None, now: float) -> None:  # fmt: skip
        conn.execute(
            "INSERT INTO instances (run_id, attempt, provider, offer_id, gpu, quoted_price, status, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, 'intent', ?, ?)",
            (run_id, attempt, provider, offer_id, gpu, quoted_price, now, now),
        )

    def record_failover(
        self, run_id: str, *, provider: str, offer_id: str | None, gpu: str | None, quoted_price: float | None
    ) -> int:
        """Record the intent to rent another offer for this run (call BEFORE that create); returns the attempt.

        The previous attempt stays alive unless it was marked not created or terminated.
        """
        now = time.time()
        with self._write() as conn:
            attempt = self._current_attempt(conn, run_id) + 1
            self._insert_attempt(conn, run_id, attempt, provider, offer_id, gpu, quoted_price, now)
            self._append_phase(conn, run_id, "boot", f"failover to {provider}:{offer_id}", now)
            return attempt

    def mark_not_created(self, run_id: str, reason: str = "") -> None:
        """The provider definitively refused the current attempt's create (NOT for timeouts: those stay alive)."""
        now = time.time()
        with self._write() as conn:
            attempt = self._current_attempt(conn, run_id)
            conn.execute(
                "UPDATE instances SET status = 'not_created', updated_at = ?, terminated_at = ?"
                " WHERE run_id = ? AND attempt = ? AND status = 'intent'",
                (now, now, run_id, attempt),
            )
            conn.execute("UPDATE runs SET updated_at = ?, error = COALESCE(?, error) WHERE run_id = ?",
                         (now, reason or None, run_id))  # fmt: skip

    def set_instance(
        self,
        run_id: str,
        instance_id: str,
        *,
        billed_price: float | None = None,
        ssh: SshEndpoint | None = None,
        attempt: int | None = None,
    ) -> None:
        """The instance id of the current attempt (or of `attempt`, when a reconcile finds an earlier one's instance),
        and, when known, the billed $/h and SSH endpoint (None keeps what was recorded)."""
        now = time.time()
        ssh_json = json.dumps({"host": ssh.host, "port": ssh.port, "user": ssh.user}) if ssh else None
        with self._write() as conn:
            current = self._current_attempt(conn, run_id)
            if attempt is not None and not 1 <= attempt <= current:
                raise JournalError(f"run {run_id} has no attempt {attempt} (it has 1..{current})")
            # an instance that exists is alive whatever we believed: a 'not created' create can have rented after all
            conn.execute(
                "UPDATE instances SET instance_id = ?, billed_price = COALESCE(?, billed_price),"
                " ssh = COALESCE(?, ssh), updated_at = ?, terminated_at = NULL,"
                " status = CASE WHEN status IN ('intent', 'not_created') THEN 'created' ELSE status END"
                " WHERE run_id = ? AND attempt = ?",
                (str(instance_id), billed_price, ssh_json, now, run_id, attempt or current),
            )
            conn.execute("UPDATE runs SET updated_at = ? WHERE run_id = ?", (now, run_id))

    def phase(self, run_id: str, name: str, detail: str = "") -> None:
        """Append a phase (timestamped) and make it the run's current phase; done/failed/cancelled end the run."""
        with self._write() as conn:
            self._require_run(conn, run_id)
            self._append_phase(conn, run_id, name, detail, time.time())

    def mark_terminated(self, run_id: str, confirmed: bool, *, instance_id: str | None = None) -> None:
        """Terminate was called on the current attempt (or the one holding `instance_id`).

        Only `confirmed=True` (the provider no longer lists it as alive) makes it destroyed; otherwise it stays
        alive as destroy_unconfirmed, for `gpurun runs`/`down` to finish.
        """
        now = time.time()
        with self._write() as conn:
            current = self._current_attempt(conn, run_id)
            args: tuple[int | str, ...]
            if instance_id is None:
                where, args = "attempt = ?", (current,)
            else:
                where, args = "instance_id = ?", (str(instance_id),)
            if (
                instance_id is not None
                and not conn.execute(
                    "SELECT 1 FROM instances WHERE run_id = ? AND instance_id = ?", (run_id, str(instance_id))
                ).fetchone()
            ):
                raise JournalError(f"run {run_id} has no instance {instance_id!r}")
            # an unconfirmed terminate never resurrects what the provider already confirmed gone
            keep = "('not_created')" if confirmed else "('not_created', 'destroyed')"
            conn.execute(
                f"UPDATE instances SET status = ?, updated_at = ?, terminated_at = ? WHERE run_id = ? AND {where}"
                f" AND status NOT IN {keep}",
                ("destroyed" if confirmed else "destroy_unconfirmed", now, now if confirmed else None, run_id, *args),
            )
            is_current = (
                instance_id is None
                or conn.execute(
                    "SELECT 1 FROM instances WHERE run_id = ? AND attempt = ? AND instance_id = ?",
                    (run_id, current, str(instance_id)),
                ).fetchone()
            )
            if confirmed and is_current:  # an older attempt's cleanup does not end the current instance's life
                self._append_phase(conn, run_id, "destroyed", instance_id or "", now)
            else:
                conn.execute("UPDATE runs SET updated_at = ? WHERE run_id = ?", (now, run_id))

    def mark_finished(self, run_id: str, state: str, error: str | None = None) -> None:
        """End the run as done | failed | cancelled (a phase of that name is appended)."""
        if state not in FINAL_STATES:
            raise ValueError(f"state must be one of {FINAL_STATES}, got {state!r}")
        now = time.time()
        with self._write() as conn:
            self._require_run(conn, run_id)
            self._append_phase(conn, run_id, state, error or "", now)
            conn.execute("UPDATE runs SET finished_at = ?, error = COALESCE(?, error) WHERE run_id = ?",
                         (now, error, run_id))  # fmt: skip

    def mark_resumed(self, run_id: str, budget: float | None) -> None:
        """A finished or abandoned run goes on (`gpurun resume`): active again, with its (raised) budget."""
        now = time.time()
        with self._write() as conn:
            self._require_run(conn, run_id)
            conn.execute("UPDATE runs SET state = 'active', finished_at = NULL, error = NULL, budget = ?,"
                         " updated_at = ? WHERE run_id = ?", (budget, now, run_id))  # fmt: skip

    def record_cost(self, run_id: str, phase: str, seconds: float, dollars: float) -> None:
        """Time and money one phase took, for the receipt (several rows per phase add up)."""
        with self._write() as conn:
            self._require_run(conn, run_id)
            conn.execute("INSERT INTO costs (run_id, phase, seconds, dollars, t) VALUES (?, ?, ?, ?, ?)",
                         (run_id, phase, float(seconds), float(dollars), time.time()))  # fmt: skip

    def record_event_offset(self, run_id: str, offset: int) -> None:
        """Where following the runner's events stopped (bytes), so `gpurun attach` resumes there."""
        with self._write() as conn:
            self._require_run(conn, run_id)
            conn.execute("UPDATE runs SET event_offset = ?, updated_at = ? WHERE run_id = ?",
                         (int(offset), time.time(), run_id))  # fmt: skip

    def record_artifact(self, run_id: str, path: str | Path, sha256: str, bytes: int) -> None:
        """A verified file fetched into the output dir (a re-fetch of the same path replaces the row)."""
        with self._write() as conn:
            self._require_run(conn, run_id)
            conn.execute(
                "INSERT OR REPLACE INTO artifacts (run_id, path, sha256, bytes, t) VALUES (?, ?, ?, ?, ?)",
                (run_id, str(path), sha256, int(bytes), time.time()),
            )

    def record_throughput(
        self, run_id: str, *, gpu: str, family: str, resolution: int, batch_size: int, samples_per_s: float
    ) -> None:
        """A measured training speed (the runner's samples/s), for calibrating the pricing model."""
        if not samples_per_s > 0:
            raise ValueError(f"samples_per_s must be > 0, got {samples_per_s!r}")
        with self._write() as conn:
            self._require_run(conn, run_id)
            conn.execute(
                "INSERT INTO throughput (run_id, gpu, family, resolution, batch_size, samples_per_s, t)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, gpu, family, int(resolution), int(batch_size), float(samples_per_s), time.time()),
            )


def _refuse_silent_reset(path: Path) -> None:
    """A missing or empty journal where runs are known (their folders in the state dir) is an error, not a fresh
    start: it held the machines that may still bill, and recreating it would hide them."""
    try:
        empty = not path.exists() or path.stat().st_size == 0
    except OSError:
        return
    runs = path.parent / "runs"
    known = sorted(p.parent.name for p in runs.glob("*/run.json")) if empty and runs.is_dir() else []
    if empty and known:
        raise JournalError(
            f"the run journal is {'empty' if path.exists() else 'missing'}, but {len(known)} run(s) are known in "
            f"{runs} (e.g. {known[0]})",
            where=str(path),
            hint="restore the journal from a backup; or, to start a new one, move the runs folder aside after "
            "checking your providers' consoles (`gpurun down --strays` finds gpurun-labelled machines)",
        )
