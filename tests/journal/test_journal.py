"""The run journal: intent survives a SIGKILL, lookups by prefix, phases, what counts as alive, concurrent readers and
writers across processes, throughput medians, and migrating an older schema."""

from __future__ import annotations

import itertools
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpurun.errors import JournalError
from gpurun.journal import PHASES, Journal, new_run_id
from gpurun.journal.schema import SCHEMA_VERSION
from gpurun.models import SshEndpoint, Workload
from gpurun.settings import state_dir
from tests.support.env import subprocess_env


def intent(journal: Journal, run_id: str, **overrides: object) -> None:
    values: dict[str, object] = {
        "provider": "vast",
        "offer_id": "9001",
        "gpu": "RTX 4090",
        "quoted_price": 0.41,
        "budget": 10.0,
        "workload": {"family": "sd15", "images": 20},
        "estimate": {"dollars": 1.2},
        "output_dir": "/tmp/out",
        "config_toml": "[model]\n",
        "label": f"gpurun-{run_id}",
    }
    values.update(overrides)
    journal.record_intent(run_id, **values)  # type: ignore[arg-type]


@pytest.fixture
def journal() -> Iterator[Journal]:
    with Journal.open() as opened:
        yield opened


def test_default_location_and_private_permissions(journal: Journal) -> None:
    assert journal.path == state_dir() / "journal.sqlite3"
    assert stat.S_IMODE(journal.path.stat().st_mode) == 0o600
    assert journal.schema_version == SCHEMA_VERSION
    assert journal.runs() == []


def test_run_ids_are_short_sortable_and_unique() -> None:
    early, late = new_run_id(1_800_000_000.0), new_run_id(1_800_000_000.002)
    assert early < late
    assert len(early) == 16 and early.startswith("r") and early.isalnum() and early == early.lower()
    assert len({new_run_id() for _ in range(2000)}) == 2000
    assert Journal.new_run_id().startswith("r")


def test_intent_survives_a_sigkill_and_counts_as_alive(journal: Journal) -> None:
    code = """
import sys, time
from gpurun.journal import Journal
journal = Journal.open(sys.argv[1])
journal.record_intent("r0crash", provider="runpod", offer_id="NVIDIA RTX A5000", gpu="RTX A5000", quoted_price=0.29,
                      budget=5.0, workload={"family": "sdxl"}, estimate={}, output_dir=None, config_toml=None,
                      label="gpurun-r0crash")
print("intent written", flush=True)
time.sleep(60)  # the client 'crashes' here, between the intent and create's answer
"""
    with subprocess.Popen(
        [sys.executable, "-c", code, str(journal.path)], stdout=subprocess.PIPE, text=True, env=subprocess_env()
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "intent written"
        finally:
            proc.kill()  # SIGKILL: no close, no checkpoint of the WAL
            proc.wait()
    with Journal.open(journal.path) as reopened:
        run = reopened.get("r0crash")
        assert (run.state, run.phase, run.alive) == ("active", "intent", True)
        assert run.instance is not None and run.instance.instance_id is None and run.instance.status == "intent"
        assert run.workload == {"family": "sdxl"}
        (alive,) = reopened.alive_instances()
        assert (alive.run_id, alive.provider, alive.offer_id, alive.instance_id) == (
            "r0crash",
            "runpod",
            "NVIDIA RTX A5000",
            None,
        )
        assert [r.run_id for r in reopened.runs(active_only=True)] == ["r0crash"]


def test_prefix_lookup_and_ambiguity(journal: Journal) -> None:
    for run_id in ("rabc", "rabc1", "rabc2", "rxyz"):
        intent(journal, run_id)
    assert journal.get("rabc").run_id == "rabc"  # an exact id wins over being a prefix of others
    assert journal.get("rabc1").run_id == "rabc1"
    assert journal.get("rx").run_id == "rxyz"
    assert journal.get(" rxyz ").run_id == "rxyz"
    with pytest.raises(JournalError) as ambiguous:
        journal.get("rab")
    assert "rabc, rabc1, rabc2" in ambiguous.value.message and "more of the run id" in (ambiguous.value.hint or "")
    with pytest.raises(JournalError) as unknown:
        journal.get("rnope")
    assert "no run 'rnope'" in unknown.value.message and "gpurun runs" in (unknown.value.hint or "")
    with pytest.raises(JournalError):
        journal.get("r_b%")  # wildcards are literal characters, not patterns
    with pytest.raises(JournalError, match="already exists"):
        intent(journal, "rabc")


def test_phases_in_order_and_the_current_phase(journal: Journal) -> None:
    intent(journal, "r1")
    for name in ("boot", "setup", "upload", "training"):
        journal.phase("r1", name, detail=f"{name} detail")
    journal.phase("r1", "detached", "ctrl-c")
    run = journal.get("r1")
    assert (run.phase, run.state) == ("detached", "active")
    phases = journal.phases("r1")
    assert [p.name for p in phases] == ["intent", "boot", "setup", "upload", "training", "detached"]
    assert phases[0].detail == "vast:9001" and phases[2].detail == "setup detail"
    assert all(a.t <= b.t for a, b in itertools.pairwise(phases))
    with pytest.raises(ValueError, match="unknown phase 'trainnig'"):
        journal.phase("r1", "trainnig")
    with pytest.raises(JournalError, match="unknown run"):
        journal.phase("r-missing", "training")
    assert len(journal.phases("r1")) == 6  # the refused writes left nothing behind
    assert set(PHASES) >= {"intent", "destroyed", "done", "failed", "cancelled"}


def test_a_whole_run_lifecycle(journal: Journal) -> None:
    intent(journal, "r1", workload=Workload(family="sdxl", resolution=1024))
    journal.set_instance("r1", "12345")
    journal.set_instance("r1", "12345", billed_price=0.43, ssh=SshEndpoint("1.2.3.4", 40022))
    journal.set_instance("r1", "12345")  # later calls without prices keep what was recorded
    journal.phase("r1", "training")
    journal.record_event_offset("r1", 8192)
    journal.record_cost("r1", "boot", 95.0, 0.011)
    journal.record_cost("r1", "training", 1800.0, 0.215)
    journal.record_artifact("r1", "lora-000002.safetensors", "ab" * 32, 37_748_736)
    journal.record_artifact("r1", "lora.safetensors", "cd" * 32, 37_748_736)
    journal.record_artifact("r1", "lora.safetensors", "ef" * 32, 37_748_737)  # re-fetched: replaced
    journal.phase("r1", "teardown")
    journal.mark_terminated("r1", confirmed=True)
    journal.mark_finished("r1", "done")
    run = journal.get("r1")
    assert (run.state, run.phase, run.alive, run.error) == ("done", "done", False, None)
    assert run.finished_at is not None and run.event_offset == 8192
    assert run.workload["family"] == "sdxl" and run.workload["resolution"] == 1024
    assert run.instance is not None
    assert (run.provider, run.instance_id, run.instance.billed_price) == ("vast", "12345", 0.43)
    assert run.instance.ssh == SshEndpoint("1.2.3.4", 40022)
    assert run.instance.status == "destroyed" and run.instance.terminated_at is not None
    assert run.spent == pytest.approx(0.226)
    assert [(c.phase, c.seconds) for c in journal.costs("r1")] == [("boot", 95.0), ("training", 1800.0)]
    artifacts = {a.path: a for a in journal.artifacts("r1")}
    assert artifacts["lora.safetensors"].sha256 == "ef" * 32 and len(artifacts) == 2
    assert [p.name for p in journal.phases("r1")][-3:] == ["teardown", "destroyed", "done"]
    assert journal.find_instance("vast", "12345") == run.instance
    assert journal.find_instance("runpod", "12345") is None
    assert journal.runs(active_only=True) == []
    with pytest.raises(ValueError):
        journal.mark_finished("r1", "exploded")


def test_alive_means_not_confirmed_gone(journal: Journal) -> None:
    intent(journal, "r1")  # intent only: create may have rented something
    assert [(i.run_id, i.instance_id) for i in journal.alive_instances()] == [("r1", None)]
    journal.set_instance("r1", "111")
    journal.mark_terminated("r1", confirmed=False)  # destroy sent, provider never confirmed
    (alive,) = journal.alive_instances()
    assert (alive.instance_id, alive.status) == ("111", "destroy_unconfirmed")
    journal.mark_finished("r1", "failed", error="ssh never came up")
    assert journal.get("r1").alive and [r.run_id for r in journal.runs(active_only=True)] == ["r1"]
    journal.mark_terminated("r1", confirmed=True)
    assert journal.alive_instances() == [] and journal.runs(active_only=True) == []
    journal.mark_terminated("r1", confirmed=False)  # a later `gpurun down` whose poll timed out
    assert journal.alive_instances() == []
    assert journal.get("r1").error == "ssh never came up"

    # failover: a refused create is not alive; one that timed out (never resolved) stays alive
    intent(journal, "r2", offer_id="A")
    journal.mark_not_created("r2", "offer taken")
    assert journal.record_failover("r2", provider="vast", offer_id="B", gpu="RTX 3090", quoted_price=0.2) == 2
    assert journal.record_failover("r2", provider="runpod", offer_id="C", gpu="RTX 4090", quoted_price=0.5) == 3
    journal.set_instance("r2", "pod-c")
    assert [(i.attempt, i.offer_id, i.status) for i in journal.instances("r2")] == [
        (1, "A", "not_created"),
        (2, "B", "intent"),
        (3, "C", "created"),
    ]
    assert [(i.run_id, i.attempt) for i in journal.alive_instances()] == [("r2", 2), ("r2", 3)]
    run = journal.get("r2")
    assert (run.provider, run.instance_id, run.phase) == ("runpod", "pod-c", "boot")
    # a reconcile finds attempt 2's instance by its label, and destroys it: the run goes on on attempt 3
    journal.set_instance("r2", "vast-b", attempt=2)
    journal.mark_terminated("r2", confirmed=True, instance_id="vast-b")
    assert [(i.attempt, i.status) for i in journal.alive_instances()] == [(3, "created")]
    assert journal.get("r2").phase == "boot"
    journal.mark_terminated("r2", confirmed=True, instance_id="pod-c")
    assert journal.get("r2").phase == "destroyed" and journal.alive_instances() == []
    with pytest.raises(JournalError, match="no attempt 4"):
        journal.set_instance("r2", "x", attempt=4)
    with pytest.raises(JournalError, match="no instance"):
        journal.mark_terminated("r2", confirmed=True, instance_id="nope")


def test_calibration_is_the_median_of_recent_measurements(journal: Journal) -> None:
    intent(journal, "r1")
    key = {"gpu": "RTX 4090", "family": "sd15", "resolution": 512, "batch_size": 2}
    for value in (10.0, 30.0, 20.0):
        journal.record_throughput("r1", **key, samples_per_s=value)
    journal.record_throughput("r1", gpu="RTX 4090", family="sdxl", resolution=1024, batch_size=1, samples_per_s=2.5)
    assert journal.calibration() == {("RTX 4090", "sd15", 512, 2): 20.0, ("RTX 4090", "sdxl", 1024, 1): 2.5}
    for value in (40.0, 42.0, 44.0, 46.0, 48.0):  # five newer runs: the old three drop out of the window
        journal.record_throughput("r1", **key, samples_per_s=value)
    assert journal.calibration()[("RTX 4090", "sd15", 512, 2)] == 44.0
    assert journal.calibration(recent=2)[("RTX 4090", "sd15", 512, 2)] == 47.0
    with pytest.raises(ValueError):
        journal.record_throughput("r1", **key, samples_per_s=0.0)


WRITER = """
import sys
from gpurun.journal import Journal
journal = Journal.open(sys.argv[1])
for i in range(int(sys.argv[3])):
    journal.phase(sys.argv[2], "training", str(i))
    journal.record_cost(sys.argv[2], "training", 1.0, 0.001)
"""


def test_concurrent_writers_and_a_reader_lose_nothing(journal: Journal) -> None:
    intent(journal, "ra")
    intent(journal, "rb")
    count = 150
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(journal.path), run_id, str(count)], env=subprocess_env())
        for run_id in ("ra", "rb")
    ]
    seen: list[int] = []
    with Journal.open(journal.path) as reader:  # like `gpurun runs` while `gpurun train` writes
        while any(w.poll() is None for w in writers):
            runs = reader.runs()
            seen.append(sum(len(reader.phases(r.run_id)) for r in runs))
            for run in runs:  # the writer logs a phase, then its cost: a later read never has fewer phases
                later = sum(1 for p in reader.phases(run.run_id) if p.name == "training")
                assert run.spent <= 0.001 * later + 1e-9
            time.sleep(0.01)
    assert [w.wait(timeout=60) for w in writers] == [0, 0]
    assert seen == sorted(seen)  # never went backwards
    assert len(seen) > 3  # the reader really ran while they wrote
    for run_id in ("ra", "rb"):
        details = [p.detail for p in journal.phases(run_id) if p.name == "training"]
        assert details == [str(i) for i in range(count)]
        assert journal.get(run_id).spent == pytest.approx(0.001 * count)


# The v1 schema exactly as it shipped, frozen here on purpose: the migration must cope with what is on disk.
V1 = """
CREATE TABLE runs (run_id TEXT PRIMARY KEY, created_at REAL NOT NULL, updated_at REAL NOT NULL, state TEXT NOT NULL,
    phase TEXT NOT NULL, provider TEXT NOT NULL, offer_id TEXT, gpu TEXT, quoted_price REAL, billed_price REAL,
    budget REAL, instance_id TEXT, ssh TEXT, terminated INTEGER NOT NULL DEFAULT 0, label TEXT, output_dir TEXT,
    workload TEXT, estimate TEXT, config_toml TEXT, error TEXT, finished_at REAL);
CREATE TABLE phases (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, name TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '', t REAL NOT NULL);
CREATE INDEX phases_by_run ON phases (run_id, id);
INSERT INTO runs VALUES ('rold1', 100, 200, 'done', 'done', 'vast', '77', 'RTX 3090', 0.2, 0.21, 5, '5551', NULL, 1,
    'gpurun-rold1', '/out', '{"family": "sd15"}', '{}', NULL, NULL, 200);
INSERT INTO runs VALUES ('rold2', 300, 400, 'active', 'training', 'runpod', 'A5000', 'RTX A5000', 0.3, 0.3, 5,
    'pod-9', '{"host": "5.6.7.8", "port": 2222, "user": "root"}', 0, 'gpurun-rold2', '/out', '{}', '{}', NULL, NULL,
    NULL);
INSERT INTO runs VALUES ('rold3', 500, 500, 'active', 'intent', 'vast', '78', 'RTX 4090', 0.4, NULL, 5, NULL, NULL, 0,
    'gpurun-rold3', '/out', '{}', '{}', NULL, NULL, NULL);
INSERT INTO phases (run_id, name, detail, t) VALUES ('rold2', 'intent', '', 300), ('rold2', 'training', '', 350);
PRAGMA user_version = 1;
"""


def test_migrates_a_v1_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(V1)
    conn.close()
    with Journal.open(path) as journal:
        assert journal.schema_version == SCHEMA_VERSION == 2
        assert [(i.run_id, i.instance_id, i.status) for i in journal.alive_instances()] == [
            ("rold2", "pod-9", "created"),
            ("rold3", None, "intent"),
        ]
        old = journal.get("rold1")
        assert (old.state, old.alive, old.instance_id, old.workload) == ("done", False, "5551", {"family": "sd15"})
        assert old.instance is not None and old.instance.status == "destroyed" and old.instance.billed_price == 0.21
        running = journal.get("rold2")
        assert running.instance is not None and running.instance.ssh == SshEndpoint("5.6.7.8", 2222)
        assert [p.name for p in journal.phases("rold2")] == ["intent", "training"]
        journal.record_cost("rold2", "training", 60.0, 0.005)  # the new tables work
        journal.mark_terminated("rold2", confirmed=True)
        intent(journal, "rnew")
        assert [r.run_id for r in journal.runs()] == ["rnew", "rold3", "rold2", "rold1"]
    with Journal.open(path) as again:  # idempotent: opening a current journal migrates nothing
        assert again.schema_version == 2 and len(again.runs()) == 4


def test_a_newer_or_broken_journal_is_refused_clearly(tmp_path: Path) -> None:
    newer = tmp_path / "newer.sqlite3"
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(JournalError, match="schema version 99") as info:
        Journal.open(newer)
    assert info.value.hint == "upgrade gpurun"
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database, it is a shopping list\n" * 100)
    with pytest.raises(JournalError, match="unreadable") as info:
        Journal.open(garbage)
    assert info.value.where == str(garbage)
