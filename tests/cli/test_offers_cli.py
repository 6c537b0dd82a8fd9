"""`gpurun offers` end to end against the fake Vast and RunPod servers, and the `gpurun.api.offers` library call."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys

import pytest

from gpurun.api import offers
from gpurun.job.offers import disk_needed_gb
from gpurun.models import GpuRequest, Workload
from gpurun.pricing import DEFAULT, PHASES, rank
from gpurun.provision.http import RetryPolicy
from gpurun.provision.registry import boot_profiles, make_provider, min_cuda_for
from tests.support.env import subprocess_env
from tests.support.imaging import make_concept

HEAVY = ("torch", "diffusers", "transformers", "peft", "bitsandbytes", "accelerate")
# the tutorial's example run, which `gpurun offers` prices when given nothing else
TUTORIAL = Workload(family="sd15", images=20, repeats=10, epochs=10, dataset_bytes=20 * 2_000_000)


def _json(result: subprocess.CompletedProcess[str]) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def _pure_ranking_keys(workload: Workload, names: tuple[str, ...]) -> list[str]:
    """What `rank()` makes of the offers the adapters return, with no CLI in between."""
    query = GpuRequest(min_disk_gb=disk_needed_gb(workload), min_cuda=min_cuda_for(None))  # the default images
    every = []
    for name in names:
        provider = make_provider(name)
        try:
            every += await provider.list_offers(query)
        finally:
            await provider.aclose()
    assumptions = dataclasses.replace(DEFAULT, boot=boot_profiles())  # each provider's own boot profile
    return [e.offer.key for e in rank(workload, every, assumptions=assumptions).estimates]


def test_json_ranking_matches_the_pure_ranking(fake_vast, fake_runpod, gpurun_cli) -> None:
    doc = _json(gpurun_cli("offers", "--json", "--limit", "0", "--provider", "vast", "--provider", "runpod"))
    assert doc["version"] == 1 and doc["ok"] is True
    assert doc["providers"]["queried"] == ["vast", "runpod"] and doc["providers"]["errors"] == {}
    assert doc["providers"]["offers"]["vast"] > 0 and doc["providers"]["offers"]["runpod"] > 0
    keys = [o["key"] for o in doc["offers"]]
    assert keys == asyncio.run(_pure_ranking_keys(TUTORIAL, ("vast", "runpod")))
    assert {k.split(":")[0] for k in keys} == {"vast", "runpod"}
    # the document's shape
    assert doc["workload"]["samples"] == 2000 and doc["workload_source"]["source"] == "options"
    assert doc["counts"]["shown"] == len(doc["offers"]) == doc["counts"]["eligible"]
    first = doc["offers"][0]
    assert first["rank"] == 1 and first["over_budget"] is False and first["feasible"] is True
    assert [p["name"] for p in first["phases"]] == list(PHASES)
    assert first["dollars"] == pytest.approx(sum(p["dollars"] for p in first["phases"]))
    assert first["seconds"] == pytest.approx(sum(p["seconds"] for p in first["phases"]))
    assert doc["cheapest"]["key"] == first["key"]
    expected = [o["expected_dollars"] for o in doc["offers"]]
    assert expected == sorted(expected)
    assert doc["assumptions"]["user_uplink_mbps"] == 20.0


def test_table_shows_the_columns_and_the_footer(fake_vast, gpurun_cli) -> None:
    result = gpurun_cli("offers", "--provider", "vast", "--limit", "3")
    assert result.returncode == 0, result.stderr
    for column in ("OFFER", "GPU", "VRAM", "$/H", "RELIAB.", "LOCATION", "EST. TIME", "EST. TOTAL"):
        assert column in result.stdout
    assert "vast:" in result.stdout and "RTX 4090" in result.stdout
    assert "20 images × 10 repeats × 10 epochs = 2,000 samples" in result.stdout
    assert "Showing 3 of" in result.stdout and "--explain" in result.stdout
    assert "vast: " in result.stderr and "offers in" in result.stderr  # progress, on stderr


def test_one_provider_failing_still_shows_the_other(fake_vast, fake_runpod, gpurun_cli, monkeypatch) -> None:
    monkeypatch.setenv("RUNPOD_API_KEY", "not-the-key")  # the fake answers 401
    result = gpurun_cli("offers", "--json", "--provider", "vast", "--provider", "runpod")
    doc = _json(result)
    assert doc["providers"]["errors"]["runpod"]["error"] == "AuthError"
    assert {o["provider"] for o in doc["offers"]} == {"vast"}
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "runpod" in error_lines[0] and "RUNPOD_API_KEY" in error_lines[0]
    assert "not-the-key" not in result.stderr + result.stdout  # the key is never echoed
    table = gpurun_cli("offers", "--provider", "vast", "--provider", "runpod")
    assert table.returncode == 0 and "vast:" in table.stdout and "error: runpod" in table.stderr


def test_no_provider_at_all_is_an_error(gpurun_cli) -> None:
    result = gpurun_cli("offers", "--provider", "vast", "--provider", "runpod")  # no keys in this test's home
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no provider could be asked" in lines[0]
    assert "VAST_API_KEY" in lines[0] and "RUNPOD_API_KEY" in lines[0]
    assert "Traceback" not in result.stderr


def test_default_providers_say_which_were_skipped(fake_vast, gpurun_cli) -> None:
    doc = _json(gpurun_cli("offers", "--json"))
    assert "vast" in doc["providers"]["queried"] and "local" in doc["providers"]["queried"]
    assert "RUNPOD_API_KEY" in doc["providers"]["skipped"]["runpod"]
    assert "ssh" in doc["providers"]["skipped"]
    result = gpurun_cli("offers", "--limit", "2")
    assert "not asked: runpod (no API key" in result.stderr


def test_explain_one_offer(fake_vast, gpurun_cli) -> None:
    doc = _json(gpurun_cli("offers", "--json", "--provider", "vast"))
    key = doc["offers"][-1]["key"]
    table = gpurun_cli("offers", "--provider", "vast", "--explain", key)
    assert table.returncode == 0, table.stderr
    for row in (
        "boot",
        "install",
        "model",
        "upload",
        "caching",
        "training",
        "samples",
        "fetch",
        "storage",
        "bandwidth",
        "total",
        "expected",
    ):
        assert f"\n{row} " in table.stdout, row
    assert key in table.stdout and "Mbit/s advertised" in table.stdout
    explained = _json(gpurun_cli("offers", "--json", "--provider", "vast", "--explain", key.split(":")[1]))
    assert explained["explain"]["key"] == key
    assert explained["explain"]["expected_dollars"] == pytest.approx(doc["offers"][-1]["expected_dollars"])
    missing = gpurun_cli("offers", "--provider", "vast", "--explain", "vast:999")
    assert missing.returncode == 1 and "--explain" in missing.stderr and "vast:999" in missing.stderr


def test_budget_marks_offers_and_names_the_cheapest(fake_vast, gpurun_cli) -> None:
    doc = _json(gpurun_cli("offers", "--json", "--provider", "vast", "--limit", "0"))
    costs = sorted(o["expected_dollars"] for o in doc["offers"])
    budget = (costs[0] + costs[-1]) / 2
    marked = _json(gpurun_cli("offers", "--json", "--provider", "vast", "--limit", "0", "--budget", f"{budget:.6f}"))
    for offer in marked["offers"]:
        assert offer["over_budget"] is (offer["expected_dollars"] > budget)
    assert 0 < marked["counts"]["within_budget"] < len(marked["offers"])
    table = gpurun_cli("offers", "--provider", "vast", "--budget", f"{budget:.6f}")
    assert "over budget" in table.stdout
    tiny = gpurun_cli("offers", "--provider", "vast", "--budget", "0.001")
    assert tiny.returncode == 0
    assert "Nothing fits the $0.001 budget: the cheapest expected total is" in tiny.stdout
    assert doc["cheapest"]["key"] in tiny.stdout


def test_dataset_defines_the_workload(fake_vast, gpurun_cli, tmp_path) -> None:
    data = tmp_path / "training_data"
    make_concept(data, "5_sks dog", 6, caption="sks dog")
    size = sum(p.stat().st_size for p in data.rglob("*.jpg"))
    doc = _json(gpurun_cli("offers", "--json", "--provider", "vast", "--model", "sdxl", "--dataset", str(data)))
    workload = doc["workload"]
    assert (workload["family"], workload["resolution"], workload["images"], workload["repeats"]) == ("sdxl", 1024, 6, 5)
    assert workload["dataset_bytes"] == size and workload["samples"] == 6 * 5 * 10
    assert doc["workload_source"]["source"] == "dataset"
    assert all(o["gpu"]["vram_gb"] >= 16 for o in doc["offers"])
    missing = gpurun_cli("offers", "--provider", "vast", "--dataset", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "nope" in missing.stderr


def test_config_defines_the_workload(fake_vast, gpurun_cli) -> None:
    from tests.support.env import REPO_ROOT

    preset = REPO_ROOT / "gpurun" / "templates" / "presets" / "sdxl.toml"
    doc = _json(gpurun_cli("offers", "--json", "--provider", "vast", "--config", str(preset), "--epochs", "4"))
    workload = doc["workload"]
    assert (workload["family"], workload["batch_size"], workload["gradient_checkpointing"]) == ("sdxl", 2, True)
    assert workload["epochs"] == 4  # the option beats the config's 10
    assert all(o["batch_size"] == 2 for o in doc["offers"])


def test_filters_and_sort_orders(fake_vast, fake_runpod, gpurun_cli) -> None:
    only = _json(gpurun_cli("offers", "--json", "--gpu", "4090", "--provider", "vast", "--provider", "runpod"))
    assert only["offers"] and all("4090" in o["gpu"]["name"] for o in only["offers"])
    searches = fake_vast.calls("POST", "/bundles/")
    assert searches and "RTX 4090" in searches[-1].body["gpu_name"]["in"]  # Vast's own spelling was asked for
    by_price = _json(gpurun_cli("offers", "--json", "--sort", "price", "--provider", "vast", "--limit", "0"))
    prices = [o["price_per_hour"] for o in by_price["offers"]]
    assert prices == sorted(prices)
    by_time = _json(gpurun_cli("offers", "--json", "--sort", "time", "--provider", "vast", "--limit", "0"))
    seconds = [o["seconds"] for o in by_time["offers"]]
    assert seconds == sorted(seconds) and by_time["sort"] == "time"
    capped = _json(gpurun_cli("offers", "--json", "--max-price", "0.3", "--min-vram", "20", "--provider", "vast"))
    assert all(o["price_per_hour"] <= 0.3 for o in capped["offers"])
    spot = _json(gpurun_cli("offers", "--json", "--spot", "--provider", "vast", "--provider", "runpod"))
    assert spot["offers"] and all(o["spot"] for o in spot["offers"])


@pytest.mark.parametrize(
    ("args", "where"),
    [
        (["--sort", "speed"], "--sort"),
        (["--budget", "-1"], "--budget"),
        (["--model", "sd3"], "--model"),
        (["--images", "0"], "--images"),
        (["--uplink", "0"], "--uplink"),
        (["--provider", "aws"], "--provider"),
    ],
)
def test_bad_options_are_named(args: list[str], where: str, fake_vast, gpurun_cli) -> None:
    result = gpurun_cli("offers", "--provider", "vast", *args)
    assert result.returncode == 1, result.stdout
    assert where in result.stderr and "Traceback" not in result.stderr


def test_offers_loads_no_training_stack(fake_vast) -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "gpurun", "offers", "--provider", "vast", "--json"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
    assert not imported & set(HEAVY)


# ---- the library call ------------------------------------------------------------------------------------------


def test_api_captures_a_failing_provider(fake_vast, fake_runpod) -> None:
    fake_runpod.inject_server_error(times=50)
    events: list[tuple[str, str]] = []
    result = asyncio.run(
        offers(
            TUTORIAL,
            providers=["vast", "runpod"],
            retry=RetryPolicy(attempts=2, initial_wait=0.01, max_wait=0.02, max_seconds=5),
            on_progress=lambda provider, event, detail: events.append((provider, event)),
        )
    )
    assert result.errors["runpod"].error == "TransientProviderError"
    assert result.offer_counts["vast"] > 0 and result.ranking.estimates
    assert ("vast", "done") in events and ("runpod", "failed") in events
    estimate, rejected = result.explain(result.ranking.estimates[0].offer.key)
    assert estimate == result.ranking.estimates[0] and rejected == ()


def test_api_efficiency_setting_changes_the_estimate(fake_vast, gpurun_home) -> None:
    (gpurun_home / "config").mkdir(parents=True, exist_ok=True)
    (gpurun_home / "config" / "config.toml").write_text('[pricing.efficiency]\n"RTX 4090" = 0.02\n')
    tuned = asyncio.run(offers(TUTORIAL, providers=["vast"], limit=None))
    (gpurun_home / "config" / "config.toml").write_text("")
    plain = asyncio.run(offers(TUTORIAL, providers=["vast"], limit=None))

    def training(result, key: str) -> float:
        est = next(e for e in result.ranking.estimates if e.offer.key == key)
        return next(p.seconds for p in est.phases if p.name == "training")

    key = next(e.offer.key for e in plain.ranking.estimates if e.offer.gpu.name == "RTX 4090")
    assert training(tuned, key) > 5 * training(plain, key)


def test_api_rejects_a_bad_workload_before_any_call(fake_vast) -> None:
    from gpurun.errors import ConfigError

    with pytest.raises(ConfigError, match="images"):
        asyncio.run(offers(dataclasses.replace(TUTORIAL, images=0), providers=["vast"]))
    assert fake_vast.calls("POST", "/bundles/") == []


def test_hosts_whose_driver_is_older_than_the_images_cuda_are_left_out(fake_vast, gpurun_cli) -> None:
    default = _json(gpurun_cli("offers", "--json", "--limit", "0", "--provider", "vast"))
    assert default["requirements"]["min_cuda"] == 12.8
    assert "Lisbon, PT" not in {o["location"] for o in default["offers"]}
    image = "pytorch/pytorch:2.1.2-cuda12.1-cudnn8-runtime"
    older = _json(gpurun_cli("offers", "--json", "--limit", "0", "--provider", "vast", "--image", image))
    assert older["requirements"]["min_cuda"] == 12.1
    assert "Lisbon, PT" in {o["location"] for o in older["offers"]}
