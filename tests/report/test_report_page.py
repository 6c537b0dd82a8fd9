"""report.html of a real tiny run, opened in headless Chromium: it renders, stays offline, is quiet, and its
charts hold the run's own numbers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gpurun.api import SilentView, TrainRequest, plan, report, train
from tests.support.browser import open_page
from tests.support.e2e import small_job

pytest.importorskip("torch")


def _events(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("type") == kind]


def _points(d: str) -> int:
    return sum(1 for c in d if c in "ML")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-epoch local run of the tiny model that saves and samples every epoch (its own gpurun home: the
    per-test one does not exist yet at module scope)."""
    root = tmp_path_factory.mktemp("report-run")
    dataset, config = small_job(root, epochs=3)
    config.write_text(config.read_text() + "sample_every_n_epochs = 1\n")
    request = TrainRequest(dataset=dataset, config=config, base="tiny-sd", providers=("local",), output=root / "runs")
    seen: list = []
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GPURUN_STATE_DIR", str(root / "state"))
        env.setenv("GPURUN_CONFIG_DIR", str(root / "config"))
        env.setenv("GPURUN_WATCHDOG_FALLBACK", "0")  # no shutdown fallback for the watchdog, ever, on this machine
        the_plan = asyncio.run(plan(request))
        receipt = asyncio.run(train(the_plan, view=SilentView(), on_start=seen.append))
    assert receipt.outcome == "done"
    return Path(seen[0].out_dir)


@pytest.mark.slow
def test_a_finished_run_leaves_a_report_that_renders_offline_and_shows_its_numbers(
    finished_run: Path, tmp_path: Path
) -> None:
    page_path = finished_run / "report.html"
    assert page_path.is_file()
    steps, samples = _events(finished_run, "step"), _events(finished_run, "sample")
    checkpoints = _events(finished_run, "checkpoint")
    assert len(samples) == 3  # one grid per epoch: the page must show all of them
    with open_page(page_path) as opened:
        page = opened.page
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
        assert opened.console == []  # no errors, no warnings, nothing at all
        assert opened.requests == [page_path.resolve().as_uri()]  # the page itself, nothing fetched
        # the charts hold the run's values: one loss point per logged step, the learning rate as logged
        assert _points(page.get_attribute("#loss-raw path", "d") or "") == len(steps)
        assert _points(page.get_attribute("#loss-smooth path", "d") or "") == len(steps)
        assert _points(page.get_attribute("#lr path", "d") or "") == len(steps)
        assert _points(page.get_attribute("#speed path", "d") or "") == len(steps)
        assert page.locator("#memory path").count() == 1  # peak memory, measured by the runner
        # every saved epoch's grid, side by side, decoded by the browser
        grids = page.locator(".grids img")
        assert grids.count() == 3
        assert all(grids.nth(i).evaluate("img => img.naturalWidth > 0") for i in range(3))
        captions = page.locator(".grids figcaption").all_inner_texts()
        assert [c.split(" ·")[0] for c in captions] == ["epoch 1", "epoch 2", "epoch 3"]
        # the receipt: one row per phase, and the two charts
        assert page.locator("table").first.locator("tr").count() == 1 + 6
        assert page.locator("[id^=receipt-time-actual-]").count() == 6
        assert page.locator("[id^=receipt-usd-estimated-]").count() == 6
        # the LoRA files with their sha256, as the run reported them
        text = page.inner_text("body")
        for checkpoint in checkpoints:
            assert checkpoint["sha256"] in text and checkpoint["path"] in text
        # the dataset: thumbnails with captions, the config as written
        assert page.locator(".thumbs img").count() == 2
        assert "sks robot, on a table" in text and "max_train_epochs = 3" in text


@pytest.mark.slow
def test_the_report_can_be_refreshed_by_run_id_or_folder(finished_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPURUN_STATE_DIR", str(finished_run.parents[1] / "state"))
    (finished_run / "report.html").unlink()
    assert report(finished_run) == finished_run / "report.html"
    run_id = finished_run.name
    before = (finished_run / "report.html").stat().st_mtime_ns
    assert report(run_id) == finished_run / "report.html"
    assert (finished_run / "report.html").stat().st_mtime_ns >= before
