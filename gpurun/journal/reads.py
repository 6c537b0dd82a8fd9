"""Reading the journal back: runs, attempts, phases, costs, artifacts, measured speed. A damaged row is noted in
`problems` by run id and skipped, never a traceback."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import statistics
from pathlib import Path
from typing import Any

from gpurun.errors import JournalError
from gpurun.journal.records import (
    ALIVE_STATUSES,
    ArtifactRecord,
    CalibrationKey,
    CostRecord,
    InstanceRecord,
    PhaseRecord,
    RunRecord,
)
from gpurun.models import SshEndpoint

#: what a damaged row raises while it is read back
_ROW_ERRORS = (ValueError, TypeError, KeyError, IndexError)


def _ssh(text: str | None) -> SshEndpoint | None:
    if not text:
        return None
    data = json.loads(text)
    return SshEndpoint(host=str(data["host"]), port=int(data.get("port", 22)), user=str(data.get("user", "root")))


def _object(text: str | None) -> dict[str, Any]:
    value = json.loads(text or "{}")
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


class JournalReads:
    """The read side of `Journal` (which provides `_read`, `_snapshot`, `path` and `problems`)."""

    path: Path
    problems: list[str]

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:  # pragma: no cover - Journal's
        raise NotImplementedError

    def _snapshot(self) -> contextlib.AbstractContextManager[None]:  # pragma: no cover - Journal's
        raise NotImplementedError

    def calibration(self, recent: int = 5) -> dict[CalibrationKey, float]:
        """Measured samples/s keyed by (gpu, family, resolution, batch_size): the median of the `recent` newest."""
        samples: dict[CalibrationKey, list[float]] = {}
        rows = self._read(
            "SELECT gpu, family, resolution, batch_size, samples_per_s FROM throughput ORDER BY t DESC, id DESC"
        )
        for row in rows:
            values = samples.setdefault((row[0], row[1], int(row[2]), int(row[3])), [])
            if len(values) < recent:
                values.append(float(row[4]))
        return {key: statistics.median(values) for key, values in samples.items()}

    def _instance(self, row: sqlite3.Row) -> InstanceRecord | None:
        """One attempt read back; a damaged row is noted in `problems` and skipped."""
        try:
            values = dict(row)
            values["ssh"] = _ssh(values["ssh"])
            return InstanceRecord(**values)
        except _ROW_ERRORS as exc:
            self._note(row, "an instance row", exc)
            return None

    def _note(self, row: sqlite3.Row, what: str, exc: Exception) -> None:
        run_id = row["run_id"] if "run_id" in row.keys() else "?"  # noqa: SIM118 (sqlite3.Row has no __contains__ for names)
        line = f"run {run_id}: {what} of the journal is damaged ({type(exc).__name__}: {exc}); skipped"
        if line not in self.problems:
            self.problems.append(line)

    def _records(self, rows: list[sqlite3.Row]) -> list[RunRecord]:
        ids = [row["run_id"] for row in rows]
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        attempts: dict[str, list[InstanceRecord]] = {}
        for row in self._read(f"SELECT * FROM instances WHERE run_id IN ({marks}) ORDER BY attempt", tuple(ids)):
            instance = self._instance(row)
            if instance is not None:
                attempts.setdefault(row["run_id"], []).append(instance)
        rows_spent = self._read(
            f"SELECT run_id, SUM(dollars) FROM costs WHERE run_id IN ({marks}) GROUP BY run_id", tuple(ids)
        )
        spent: dict[str, float | None] = {row[0]: row[1] for row in rows_spent}
        records = []
        for row in rows:
            try:
                values = dict(row)
                values["workload"] = _object(values["workload"])
                values["estimate"] = _object(values["estimate"])
                mine = attempts.get(row["run_id"], [])
                values.update(spent=float(spent.get(row["run_id"]) or 0.0), instance=mine[-1] if mine else None)
                records.append(RunRecord(**values, alive=any(i.alive for i in mine)))
            except _ROW_ERRORS as exc:
                self._note(row, "the run's row", exc)
        return records

    def get(self, run_id_or_prefix: str) -> RunRecord:
        """A run by its id or a unique prefix of it."""
        with self._snapshot():
            return self._get(run_id_or_prefix)

    def _get(self, run_id_or_prefix: str) -> RunRecord:
        key = run_id_or_prefix.strip()
        rows = self._read("SELECT * FROM runs WHERE run_id = ?", (key,))
        if not rows and key:
            pattern = key.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            rows = self._read("SELECT * FROM runs WHERE run_id LIKE ? ESCAPE '\\' ORDER BY run_id LIMIT 6", (pattern,))
        if not rows:
            raise JournalError(f"no run {key!r} in the journal", hint="`gpurun runs --all` lists the run ids")
        if len(rows) > 1:
            names = ", ".join(row["run_id"] for row in rows[:5]) + (", ..." if len(rows) > 5 else "")
            raise JournalError(f"{key!r} matches several runs: {names}", hint="type more of the run id")
        records = self._records(rows)
        if not records:
            raise JournalError(
                self.problems[-1] if self.problems else f"run {key!r} cannot be read",
                where=str(self.path),
                hint="check the provider's console for its machine; `gpurun down --strays` finds labelled ones",
            )
        return records[0]

    def runs(self, active_only: bool = False, limit: int | None = None) -> list[RunRecord]:
        """Runs, newest first. active_only: runs not finished, or with an instance that may still bill."""
        where = ""
        if active_only:
            alive = ",".join(f"'{s}'" for s in ALIVE_STATUSES)
            where = f"WHERE state = 'active' OR run_id IN (SELECT run_id FROM instances WHERE status IN ({alive}))"
        sql = f"SELECT * FROM runs {where} ORDER BY created_at DESC, run_id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._snapshot():
            return self._records(self._read(sql))

    def instances(self, run_id: str) -> list[InstanceRecord]:
        """Every create attempt of a run, oldest first."""
        rows = self._read("SELECT * FROM instances WHERE run_id = ? ORDER BY attempt", (run_id,))
        return [i for i in map(self._instance, rows) if i is not None]

    def alive_instances(self) -> list[InstanceRecord]:
        """Every attempt not confirmed destroyed (or never created): what may be billing. Unknown counts as alive."""
        alive = ",".join(f"'{s}'" for s in ALIVE_STATUSES)
        rows = self._read(f"SELECT * FROM instances WHERE status IN ({alive}) ORDER BY created_at, run_id, attempt")
        return [i for i in map(self._instance, rows) if i is not None]

    def find_instance(self, provider: str, instance_id: str) -> InstanceRecord | None:
        """The attempt that rented `instance_id` on `provider` (for reconciling provider listings), if any."""
        rows = self._read(
            "SELECT * FROM instances WHERE provider = ? AND instance_id = ? ORDER BY created_at DESC LIMIT 1",
            (provider, str(instance_id)),
        )
        return self._instance(rows[0]) if rows else None

    def phases(self, run_id: str) -> list[PhaseRecord]:
        rows = self._read("SELECT run_id, name, detail, t FROM phases WHERE run_id = ? ORDER BY id", (run_id,))
        return [PhaseRecord(**dict(row)) for row in rows]

    def costs(self, run_id: str) -> list[CostRecord]:
        rows = self._read(
            "SELECT run_id, phase, seconds, dollars, t FROM costs WHERE run_id = ? ORDER BY id", (run_id,)
        )
        return [CostRecord(**dict(row)) for row in rows]

    def artifacts(self, run_id: str) -> list[ArtifactRecord]:
        rows = self._read("SELECT * FROM artifacts WHERE run_id = ? ORDER BY t, path", (run_id,))
        return [ArtifactRecord(**dict(row)) for row in rows]
