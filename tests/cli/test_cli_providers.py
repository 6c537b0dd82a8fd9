"""`gpurun providers`, `providers set-key` and `providers check`, run as a user would (subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys

from gpurun.settings import settings_path
from tests.support.env import REPO_ROOT, subprocess_env
from tests.support.fakes.vast_server import FakeVast


def gpurun(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpurun", *args],
        cwd=REPO_ROOT,
        env=subprocess_env(**env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_overview_json_masks_the_key(fake_vast: FakeVast) -> None:
    result = gpurun("providers", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)["providers"]}
    assert rows["vast"]["usable"] and rows["vast"]["key_source"] == "VAST_API_KEY"
    assert rows["vast"]["urls"] == {"api": fake_vast.base_url}
    assert rows["vast"]["key"] == "…" + fake_vast.api_key[-4:]
    assert not rows["runpod"]["usable"] and "RUNPOD_API_KEY" in rows["runpod"]["reason"]
    assert "no ssh_hosts declared" in rows["ssh"]["reason"] and rows["local"]["usable"]
    assert fake_vast.api_key not in result.stdout + result.stderr
    table = gpurun("providers")
    assert table.returncode == 0 and "usable" in table.stdout and fake_vast.api_key not in table.stdout


def test_set_key_reads_stdin_and_writes_a_private_file() -> None:
    path = settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        '[[ssh_hosts]]\nname = "box"\nhost = "10.1.2.3"\ngpu = "RTX 3090"\n\n[pricing.efficiency]\n"RTX 3090" = 0.3\n'
    )
    secret = "vast-secret-" + "9" * 40
    result = gpurun("providers", "set-key", "vast", stdin=secret + "\n")
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout + result.stderr and "…9999" in result.stderr
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_text()
    assert secret in text and 'host = "10.1.2.3"' in text and '"RTX 3090" = 0.3' in text
    rows = {r["name"]: r for r in json.loads(gpurun("providers", "--json").stdout)["providers"]}
    assert rows["vast"]["key_source"] == str(path) and rows["ssh"]["usable"]


def test_set_key_refuses_empty_or_unknown() -> None:
    empty = gpurun("providers", "set-key", "runpod", stdin="\n")
    assert empty.returncode == 1 and "no runpod API key given" in empty.stderr and "Traceback" not in empty.stderr
    unknown = gpurun("providers", "set-key", "local", stdin="x\n")
    assert unknown.returncode == 1 and "takes no API key" in unknown.stderr
    assert not settings_path().exists()


def test_check_against_the_fake(fake_vast: FakeVast) -> None:
    ok = gpurun("providers", "check", "vast")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("vast: ok, key valid") and fake_vast.calls("GET", "/api/v0/users/current/")
    calls = len(fake_vast.requests)
    bad = gpurun("providers", "check", "vast", VAST_API_KEY="not-the-key-" + "0" * 20)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    line = bad.stderr.strip()
    assert "\n" not in line and "rejected the API key" in line and "VAST_API_KEY" in line
    assert len(fake_vast.requests) == calls + 1  # a bad key is never retried


def test_check_all_usable_as_json(fake_vast: FakeVast) -> None:
    fake_vast.inject_server_error(5, status=503, path="/users/current")
    result = gpurun("providers", "check", "--json")
    doc = json.loads(result.stdout)
    assert result.returncode == 1 and doc["ok"] is False
    by_name = {p["name"]: p for p in doc["providers"]}
    assert set(by_name) == {"vast", "local"}  # runpod and ssh are not configured here
    assert by_name["local"]["ok"] and not by_name["vast"]["ok"]
    assert by_name["vast"]["error"]["error"] == "TransientProviderError"


def test_providers_help_teaches(gpurun_cli) -> None:
    result = gpurun_cli("providers", "--help")
    assert result.returncode == 0 and "set-key vast" in result.stdout and "never taken as command-line" in result.stdout
