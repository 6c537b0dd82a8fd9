"""Every input is an attacker's: configs, option values, folder names, API keys, vendor answers, a damaged journal.
Each case below is a finding of the audit (issue 9), reproduced, and now refused or handled with a clear error."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import stat
from pathlib import Path

import httpx
import pytest

from gpurun.cli.render import printable, safe
from gpurun.dataset import check_dataset
from gpurun.errors import ConfigError, JournalError
from gpurun.journal import Journal
from gpurun.models import GpuRequest, LaunchSpec
from gpurun.provision.http import ApiKey, ProviderHttp, vendor_message
from gpurun.provision.registry import make_provider
from gpurun.provision.vast import parse_offer
from gpurun.remote.excludes import plan_upload
from gpurun.remote.local_transport import LocalTransport
from gpurun.settings import write_private_file
from gpurun.trainconfig import TrainConfig, tomllib
from tests.support.imaging import make_image

# ---- names that become paths -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../x", "a/b", ".hidden", "-rf", "x\ny", "\x1b[31mred", "", " "])
def test_output_name_is_one_plain_file_name(name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_mapping({"training": {"output_name": name}})
    assert "output_name" in caught.value.one_line()


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("caption_extension", "/x", "file extension"),
        ("caption_extension", ".t/xt", "file extension"),
        ("learning_rate", math.nan, "finite"),
        ("network_alpha", math.inf, "finite"),
        ("sample_weights", [0.5, math.nan], "finite"),
        ("max_bucket_reso", 2_000_000_000, "8192"),
        ("pretrained_model_name_or_path", "model\n[training]\nlearning_rate = 1", "control characters"),
        ("optimizer_args", ["weight_decay=0.1\x00"], "control characters"),
    ],
)
def test_config_values_that_would_fail_on_the_box_fail_here(key: str, value: object, needle: str) -> None:
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_mapping({key: value})
    assert needle in caught.value.one_line() and key in caught.value.one_line()


def test_bucket_steps_larger_than_the_smallest_bucket_are_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_mapping({"dataset": {"enable_bucket": True, "bucket_reso_steps": 512, "min_bucket_reso": 256}})
    assert "bucket_reso_steps" in caught.value.one_line()
    # without buckets kohya never reads bucket_reso_steps, so neither does gpurun (GUI configs carry odd values)
    TrainConfig.from_mapping({"dataset": {"enable_bucket": False, "bucket_reso_steps": 512, "min_bucket_reso": 256}})


def test_a_deeply_nested_toml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.toml"
    path.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match=r"nested too deeply|not valid TOML"):
        TrainConfig.from_toml(path)


def test_a_url_base_in_a_config_stays_a_url(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('pretrained_model_name_or_path = "https://example.org/v1-5.safetensors"\n')
    assert TrainConfig.from_toml(path).pretrained_model_name_or_path == "https://example.org/v1-5.safetensors"


def test_strings_travel_to_the_box_as_valid_toml() -> None:
    config = TrainConfig.from_mapping({"sample_prompts": ['a "quoted" \\ prompt, ünïcode']})
    assert tomllib.loads(config.to_toml())["sample"]["sample_prompts"] == ['a "quoted" \\ prompt, ünïcode']


def test_a_folder_name_that_is_not_utf8_is_an_error_of_the_check(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "10_ok").mkdir(parents=True)
    make_image(root / "10_ok" / "a.png", (512, 512), seed=1)
    bad = os.fsencode(str(root)) + b"/10_caf\xe9"
    os.mkdir(bad)
    make_image(Path(os.fsdecode(bad)) / "b.png", (512, 512), seed=2)
    report = check_dataset(root, model="sd15", epochs=1, batch_size=1)
    codes = {(i.code, i.severity) for i in report.issues}
    assert ("unusable-name", "error") in codes and not report.ok


def test_links_out_of_the_dataset_are_reported_by_the_check_and_not_uploaded(tmp_path: Path) -> None:
    root = tmp_path / "data" / "10_cat"
    root.mkdir(parents=True)
    make_image(root / "a.png", (512, 512), seed=1)
    (tmp_path / "home" / ".ssh").mkdir(parents=True)
    (tmp_path / "home" / ".ssh" / "id_rsa").write_text("PRIVATE")
    (root / "keys").symlink_to(tmp_path / "home" / ".ssh")
    (root / "b.png").symlink_to(tmp_path / "home" / ".ssh" / "id_rsa")
    (root / ".env").write_text("HF_TOKEN=secret")
    report = check_dataset(tmp_path / "data", model="sd15", epochs=1, batch_size=1)
    flagged = {Path(i.path).name for i in report.issues if i.code == "link-not-uploaded"}
    assert flagged == {"keys", "b.png"}
    sent = {e.rel_path for e in plan_upload(tmp_path / "data").entries}
    assert sent == {"10_cat/a.png"}


# ---- secrets --------------------------------------------------------------------------------------------


def test_a_key_with_a_newline_is_refused_at_input_naming_where_it_came_from(monkeypatch) -> None:
    monkeypatch.setenv("VAST_API_KEY", "abcd1234efgh5678\nijkl")
    with pytest.raises(ConfigError, match="whitespace or control characters") as caught:
        make_provider("vast")
    assert caught.value.where == "VAST_API_KEY" and "ijkl" not in caught.value.one_line()


def test_vendor_echoes_of_the_key_are_masked_in_any_case_and_before_the_cut() -> None:
    key = ApiKey("AbCdEfGh12345678IjKlMnOp")
    long = "x" * 290 + key.reveal()
    response = httpx.Response(400, json={"msg": long})
    assert key.reveal()[:6] not in vendor_message(response, key.redact)  # not even a prefix survives the cut
    assert key.reveal() not in key.redact(f"echo {key.reveal().lower()} and {key.reveal().upper()}").lower()


async def test_a_create_answer_that_echoes_the_key_does_not_leak_it(fake_vast, vast_provider) -> None:
    fake_vast.inject_answer(200, {"success": False, "msg": f"no contract for {fake_vast.api_key}"}, path="/asks/")
    offer = (await vast_provider.list_offers(GpuRequest()))[0]
    spec = LaunchSpec(image="img", disk_gb=20, label="gpurun-x", ssh_public_key="k")
    with pytest.raises(Exception) as caught:
        await vast_provider.create(offer, spec)
    assert fake_vast.api_key not in str(caught.value)


async def test_local_processes_never_see_the_provider_keys(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VAST_API_KEY", "vast-secret-123456789")
    monkeypatch.setenv("RUNPOD_API_KEY", "rp-secret-123456789")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_123456789")
    result = await LocalTransport(tmp_path).run("env")
    assert "secret" not in result.stdout
    explicit = await LocalTransport(tmp_path).run("echo $HF_TOKEN", env={"HF_TOKEN": "given"})
    assert explicit.stdout.strip() == "given"  # what a step passes on purpose still arrives


def test_a_failed_settings_write_keeps_the_old_file_and_leaves_nothing_readable(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    write_private_file(path, "[vast]\napi_key = 'old'\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (tmp_path / "blocker").mkdir()
    with pytest.raises(OSError):
        write_private_file(tmp_path / "blocker", "new")  # replacing a folder fails half way
    assert path.read_text() == "[vast]\napi_key = 'old'\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


# ---- text for the terminal ------------------------------------------------------------------------------


def test_vendor_text_cannot_drive_the_terminal_or_the_markup() -> None:
    assert printable("ok\x1b[2J\x07done") == "ok\\x1b[2J\\x07done"
    assert safe("[/] [bold]x") == "\\[/] \\[bold]x"


def test_a_vendor_body_with_markup_does_not_crash_offers(fake_vast, gpurun_cli) -> None:
    fake_vast.inject_answer(400, {"msg": "bad [/] request \x1b[31m[red]"}, path="/bundles", times=10)
    text = gpurun_cli("offers", "--provider", "vast")
    assert "Traceback" not in text.stderr and "bad \\[/] request" not in text.stderr
    assert "bad [/] request" in text.stderr and "\x1b[31m" not in text.stderr
    doc = gpurun_cli("offers", "--provider", "vast", "--json")
    assert "Traceback" not in doc.stderr and json.loads(doc.stdout)["ok"] is False


def test_config_errors_keep_their_section_name(tmp_path: Path, gpurun_cli) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[dataset]\nbatch_size = 0\n")
    result = gpurun_cli("config", "check", str(path))
    assert result.returncode == 1 and "[dataset].batch_size" in result.stderr


# ---- vendor numbers and budgets -------------------------------------------------------------------------


@pytest.mark.parametrize("price", [0, -0.3, "nan", "Infinity", math.inf, None])
def test_a_marketplace_offer_without_a_real_price_is_dropped_alone(price: object) -> None:
    raw = {"id": 1, "gpu_name": "RTX 4090", "num_gpus": 1, "dph_total": price, "gpu_ram": 24000}
    assert parse_offer(raw, spot=False, disk_gb=20) is None
    assert parse_offer({**raw, "dph_total": 0.3}, spot=False, disk_gb=20) is not None


@pytest.mark.parametrize(
    "absurd",
    [{"dph_total": 1e308}, {"num_gpus": 10**30}, {"num_gpus": 0.5}, {"gpu_ram": 1e12}, {"storage_cost": 1e9},
     {"inet_down_cost": 1e9}],
)  # fmt: skip
def test_numbers_no_real_machine_has_drop_the_offer(absurd: dict[str, object]) -> None:
    raw = {"id": 1, "gpu_name": "RTX 4090", "num_gpus": 1, "dph_total": 0.4, "gpu_ram": 24000}
    assert parse_offer({**raw, **absurd}, spot=False, disk_gb=20) is None


def test_absurd_telemetry_becomes_unknown_instead_of_believed() -> None:
    raw = {"id": 1, "gpu_name": "RTX 4090", "num_gpus": 1, "dph_total": 0.4, "gpu_ram": 24000}
    offer = parse_offer({**raw, "inet_down": 1e30, "inet_up": -5, "cuda_max_good": 1e9}, spot=False, disk_gb=20)
    assert offer is not None and offer.inet_down_mbps is None and offer.inet_up_mbps is None
    assert offer.cuda_version is None


@pytest.mark.parametrize(
    ("option", "value"),
    [("--keep-on-failure", "inf"), ("--keep-on-failure", "nan"), ("--artifact-grace", "-5"),
     ("--artifact-grace", "nan"), ("--artifact-grace", "1e9"), ("--trigger", "AC/DC"), ("--trigger", "..")],
)  # fmt: skip
def test_failure_time_options_are_finite_and_bounded(tmp_path: Path, gpurun_cli, option: str, value: str) -> None:
    data = tmp_path / "plain"
    data.mkdir()
    make_image(data / "a.png", (64, 64), seed=1)
    result = gpurun_cli("train", str(data), "--base", "tiny-sd", "--provider", "local", "--repeats", "1",
                        "--dry-run", option, value)  # fmt: skip
    assert result.returncode == 1 and option in result.stderr, result.stderr


def test_output_pointing_at_a_file_is_a_clear_error(tmp_path: Path, gpurun_cli) -> None:
    (tmp_path / "file").write_text("x")
    result = gpurun_cli("train", "examples/dataset", "--base", "tiny-sd", "--provider", "local", "--dry-run",
                        "--output", str(tmp_path / "file"))  # fmt: skip
    assert result.returncode == 1 and "is a file, not a folder" in result.stderr


# ---- the journal ----------------------------------------------------------------------------------------


def test_an_empty_journal_with_known_runs_is_an_error_not_a_reset(gpurun_home: Path) -> None:
    state = gpurun_home / "state"
    (state / "runs" / "r1abc").mkdir(parents=True)
    (state / "runs" / "r1abc" / "run.json").write_text("{}")
    (state / "journal.sqlite3").write_bytes(b"")
    with pytest.raises(JournalError, match="empty, but 1 run") as caught:
        Journal.open()
    assert "restore" in (caught.value.hint or "")
    assert (state / "journal.sqlite3").stat().st_size == 0  # nothing was re-created over it


def test_a_damaged_row_is_reported_by_run_id_and_the_others_still_show(gpurun_home: Path, gpurun_cli) -> None:
    with Journal.open() as journal:
        for run_id in ("r1good", "r2bad"):
            journal.record_intent(
                run_id, provider="vast", offer_id="1", gpu="RTX 4090", quoted_price=0.3, budget=5, workload={},
                estimate={}, output_dir=gpurun_home / run_id, config_toml="", label=f"gpurun-{run_id}",
            )  # fmt: skip
    with sqlite3.connect(gpurun_home / "state" / "journal.sqlite3") as conn:
        conn.execute("UPDATE runs SET estimate = '{not json' WHERE run_id = 'r2bad'")
    result = gpurun_cli("runs", "--json")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    doc = json.loads(result.stdout)
    assert [r["run_id"] for r in doc["runs"]] == ["r1good"]
    assert any(p.startswith("run r2bad:") for p in doc["journal_problems"])
    attach = gpurun_cli("attach", "r2bad")
    assert attach.returncode == 1 and "Traceback" not in attach.stderr and "r2bad" in attach.stderr


def test_a_damaged_run_state_is_a_clear_error(gpurun_home: Path, gpurun_cli) -> None:
    with Journal.open() as journal:
        journal.record_intent(
            "r3state", provider="vast", offer_id="1", gpu="x", quoted_price=0.3, budget=5, workload={}, estimate={},
            output_dir=gpurun_home / "r3", config_toml="", label="gpurun-r3state",
        )  # fmt: skip
    folder = gpurun_home / "state" / "runs" / "r3state"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text("[1, 2")
    result = gpurun_cli("attach", "r3state")
    assert result.returncode == 1 and "saved state is damaged" in result.stderr and "Traceback" not in result.stderr


def test_provider_http_refuses_nothing_it_should_keep(fake_vast) -> None:
    """The HTTP boundary's key is an ApiKey: its repr never shows it."""
    http = ProviderHttp("vast", fake_vast.base_url, ApiKey(fake_vast.api_key), key_env="VAST_API_KEY")
    assert fake_vast.api_key not in repr(http) and fake_vast.api_key not in repr(http._key)
