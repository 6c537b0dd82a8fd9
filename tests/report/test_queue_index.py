"""A queue's index.html: one row per job with a link to its report (only to a report that exists, in a folder of
the queue), one per machine, everything escaped; `gpurun report QUEUE_FOLDER` refreshes it."""

from __future__ import annotations

import json
from pathlib import Path

from gpurun.report.index import read_queue_receipt, render_index, write_index
from tests.support.env import run_gpurun


def _receipt(names: list[str]) -> dict:
    return {
        "type": "queue", "queue_id": "rq1", "mode": "one machine", "budget": 5.0, "actual_total_usd": 0.12,
        "estimated_expected_usd": 0.1, "seconds": 300.0,
        "jobs": [{"name": n, "outcome": "done", "seconds": 60.0, "dollars": 0.04, "machine": "rm1"} for n in names],
        "machines": [{"run_id": "rm1", "offer": "vast:1", "jobs": names, "outcome": "done", "seconds": 300.0,
                      "dollars": 0.12, "destroyed": True}],
        "alternatives": {"one machine": {"expected_dollars": 0.1, "seconds": 300.0}},
    }  # fmt: skip


def test_jobs_link_to_their_reports_and_text_is_escaped(tmp_path: Path) -> None:
    (tmp_path / "robot").mkdir()
    (tmp_path / "robot" / "report.html").write_text("<html></html>")
    (tmp_path / "cat").mkdir()  # no report (yet): no link
    receipt = _receipt(["robot", "cat", "<script>x</script>", "../up"])
    receipt["jobs"][1]["error"] = "<b>boom</b>"
    page = render_index(tmp_path, receipt)
    assert 'href="robot/report.html"' in page and 'href="cat/report.html"' not in page
    assert "<script>x" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert "../up/report.html" not in page and "&lt;b&gt;boom&lt;/b&gt;" in page
    assert "default-src &#x27;none&#x27;" in page or "default-src 'none'" in page


def test_the_report_command_refreshes_a_queue_folder(tmp_path: Path) -> None:
    (tmp_path / "receipt.json").write_text(json.dumps(_receipt([])))
    assert read_queue_receipt(tmp_path) is not None and read_queue_receipt(tmp_path / "nope") is None
    proc = run_gpurun("report", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "index.html").read_text().count("<tr>") == 5  # 3 headers, 1 machine, 1 way; no job
    write_index(tmp_path, _receipt(["a"]))
    assert "a" in (tmp_path / "index.html").read_text()
