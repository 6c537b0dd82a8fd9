"""The run journal's SQLite schema as an ordered list of migrations; `PRAGMA user_version` is the version applied.

Each migration runs inside the opening connection's write transaction, so a journal is at one version or the
next, never in between. Never edit a released migration: append a new one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

# v1: one row per run, the instance facts inline.
_V1 = """
CREATE TABLE runs (
    run_id       TEXT PRIMARY KEY,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    state        TEXT NOT NULL,
    phase        TEXT NOT NULL,
    provider     TEXT NOT NULL,
    offer_id     TEXT,
    gpu          TEXT,
    quoted_price REAL,
    billed_price REAL,
    budget       REAL,
    instance_id  TEXT,
    ssh          TEXT,
    terminated   INTEGER NOT NULL DEFAULT 0,
    label        TEXT,
    output_dir   TEXT,
    workload     TEXT,
    estimate     TEXT,
    config_toml  TEXT,
    error        TEXT,
    finished_at  REAL
);
CREATE TABLE phases (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    name   TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    t      REAL NOT NULL
);
CREATE INDEX phases_by_run ON phases (run_id, id);
"""

# v2: one row per create attempt (failover rents a second offer under the same run, and an attempt whose create
# timed out may still have rented something), plus costs, artifacts, measured throughput and the event offset.
_V2 = """
CREATE TABLE instances (
    run_id        TEXT NOT NULL,
    attempt       INTEGER NOT NULL,
    provider      TEXT NOT NULL,
    offer_id      TEXT,
    gpu           TEXT,
    quoted_price  REAL,
    instance_id   TEXT,
    billed_price  REAL,
    ssh           TEXT,
    status        TEXT NOT NULL,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    terminated_at REAL,
    PRIMARY KEY (run_id, attempt)
);
CREATE INDEX instances_by_status ON instances (status);
CREATE INDEX instances_by_provider_id ON instances (provider, instance_id);
INSERT INTO instances
    SELECT run_id, 1, provider, offer_id, gpu, quoted_price, instance_id, billed_price, ssh,
           CASE WHEN terminated = 1 THEN 'destroyed' WHEN instance_id IS NULL THEN 'intent' ELSE 'created' END,
           created_at, updated_at, CASE WHEN terminated = 1 THEN updated_at END
    FROM runs;
CREATE TABLE runs_v2 (
    run_id       TEXT PRIMARY KEY,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    state        TEXT NOT NULL,
    phase        TEXT NOT NULL,
    label        TEXT,
    budget       REAL,
    output_dir   TEXT,
    workload     TEXT,
    estimate     TEXT,
    config_toml  TEXT,
    error        TEXT,
    finished_at  REAL,
    event_offset INTEGER NOT NULL DEFAULT 0
);
INSERT INTO runs_v2 (run_id, created_at, updated_at, state, phase, label, budget, output_dir, workload, estimate,
                     config_toml, error, finished_at)
    SELECT run_id, created_at, updated_at, state, phase, label, budget, output_dir, workload, estimate,
           config_toml, error, finished_at
    FROM runs;
DROP TABLE runs;
ALTER TABLE runs_v2 RENAME TO runs;
CREATE INDEX runs_by_created ON runs (created_at);
CREATE TABLE costs (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id  TEXT NOT NULL,
    phase   TEXT NOT NULL,
    seconds REAL NOT NULL,
    dollars REAL NOT NULL,
    t       REAL NOT NULL
);
CREATE INDEX costs_by_run ON costs (run_id, id);
CREATE TABLE artifacts (
    run_id TEXT NOT NULL,
    path   TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    bytes  INTEGER NOT NULL,
    t      REAL NOT NULL,
    PRIMARY KEY (run_id, path)
);
CREATE TABLE throughput (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id        TEXT NOT NULL,
    gpu           TEXT NOT NULL,
    family        TEXT NOT NULL,
    resolution    INTEGER NOT NULL,
    batch_size    INTEGER NOT NULL,
    samples_per_s REAL NOT NULL,
    t             REAL NOT NULL
);
CREATE INDEX throughput_by_key ON throughput (gpu, family, resolution, batch_size, id);
"""


def _script(sql: str) -> Callable[[sqlite3.Connection], None]:
    def apply(conn: sqlite3.Connection) -> None:
        # statement by statement: executescript() would COMMIT the caller's transaction first
        for statement in sql.split(";"):
            if statement.strip():
                conn.execute(statement)

    return apply


#: MIGRATIONS[i] takes a journal from version i to version i + 1
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_script(_V1), _script(_V2)]
SCHEMA_VERSION = len(MIGRATIONS)
