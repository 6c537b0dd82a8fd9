"""The run journal: SQLite in the state dir holding each run's intent (written BEFORE create), phases, instances,
costs, artifacts and measured speed, so no crash can lose a billing instance. `Journal` is in `store.py` (the
writes) and `reads.py`; the record types in `records.py`; the versioned schema in `schema.py`."""

from gpurun.journal.records import (
    ALIVE_STATUSES,
    DEAD_STATUSES,
    FINAL_STATES,
    PHASES,
    ArtifactRecord,
    CalibrationKey,
    CostRecord,
    InstanceRecord,
    PhaseRecord,
    RunRecord,
    is_run_id,
    new_run_id,
)
from gpurun.journal.schema import SCHEMA_VERSION
from gpurun.journal.store import Journal

__all__ = [
    "ALIVE_STATUSES",
    "DEAD_STATUSES",
    "FINAL_STATES",
    "PHASES",
    "SCHEMA_VERSION",
    "ArtifactRecord",
    "CalibrationKey",
    "CostRecord",
    "InstanceRecord",
    "Journal",
    "PhaseRecord",
    "RunRecord",
    "is_run_id",
    "new_run_id",
]
