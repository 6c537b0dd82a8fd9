"""The report page: one self-contained HTML file (inline CSS, SVG charts, data-URI images, no script at all).

Its Content-Security-Policy forbids every fetch, so the page cannot reach the network even if a caption or a
file name tried to make it: every text from the run is HTML-escaped as well. `write_report` writes it
atomically next to the run's files.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

from gpurun import __version__
from gpurun.report.images import dataset_thumbs, grid_uri
from gpurun.report.rundata import RunData, read_run

REPORT_NAME = "report.html"
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;padding:1.5em;
color:#1d2733;background:#fbfcfd}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.15em;margin:1.6em 0 .5em;border-bottom:1px solid #dde3ea}
table{border-collapse:collapse;margin:.4em 0}td,th{padding:.25em .7em;border-bottom:1px solid #e6ebf0;
text-align:left}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.facts{display:flex;flex-wrap:wrap;gap:.4em 1.6em;color:#455565}.facts b{color:#1d2733}
.status{display:inline-block;padding:.1em .6em;border-radius:1em;background:#e3eaf2}
.status.done{background:#d8f0de}.status.failed{background:#f6d9d6}
.grids{display:flex;gap:1em;overflow-x:auto;padding-bottom:.5em}.grids figure{margin:0;flex:none}
.grids img{max-height:520px;border:1px solid #dde3ea}figcaption{color:#455565;text-align:center}
.thumbs{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:.8em}
.thumbs figure{margin:0}.thumbs img{display:block;max-width:160px;max-height:160px}
.thumbs figcaption{text-align:left;font-size:.85em}
pre{background:#f1f4f7;padding:.8em;overflow-x:auto;font-size:.85em}.warn{color:#8a5a00}.err{color:#a3271c}
code{font-size:.9em}.muted{color:#6b7a89}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _money(value: Any) -> str:
    return f"${value:.4f}" if isinstance(value, (int, float)) else "–"


def _seconds(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "–"
    value = float(value)
    return f"{value / 60:.1f} min" if value >= 120 else f"{value:.0f} s"


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 1e6 else f"{count / 1e3:.0f} kB"


def _header(run: RunData) -> str:
    start, receipt = run.start, run.receipt or {}
    facts = []
    if start is not None:
        facts += [f"<b>{esc(start.family or '?')}</b> {esc(start.detected)}", f"on <b>{esc(start.device)}</b>",
                  f"{start.epochs} epochs, {start.total_steps} steps, batch {start.batch_size}"]  # fmt: skip
    if receipt.get("gpu"):
        facts.append(
            f"{esc(receipt.get('offer', ''))} ({esc(receipt['gpu'])}) at {_money(receipt.get('billed_per_hour'))}/h"
        )
    if run.done is not None:
        facts.append(f"trained in {_seconds(run.done.seconds)}, {run.done.samples_per_s:.2f} samples/s")
    if isinstance(receipt.get("actual_total_usd"), (int, float)):
        budget = receipt.get("budget")
        facts.append(f"cost <b>{_money(receipt['actual_total_usd'])}</b>"
                     + (f" of a {_money(budget)} budget" if isinstance(budget, (int, float)) else ""))  # fmt: skip
    status = run.status
    items = "".join(f"<span>{fact}</span>" for fact in facts)
    return (f"<h1>Run {esc(run.run_id)} <span class='status {esc(status)}'>{esc(status)}</span></h1>"
            f"<div class='facts'>{items}</div>")  # fmt: skip


def _problems(run: RunData) -> str:
    rows = [f"<li class='err'>{esc(e.message)}{(' — ' + esc(e.hint)) if e.hint else ''}</li>" for e in run.errors]
    rows += [f"<li class='warn'>{esc(w.message)}</li>" for w in run.warnings]
    return f"<ul>{''.join(rows)}</ul>" if rows else ""


def _training(run: RunData) -> str:
    if not run.steps:
        return "<h2>Training</h2><p class='muted'>No step logged yet.</p>"
    # matplotlib loads in about half a second: only when a page is drawn, never on every `gpurun` command
    from gpurun.report import charts

    parts = [
        "<h2>Training</h2>",
        f"<p class='muted'>{len(run.steps)} logged steps, from step {run.steps[0].step} to {run.steps[-1].step}; "
        f"last loss {run.steps[-1].loss:.4g}.</p>",
        f"<figure id='chart-loss'>{charts.loss_chart(run.steps)}</figure>",
        f"<figure id='chart-lr'>{charts.lr_chart(run.steps)}</figure>",
        f"<figure id='chart-speed'>{charts.speed_memory_chart(run.steps)}</figure>",
    ]
    return "".join(parts)


def _grids(run: RunData) -> str:
    if not run.grids:
        return ""
    figures = []
    for grid in run.grids:
        uri = grid_uri(grid.path)
        body = f"<img alt='samples after epoch {grid.epoch}' src='{uri}'>" if uri else "<p>(not a readable image)</p>"
        figures.append(
            f"<figure class='grid'>{body}<figcaption>epoch {grid.epoch} · {esc(grid.name)}</figcaption></figure>"
        )
    return ("<h2>Samples by epoch</h2><p class='muted'>Rows are prompts, columns LoRA weights; pick the epoch whose "
            f"pictures you like and load its file below.</p><div class='grids'>{''.join(figures)}</div>")  # fmt: skip


def _receipt(run: RunData) -> str:
    receipt = run.receipt
    lines = [line for line in (receipt or {}).get("lines", []) if isinstance(line, dict)]
    if not lines:
        return ""

    def num(line: dict[str, Any], key: str) -> float | None:
        value = line.get(key)
        return float(value) if isinstance(value, (int, float)) else None

    from gpurun.report import charts  # late, as in _training

    phases = [str(line.get("phase", "?")) for line in lines]
    rows = "".join(
        f"<tr><td>{esc(line.get('phase'))}</td><td class='n'>{_seconds(line.get('estimated_s'))}</td>"
        f"<td class='n'>{_seconds(line.get('actual_s'))}</td><td class='n'>{_money(line.get('estimated_usd'))}</td>"
        f"<td class='n'>{_money(line.get('actual_usd'))}</td></tr>"
        for line in lines
    )
    assert receipt is not None
    time_chart = charts.receipt_chart(phases, [num(x, "estimated_s") or 0.0 for x in lines],
                                      [num(x, "actual_s") for x in lines], "seconds", "receipt-time")  # fmt: skip
    usd_chart = charts.receipt_chart(phases, [num(x, "estimated_usd") or 0.0 for x in lines],
                                     [num(x, "actual_usd") for x in lines], "dollars", "receipt-usd")  # fmt: skip
    total = (f"<p>Billed {_seconds(receipt.get('billed_seconds'))}: <b>{_money(receipt.get('actual_total_usd'))}</b> "
             f"(estimated {_money(receipt.get('estimated_total_usd'))}); machine "
             f"{'destroyed' if receipt.get('destroyed') else 'not destroyed by this client'}.</p>")  # fmt: skip
    return (
        "<h2>Receipt: estimate against actual</h2>"
        "<table><tr><th>phase</th><th class='n'>est. time</th><th class='n'>actual</th><th class='n'>est. $</th>"
        f"<th class='n'>actual $</th></tr>{rows}</table>{total}"
        f"<div class='facts'><figure id='chart-receipt-time'>{time_chart}</figure>"
        f"<figure id='chart-receipt-usd'>{usd_chart}</figure></div>"
    )


def _dataset(run: RunData) -> str:
    report = run.dataset
    if report is None:
        return ""
    totals: dict[str, Any] = report["totals"] if isinstance(report.get("totals"), dict) else {}
    folders = [f for f in report.get("folders", []) if isinstance(f, dict)]
    issues = [i for i in report.get("issues", []) if isinstance(i, dict)]
    rows = "".join(
        f"<tr><td>{esc(f.get('name'))}</td><td class='n'>{esc(f.get('repeats'))}</td>"
        f"<td class='n'>{esc(f.get('images'))}</td><td class='n'>{esc(f.get('captioned'))}</td>"
        f"<td>{esc(f.get('trigger') or '')}</td></tr>"
        for f in folders
    )
    notes = "".join(
        f"<li class='{'err' if i.get('severity') == 'error' else 'warn'}'>{esc(i.get('path') or '')}: "
        f"{esc(i.get('message'))}</li>"
        for i in issues
    )
    thumbs = dataset_thumbs(str(report.get("path", "")), str(report.get("caption_extension") or ".txt"))
    cells = "".join(
        f"<figure><img alt='{esc(t.name)}' src='{t.uri}'><figcaption><b>{esc(t.name)}</b><br>{esc(t.caption)}"
        "</figcaption></figure>"
        for t in thumbs
    )
    where = esc(report.get("path", ""))
    return (
        f"<h2>Dataset</h2><p>{esc(report.get('verdict', ''))} <span class='muted'>({where})</span></p>"
        f"<p class='muted'>{esc(totals.get('images', '?'))} images, {esc(totals.get('samples_per_epoch', '?'))} "
        f"samples per epoch, {esc(totals.get('total_steps', '?'))} steps.</p>"
        "<table><tr><th>folder</th><th class='n'>repeats</th><th class='n'>images</th><th class='n'>captioned</th>"
        f"<th>trigger</th></tr>{rows}</table>"
        + (f"<h3>What the check noticed</h3><ul>{notes}</ul>" if notes else "")
        + (
            f"<div class='thumbs'>{cells}</div>"
            if cells
            else "<p class='muted'>(the dataset folder is not here any more: no thumbnails)</p>"
        )
    )


def _files(run: RunData) -> str:
    if not run.loras:
        return ""
    rows = "".join(
        f"<tr><td><code>{esc(f.name)}</code>{' (final)' if f.final else ''}</td><td class='n'>{esc(f.epoch)}</td>"
        f"<td class='n'>{_size(f.bytes)}</td><td><code>{esc(f.sha256)}</code></td></tr>"
        for f in run.loras
    )
    return ("<h2>LoRA files</h2><table><tr><th>file</th><th class='n'>epoch</th><th class='n'>size</th>"
            f"<th>sha256</th></tr>{rows}</table>")  # fmt: skip


def render(run: RunData) -> str:
    """The whole page for `run`."""
    config = f"<h2>Config</h2><pre>{esc(run.config_toml)}</pre>" if run.config_toml else ""
    body = "".join([_header(run), _problems(run), _training(run), _grids(run), _receipt(run), _files(run),
                    _dataset(run), config])  # fmt: skip
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>gpurun run {esc(run.run_id)}</title><style>{CSS}</style></head><body>{body}"
        f"<p class='muted'>Written by gpurun {esc(__version__)} on {stamp}.</p></body></html>\n"
    )


def write_report(run_dir: Path) -> Path:
    """Write (or refresh) `run_dir/report.html` from what the folder holds now; returns its path."""
    page = render(read_run(run_dir))
    target = run_dir / REPORT_NAME
    tmp = target.with_name(f".{REPORT_NAME}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(target)
    return target
