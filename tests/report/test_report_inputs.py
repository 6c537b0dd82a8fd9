"""The report reads what a rented machine sent: names that escape the run folder, links, fake images, markup in
captions and hostile event lines change nothing outside the page and put no live markup in it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from gpurun.report import write_report
from gpurun.report.charts import points_in, smoothed
from gpurun.report.rundata import read_run
from tests.support.imaging import make_image


def _event(kind: str, **fields: object) -> str:
    return json.dumps({"v": 1, "type": kind, "t": 1_700_000_000.0 + len(fields), **fields})


def _run_folder(tmp_path: Path, lines: list[str]) -> Path:
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "events.jsonl").write_text("\n".join(lines) + "\n")
    return run


def test_names_from_the_machine_that_leave_the_run_folder_are_ignored(tmp_path: Path) -> None:
    secret = tmp_path / "secret.safetensors"
    secret.write_bytes(b"not yours")
    run = _run_folder(tmp_path, [
        _event("checkpoint", path="../../secret.safetensors", sha256="0" * 64, bytes=9, epoch=1, step=1),
        _event("checkpoint", path=str(secret), sha256="0" * 64, bytes=9, epoch=1, step=2),
        _event("checkpoint", path="link.safetensors", sha256="0" * 64, bytes=9, epoch=1, step=3),
        _event("sample", path="../grid.png", epoch=1),
    ])  # fmt: skip
    (run / "link.safetensors").symlink_to(secret)
    make_image(tmp_path / "runs" / "grid.png", (32, 32), seed=1)
    data = read_run(run)
    assert data.loras == [] and data.grids == []
    page = write_report(run).read_text()
    assert "secret" not in page and "not yours" not in page


def test_markup_in_captions_events_and_config_is_shown_as_text(tmp_path: Path) -> None:
    dataset = tmp_path / "data" / "5_x"
    make_image(dataset / "a.png", (64, 64), seed=0, caption="<script>alert(1)</script><img src=http://evil/x>")
    run = _run_folder(tmp_path, [
        _event("start", family="sd15<b>", detected="<iframe src=http://evil>", device="cpu", total_steps=2, epochs=1,
               batch_size=1),
        _event("step", epoch=1, epochs=1, step=1, total_steps=2, loss=0.5, loss_avg=0.5, lr=1e-4, samples_per_s=1.0),
        _event("warning", message="<a href=http://evil>click</a>"),
        _event("error", message="</pre><script>x()</script>", hint="<style>*{}</style>"),
    ])  # fmt: skip
    (run / "config.toml").write_text('output_name = "</pre><script>bad()</script>"\n')
    (run / "dataset.json").write_text(json.dumps({"path": str(dataset.parent), "verdict": "<b>ok</b>",
                                                 "folders": [{"name": "<i>5_x</i>"}], "issues": []}))  # fmt: skip
    page = write_report(run).read_text()
    for live in ("<script", "<iframe", "<img src=http", "<a href", "<style>*", "<b>ok", "<i>5_x"):
        assert live not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the caption, as text
    assert "default-src 'none'" in page  # and the browser is told to fetch nothing, whatever slips through


def test_a_grid_that_is_not_an_image_is_named_not_embedded(tmp_path: Path) -> None:
    run = _run_folder(tmp_path, [_event("sample", path="grid.png", epoch=1)])
    (run / "grid.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 100)
    page = write_report(run).read_text()
    assert "(not a readable image)" in page and "garbage" not in page


def test_a_decompression_bomb_grid_is_not_decoded(tmp_path: Path) -> None:
    run = _run_folder(tmp_path, [_event("sample", path="grid.png", epoch=1)])
    Image.new("1", (20_000, 20_000)).save(run / "grid.png")  # 400 Mpx: past Pillow's bomb limit
    assert "(not a readable image)" in write_report(run).read_text()


def test_a_run_without_events_still_gets_a_page(tmp_path: Path) -> None:
    run = tmp_path / "r2"
    run.mkdir()
    page = write_report(run).read_text()
    assert "No step logged yet" in page and "<html" in page


def test_a_resumed_run_shows_each_step_once_with_its_last_report(tmp_path: Path) -> None:
    steps = [
        _event("step", step=s, total_steps=9, loss=loss, loss_avg=loss, lr=1e-4, samples_per_s=1.0)
        for s, loss in ((1, 0.9), (2, 0.8), (3, 0.7), (2, 0.6), (3, 0.5), (4, 0.4))
    ]
    data = read_run(_run_folder(tmp_path, steps))
    assert [(s.step, s.loss) for s in data.steps] == [(1, 0.9), (2, 0.6), (3, 0.5), (4, 0.4)]


def test_the_loss_chart_has_one_point_per_logged_step_and_survives_a_nan(tmp_path: Path) -> None:
    lines = [
        _event("step", step=s, total_steps=50, loss=float("nan") if s == 7 else 1 / s, loss_avg=0.5, lr=1e-4,
               samples_per_s=2.0)
        for s in range(1, 41)
    ]  # fmt: skip
    page = write_report(_run_folder(tmp_path, lines)).read_text()
    # matplotlib breaks the line at the NaN (a gap, not a fake value): 39 drawn points in two pieces
    assert points_in(page, "loss-raw") == 39 and points_in(page, "lr") == 40


def test_smoothing_skips_nan_and_starts_at_the_first_value() -> None:
    values = smoothed([1.0, math.nan, 1.0, 3.0])
    assert values[0] == pytest.approx(1.0) and values[1] == pytest.approx(1.0)
    assert 1.0 < values[3] < 3.0
