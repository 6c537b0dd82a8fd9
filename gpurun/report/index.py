"""The index page of a queue: one row per job (outcome, time, dollars, a link to its report.html) and one per
machine, self-contained and script-free like every report page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gpurun.report.page import CSP, CSS, esc
from gpurun.safenames import component_problem

INDEX_NAME = "index.html"


def _money(value: Any) -> str:
    return f"${value:.4f}" if isinstance(value, (int, float)) else "–"


def _job_row(folder: Path, job: dict[str, Any]) -> str:
    name = str(job.get("name", ""))
    outcome = str(job.get("outcome", ""))
    report = folder / name / "report.html"
    # only a plain folder name of this queue is linked (names were checked when the queue was read)
    link = esc(name)
    if component_problem(name) is None and report.is_file():
        link = f'<a href="{esc(name)}/report.html">{esc(name)}</a>'
    error = f' <span class="err">{esc(job["error"])}</span>' if job.get("error") else ""
    return (
        f'<tr><td>{link}</td><td><span class="status {esc(outcome)}">{esc(outcome)}</span>{error}</td>'
        f"<td class=n>{float(job.get('seconds') or 0):.0f} s</td><td class=n>{_money(job.get('dollars'))}</td>"
        f"<td><code>{esc(job.get('machine') or '–')}</code></td></tr>"
    )


def _machine_row(machine: dict[str, Any]) -> str:
    return (
        f"<tr><td><code>{esc(machine.get('run_id'))}</code></td><td>{esc(machine.get('offer'))}</td>"
        f"<td>{esc(', '.join(machine.get('jobs') or []))}</td><td>{esc(machine.get('outcome'))}</td>"
        f"<td class=n>{float(machine.get('seconds') or 0):.0f} s</td><td class=n>{_money(machine.get('dollars'))}</td>"
        f"<td>{'yes' if machine.get('destroyed') else '<b class=err>NO</b>'}</td></tr>"
    )


def render_index(folder: Path, receipt: dict[str, Any]) -> str:
    jobs = "".join(_job_row(folder, job) for job in receipt.get("jobs") or [])
    machines = "".join(_machine_row(m) for m in receipt.get("machines") or [])
    ways = "".join(
        f"<tr><td>{esc(name)}</td><td class=n>{_money(way.get('expected_dollars'))}</td>"
        f"<td class=n>{float(way.get('seconds') or 0):.0f} s</td></tr>"
        for name, way in (receipt.get("alternatives") or {}).items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>gpurun queue {esc(receipt.get("queue_id"))}</title><style>{CSS}</style></head><body>
<h1>queue {esc(receipt.get("queue_id"))}</h1>
<div class="facts"><span>mode <b>{esc(receipt.get("mode"))}</b></span>
<span>billed <b>{_money(receipt.get("actual_total_usd"))}</b></span>
<span>expected <b>{_money(receipt.get("estimated_expected_usd"))}</b></span>
<span>budget <b>{_money(receipt.get("budget"))}</b></span>
<span>wall clock <b>{float(receipt.get("seconds") or 0):.0f} s</b></span></div>
<h2>jobs</h2><table><tr><th>job</th><th>outcome</th><th class=n>time</th><th class=n>cost</th><th>machine</th></tr>
{jobs}</table>
<h2>machines</h2><table><tr><th>run</th><th>offer</th><th>jobs</th><th>outcome</th><th class=n>billed</th>
<th class=n>cost</th><th>destroyed</th></tr>{machines}</table>
<h2>the plan's ways, priced</h2><table><tr><th>way</th><th class=n>expected</th><th class=n>time</th></tr>{ways}</table>
</body></html>
"""


def write_index(folder: Path, receipt: dict[str, Any]) -> Path:
    """Write (or refresh) `folder/index.html` for the queue receipt `receipt`; returns its path."""
    target = folder / INDEX_NAME
    tmp = target.with_name(f".{INDEX_NAME}.tmp")
    tmp.write_text(render_index(folder, receipt), encoding="utf-8")
    tmp.replace(target)
    return target


def read_queue_receipt(folder: Path) -> dict[str, Any] | None:
    """The queue receipt in `folder`, or None when the folder is not a queue's (or its receipt is unreadable)."""
    try:
        data = json.loads((folder / "receipt.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("type") == "queue" else None
