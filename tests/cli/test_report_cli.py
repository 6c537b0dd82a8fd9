"""`gpurun report`: by folder, by run id, --json, and a clear error for a run that does not exist."""

from __future__ import annotations

import json
from pathlib import Path


def test_report_by_folder_prints_the_page_path(gpurun_cli, tmp_path: Path) -> None:
    run = tmp_path / "r-folder"
    run.mkdir()
    (run / "events.jsonl").write_text('{"v":1,"type":"step","t":1.0,"step":1,"loss":0.5,"lr":0.0001}\n')
    proc = gpurun_cli("report", str(run), "--json")
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert document["report"] == str(run / "report.html") and document["bytes"] > 1000
    assert "<svg" in (run / "report.html").read_text()


def test_report_of_an_unknown_run_is_one_clear_line(gpurun_cli) -> None:
    proc = gpurun_cli("report", "nosuchrun")
    assert proc.returncode == 1
    assert "nosuchrun" in proc.stderr and "Traceback" not in proc.stderr


def test_report_help_says_what_the_page_holds(gpurun_cli) -> None:
    proc = gpurun_cli("report", "--help")
    assert proc.returncode == 0 and "sample grid of every saved epoch" in " ".join(proc.stdout.split())
